"""Every script under benchmarks/ runs from its command line at a smoke size (CPU, a few steps), as a user runs it,
so that a crash in a benchmark fails the suite instead of the next measurement. What the numbers mean is measured
by the benchmarks themselves; here only that each runs to the end and writes the report it documents.

harness.py and plain_peers.py are libraries without a command line: they run inside interactions.py,
real_signals.py and regression_routing.py here (the plain peers as plain_joint / plain_i2m2), and plain_peers is
pinned weight for weight to the library's baselines in tests/model/test_baselines.py. The interaction and real-signal
benchmarks' internals are tested in test_benchmark_interactions.py and test_benchmark_real_signals.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
# The harness benchmarks' smallest budget: one seed, four optimizer steps on a few dozen samples.
HARNESS_SMOKE = ["--seeds", "0", "--steps", "4", "--batch-size", "8", "--n-train", "24", "--n-test", "16"]


def run_script(args: list[str], tmp_path: Path, timeout: int = 300, env: dict | None = None) -> str:
    """Run a benchmark command in a subprocess (offline, one thread, this checkout's dmil_hf); return its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", **(env or {})}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[:2]} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCHMARKS / script), *args]


def test_speed_tiny_preset(tmp_path):
    """`make bench`: every training and inference variant of the tiny preset, one timed step each."""
    out = tmp_path / "speed.json"
    run_script(python("speed.py", "--preset", "tiny", "--steps", "1", "--warmup", "1", "--rounds", "1",
                      "--batch-size", "4", "--out", str(out)), tmp_path)
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"train_joint", "train_joint_lora", "train_stage1", "train_stage2",
                                       "train_stage2_frozen", "train_stage3_lora",
                                       "train_stage3_full", "infer_joint", "infer_dmil"}
    assert all(v["samples_per_s"] > 0 for v in report["variants"].values()) and report["ratios"]


def test_trainer_loop(tmp_path):
    out = tmp_path / "trainer_loop.json"
    run_script(python("trainer_loop.py", "--preset", "tiny", "--steps", "3", "--warmup", "1", "--rounds", "1",
                      "--batch-size", "4", "--out", str(out)), tmp_path)
    report = json.loads(out.read_text())
    assert report["bare_step_ms"] > 0 and report["trainer_step_ms"] > 0 and "overhead" in report


def test_interactions_by_seed_and_merge_reports(tmp_path):
    """interactions.py split by seed (as the README runs it on several machines), then merge_reports.py."""
    parts = []
    for seed in ("0", "1"):
        parts.append(tmp_path / f"seed{seed}.json")
        run_script(python("interactions.py", *HARNESS_SMOKE, "--seeds", seed, "--mixtures", "synergy_heavy",
                          "--methods", "ensemble,dmil", "--out", str(parts[-1])), tmp_path)
    merged = tmp_path / "merged.json"
    run_script(python("merge_reports.py", *map(str, parts), "--out", str(merged)), tmp_path)
    report = json.loads(merged.read_text())
    assert sorted({(r["method"], r["seed"]) for r in report["per_seed"]}) == [
        ("dmil", 0), ("dmil", 1), ("ensemble", 0), ("ensemble", 1)]
    assert merged.with_suffix(".png").is_file()


def test_regression_routing(tmp_path):
    out = tmp_path / "regression_routing.json"
    run_script(python("regression_routing.py", *HARNESS_SMOKE, "--out", str(out)), tmp_path)
    report = json.loads(out.read_text())
    assert report["settings"]["total_steps"] == 4 and report["rows"]


def test_real_signals(tmp_path):
    """Vision + audio (the text modality needs the MiniLM wheel, an optional extra): the library's DMIL, its
    ensemble (the synergy indicator's reference) and the plain-PyTorch I2M2 beside it, on one mixture."""
    pytest.importorskip("sklearn")
    out = tmp_path / "real_signals.json"
    run_script(python("real_signals.py", *HARNESS_SMOKE, "--modalities", "vision,audio", "--mixtures", "balanced",
                      "--methods", "ensemble,dmil,plain_i2m2", "--out", str(out)), tmp_path)
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["per_seed"]} == {"ensemble", "dmil", "plain_i2m2"}


def test_real_signals_data_summary(tmp_path):
    # Without --rebuild (which re-renders the spoken digits with espeak-ng, not installed here): the data summary.
    pytest.importorskip("sklearn")
    assert "templates:" in run_script(python("real_signals_data.py"), tmp_path)


def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.sh with DRY_RUN=1: every measurement of the GPU run on CPU at the tiny preset, one
    step, no torch.compile, ending in the summary the README's speed table reads."""
    out = tmp_path / "gpu"
    stdout = run_script(["bash", str(BENCHMARKS / "gpu_check.sh")], tmp_path, timeout=500,
                        env={"DRY_RUN": "1", "OUT": str(out), "PY": sys.executable})
    assert "0 measurement(s) failed" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"speed_eager", "speed_fast_paths", "speed_compile", "speed_compile_fast", "trainer_loop"}
    assert all(isinstance(value, dict) for value in summary.values()), summary


def test_unimodal_takeoff(tmp_path):
    """The trace of each modality's unimodal CE over training (DMIL's collapsing seed): one curve point per log."""
    out = tmp_path / "takeoff.json"
    run_script(python("unimodal_takeoff.py", "--seeds", "0", "--methods", "ensemble,dmil", "--steps", "6",
                      "--n-train", "24", "--n-test", "16", "--batch-size", "8", "--log-every", "1", "--out", str(out)),
               tmp_path)
    runs = json.loads(out.read_text())["runs"]
    assert [r["method"] for r in runs] == ["ensemble", "dmil"]
    dmil = runs[1]
    # DMIL logs its unimodal CEs in every stage (stage 2 trains the encoders on them: stage2_modality_weight).
    assert {c["stage"] for c in dmil["curves"]} == {1, 2, 3}
    assert all({"ce_modality_vision", "ce_modality_audio"} <= set(c) for c in dmil["curves"])
    assert 0.0 <= dmil["unimodal_accuracy_vision"] <= 1.0
