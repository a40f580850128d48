"""The interaction benchmark's core on a very small setting: every paradigm trains through DMILTrainer, and the JSON
report has the documented schema."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "interactions.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_interactions", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_the_documented_json(bench, tmp_path):
    out = tmp_path / "interactions.json"
    report = bench.main([
        "--seeds", "0", "--steps", "4", "--batch-size", "8", "--n-train", "48", "--n-test", "40",
        "--mixtures", "half_U_half_R,synergy_heavy", "--out", str(out), "--chart", str(tmp_path / "chart.png"),
        "--methods", "joint,ensemble,dmil_reference,dmil,two_stage,plain_joint,i2m2",
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert "ensemble" in report["unimodal_reference"]
    rows = report["rows"]
    allowed = {"accuracy", "accuracy_R", "accuracy_U_text", "accuracy_U_vision", "accuracy_S", "synergy_indicator",
               "robust_accuracy_R"}
    gates = {f"gate_{c}_{t}" for c in report["components"] for t in ("R", "U_text", "U_vision", "S")}
    assert {r["method"] for r in rows} == {"joint", "ensemble", "dmil_reference", "dmil", "two_stage", "plain_joint",
                                          "i2m2"}
    assert {r["mixture"] for r in rows} == {"half_U_half_R", "synergy_heavy"}
    baselines = ("joint", "ensemble", "two_stage", "plain_joint", "i2m2")
    assert {r["metric"] for r in rows if r["method"] in baselines} == allowed
    # DMIL methods also report the gate's mean weight of each component per interaction type.
    assert {r["metric"] for r in rows if r["method"] == "dmil"} == allowed | gates
    assert set(report["gate_summary"]) <= gates
    for row in rows:
        assert set(row) == {"method", "mixture", "metric", "mean", "std", "n_seeds"}
        assert row["n_seeds"] == 1
        if not math.isnan(row["mean"]):  # accuracy_S is undefined where a mixture has no S sample
            assert 0.0 <= row["mean"] <= 1.0 and row["std"] == 0.0
    by_key = {(r["method"], r["mixture"], r["metric"]): r for r in rows}
    assert math.isnan(by_key[("joint", "half_U_half_R", "accuracy_S")]["mean"])
    assert not math.isnan(by_key[("joint", "synergy_heavy", "accuracy_S")]["mean"])
    # Equal budget: DMIL's three stages (two_stage's two) together take the baselines' step count.
    for name in ("dmil", "dmil_reference", "dmil:stages=0.2/0.2/0.6", "two_stage", "joint"):
        assert sum(bench.parse_method(name).stage_steps(4)) == 4
    assert bench.parse_method("two_stage").stage_steps(4) == (2, 2)
    # The plain peer beside the library's joint: the report says how far apart they are.
    gaps = {(g["mixture"], g["metric"]): g for g in report["plain_peer_gaps"]}
    gap = gaps[("synergy_heavy", "accuracy")]
    assert (gap["library"], gap["plain"]) == ("joint", "plain_joint")
    assert gap["difference"] == pytest.approx(by_key[("joint", "synergy_heavy", "accuracy")]["mean"]
                                              - by_key[("plain_joint", "synergy_heavy", "accuracy")]["mean"])
    assert bench.parse_method("plain_joint:hidden_dim=32").config == {"hidden_dim": 32}
    assert bench.parse_method("joint:baseline_hidden_dim=32").config == {"baseline_hidden_dim": 32}
    # A DMILTrainingArguments field changes the method's training loop, not its config.
    clipped = bench.parse_method("joint:max_grad_norm=1.0+baseline_hidden_dim=32")
    assert (clipped.training, clipped.config) == ({"max_grad_norm": 1.0}, {"baseline_hidden_dim": 32})
    # A number in exponent form is a float, not YAML 1.1's string (which crashed the optimizer after every run).
    assert bench.parse_method("i2m2:learning_rate=2e-3+stage1_kl_weight=1e-3").training == {"learning_rate": 2e-3}
    assert bench.parse_method("dmil:stage1_kl_weight=1e-3").config == {"stage1_kl_weight": 1e-3}
    harness = sys.modules["harness"]
    settings = harness.RunSettings(total_steps=4, batch_size=8, stage_learning_rates=(1e-3, 3e-3, 1e-3))
    assert harness.training_arguments(settings, clipped, 0, str(tmp_path)).max_grad_norm == 1.0
    assert harness.training_arguments(settings, bench.parse_method("joint"), 0, str(tmp_path)).max_grad_norm == 0
    with pytest.raises(ValueError, match="DMIL"):
        bench.parse_method("joint:stages=0.5/0.25/0.25")
    assert bench.parse_method("dmil:gate_objective=mixture+stage1_synergy_weight=0").config == {
        "gate_objective": "mixture", "stage1_synergy_weight": 0}
    assert "| half_U_half_R | dmil |" in bench.gate_table(report)
    # The chart is an optional extra (matplotlib, `.[bench]`): without it the run must still write its JSON.
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "chart.png").stat().st_size > 0
    else:
        assert not (tmp_path / "chart.png").exists()
    assert "| half_U_half_R | dmil |" in bench.markdown_table(report)


def test_quick_preset_is_small(bench):
    settings, _ = bench.parse_settings(["--quick"])
    assert len(settings.seeds) == 3 and "synergy_heavy" in settings.mixtures
    assert any("U" in m for m in settings.mixtures)
    # Per method compared (the list of baselines grows: i2m2 joined it): at most 2500 optimizer steps in all.
    assert settings.total_steps * len(settings.seeds) * len(settings.mixtures) <= 2500


def test_parallel_jobs_give_the_rows_of_a_serial_run(bench):
    """`--jobs 2` trains the (mixture, seed) units in forked processes: the same rows, in the same order."""
    argv = ["--seeds", "0,1", "--steps", "2", "--batch-size", "8", "--n-train", "24", "--n-test", "16",
            "--mixtures", "half_U_half_R", "--methods", "ensemble,dmil"]

    def rows(extra):
        settings, _ = bench.parse_settings(argv + extra)
        report = bench.run_benchmark(settings, log=lambda line: None)
        return [{k: v for k, v in row.items() if k != "train_time_s"} for row in report["per_seed"]]

    serial, parallel = rows([]), rows(["--jobs", "2"])
    assert [(r["method"], r["seed"]) for r in parallel] == [("ensemble", 0), ("dmil", 0), ("ensemble", 1), ("dmil", 1)]
    assert json.dumps(parallel, sort_keys=True) == json.dumps(serial, sort_keys=True)


def test_reports_split_by_seed_merge_into_the_report_of_one_run(bench, tmp_path):
    import importlib.util as util

    spec = util.spec_from_file_location("merge_reports", BENCHMARK.parent / "merge_reports.py")
    merge_reports = util.module_from_spec(spec)
    spec.loader.exec_module(merge_reports)
    argv = ["--steps", "2", "--batch-size", "8", "--n-train", "24", "--n-test", "16", "--mixtures", "synergy_heavy",
            "--methods", "ensemble,joint,plain_joint"]

    def run(seeds):
        settings, _ = bench.parse_settings(argv + ["--seeds", seeds])
        return bench.run_benchmark(settings, log=lambda line: None)

    whole = run("0,1")
    merged = merge_reports.merge([run("0"), run("1")])

    def without_times(rows):
        return json.dumps([{k: v for k, v in row.items() if k != "train_time_s"} for row in rows], sort_keys=True)

    assert without_times(merged["per_seed"]) == without_times(whole["per_seed"])
    assert json.dumps(merged["rows"], sort_keys=True) == json.dumps(whole["rows"], sort_keys=True)
    assert merged["plain_peer_gaps"] == whole["plain_peer_gaps"]
    assert merged["synergy_indicator_chance"] == pytest.approx(whole["synergy_indicator_chance"])
    other = run("0")
    other["settings"]["total_steps"] = 3
    with pytest.raises(ValueError, match="total_steps"):
        merge_reports.merge([whole, other])
