"""What the interaction benchmarks share: the methods compared, one training run through `DMILTrainer` at an equal
step budget, per-type scoring (accuracy, synergy indicator, robust R, gate weights), aggregation over seeds, the
markdown table and the chart.

A *method* is a paradigm plus DMIL config values and, for DMIL, the split of the step budget over its stages:

* ``joint``, ``ensemble``, ``i2m2``: the baselines (one stage, the whole budget);
* ``two_stage``: unimodal pretraining, then a joint head with the encoders fine-tuned (Du et al., ICML 2023), its
  two stages splitting the budget (`TWO_STAGE_FRACTIONS`);
* ``plain_joint``, ``plain_ensemble`` (`plain_peers.PLAIN_PEERS`): the same baselines written plainly in PyTorch, on
  the same backbones, data, budget and optimizer, the check that the library's are at least as strong;
* ``dmil_reference``: `DMILConfig.reference()` with the reference code's epoch split (10/5/55 of 70 epochs);
* ``dmil``: the library's default DMIL;
* ``dmil:field=value+field=value``: the default with some fields changed (ablations), e.g.
  ``dmil:gate_objective=mixture``; ``stages=0.5/0.25/0.25`` sets the split of the budget and ``lrs=a/b/c`` the
  peak learning rate of each stage; a `DMILTrainingArguments` field changes the training loop of any library method
  (``joint:max_grad_norm=0``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
import time
import argparse
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import EvalPrediction, PrinterCallback, set_seed  # noqa: E402

from dmil_hf.models.dmil.configuration_dmil import REFERENCE_PRESET  # noqa: E402
from dmil_hf.evaluation import make_compute_metrics  # noqa: E402
from dmil_hf.training import DMILTrainer, DMILTrainingArguments  # noqa: E402

UNIMODAL_REFERENCE = (
    "synergy_indicator uses the ensemble run's per-modality heads (same mixture, same seed) as the unimodal "
    "reference for every method"
)
# The reference code trains 10 / 5 / 55 epochs (stage 3 is 'the remaining epochs' of 70).
REFERENCE_STAGE_FRACTIONS = (10 / 70, 5 / 70, 55 / 70)
# The library default's split, chosen on the synthetic benchmark (README, "Method").
DEFAULT_STAGE_FRACTIONS = (0.5, 0.25, 0.25)
# two_stage: half the budget for unimodal pretraining, half for joint fine-tuning.
TWO_STAGE_FRACTIONS = (0.5, 0.5)


@dataclass(frozen=True)
class Method:
    name: str
    paradigm: str
    config: dict[str, Any] = field(default_factory=dict)
    # The split of the step budget over the paradigm's stages (DMIL's three, two_stage's two); None for DMIL: the
    # library default's, for a one-stage baseline: everything in its stage.
    stage_fractions: tuple[float, ...] | None = None
    # DMIL's peak learning rate per stage; None: the benchmark's shared stage_learning_rates.
    stage_learning_rates: tuple[float, float, float] | None = None
    # DMILTrainingArguments fields this method changes (`joint:max_grad_norm=0`), for ablations of the loop.
    training: dict[str, Any] = field(default_factory=dict)

    def stage_steps(self, total_steps: int) -> tuple[int, ...]:
        """Steps per stage: they add up to the one-stage baselines' `total_steps` (equal budget); the last stage
        takes what the others leave."""
        fractions = self.stage_fractions or (DEFAULT_STAGE_FRACTIONS if self.paradigm == "dmil" else (1.0,))
        steps = [max(1, round(f * total_steps)) for f in fractions[:-1]]
        return (*steps, max(1, total_steps - sum(steps)))


METHODS = ("joint", "ensemble", "dmil_reference", "dmil")  # what the benchmarks compare by default
BASE_METHODS = {
    "joint": Method("joint", "joint"),
    "ensemble": Method("ensemble", "ensemble"),
    "two_stage": Method("two_stage", "two_stage", stage_fractions=TWO_STAGE_FRACTIONS),
    "dmil_reference": Method("dmil_reference", "dmil", dict(REFERENCE_PRESET), REFERENCE_STAGE_FRACTIONS),
    "dmil": Method("dmil", "dmil", {}, DEFAULT_STAGE_FRACTIONS),
}
# I2M2 (Madaan et al., NeurIPS 2024): intra- and inter-modality experts, log-probabilities summed, one stage.
BASE_METHODS["i2m2"] = Method("i2m2", "i2m2")
METHODS = (*METHODS, "i2m2")


def plain_peers() -> dict[str, Any]:
    """The plain-PyTorch peers (`plain_peers.PLAIN_PEERS`: name -> (model class, library paradigm))."""
    from plain_peers import PLAIN_PEERS

    return PLAIN_PEERS


def _override_value(text: str) -> Any:
    """An override's value as YAML reads it, with a number in exponent form (`2e-3`, a string to YAML 1.1) as a
    float."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def stage_values(text: str, what: str) -> tuple[float, float, float]:
    """`a/b/c`: one value per DMIL stage (1, 2, 3); `what` names the option in the error."""
    values = tuple(float(x) for x in text.split("/"))
    if len(values) != 3:
        raise ValueError(f"{what} takes three values a/b/c (stages 1, 2, 3), got {text!r}")
    return values


def parse_method(name: str) -> Method:
    """A method by name; `base:field=value+field=value` changes config fields (and, for DMIL, `stages=a/b/c` and
    `lrs=a/b/c`) of a base method, e.g. ``joint:joint_hidden_dim=32``."""
    base_name, _, overrides = name.partition(":")
    peers = plain_peers()
    if base_name in peers:
        options = {}
        for item in filter(None, overrides.split("+")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} of method {name!r} is not option=value")
            options[key] = _override_value(value)
        return Method(name, peers[base_name][1], options)
    if base_name not in BASE_METHODS:
        raise ValueError(
            f"unknown method {base_name!r}; choose from {sorted([*BASE_METHODS, *peers])} (optionally with "
            "':field=value')"
        )
    base = BASE_METHODS[base_name]
    if not overrides:
        return base
    config, schedule = dict(base.config), {"stages": base.stage_fractions, "lrs": base.stage_learning_rates}
    training: dict[str, Any] = {}
    argument_fields = {f.name for f in fields(DMILTrainingArguments)}
    for item in overrides.split("+"):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} of method {name!r} is not field=value")
        if key in argument_fields and key not in schedule:  # `stages=a/b/c` is the budget split, not the field
            training[key] = _override_value(value)
        elif key in schedule:
            if base.paradigm != "dmil":
                raise ValueError(f"{key}= sets DMIL's three stages; {name!r} is not a DMIL method")
            schedule[key] = stage_values(value, f"{key}=")
        else:
            config[key] = _override_value(value)
    return Method(name, base.paradigm, config, schedule["stages"], schedule["lrs"], training)


# ---------------------------------------------------------------------- one training run


@dataclass
class RunSettings:
    """The budget and optimizer shared by every method of a benchmark."""

    total_steps: int
    batch_size: int
    # DMIL's peak rates per stage; the baselines take stage 1's (the stage that trains the backbones).
    stage_learning_rates: tuple[float, float, float]
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    finetune_method: str = "full"
    eval_batch_size: int = 256
    # No gradient clipping, as the plain peers' loop: the Trainer's default (1.0) cost the library's joint and I2M2
    # 2.5 pp and DMIL 0.8 pp on the real-signal benchmark (6 seeds; README "Baselines"), so a comparison with the
    # plain peers would otherwise measure the loop, not the model.
    max_grad_norm: float = 0.0


def training_arguments(settings: RunSettings, method: Method, seed: int, output_dir: str) -> DMILTrainingArguments:
    rates = method.stage_learning_rates or settings.stage_learning_rates
    steps = method.stage_steps(settings.total_steps)
    if method.paradigm == "dmil":
        stage_args: dict[str, Any] = {}
        for k, (s, lr) in enumerate(zip(steps, rates), start=1):
            stage_args.update({f"stage{k}_max_steps": s, f"stage{k}_learning_rate": lr})
    else:
        # The baselines train their backbones at DMIL's stage-1 rate in every stage they have.
        stage_args = {f"stage{k}_max_steps": s for k, s in enumerate(steps, start=1)}
        stage_args.update(max_steps=settings.total_steps, learning_rate=rates[0])
    return DMILTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size, finetune_method=settings.finetune_method,
        warmup_steps=settings.warmup_ratio, weight_decay=settings.weight_decay, lr_scheduler_type="linear",
        seed=seed, data_seed=seed, use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        **{"max_grad_norm": settings.max_grad_norm, **stage_args, **method.training},
    )


def train_and_predict(
    settings: RunSettings, method: Method, build_model: Callable[[Method], Any], seed: int, train, tests: dict,
    save_dir: str | None = None, make_processor: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Train one method from `build_model(method)` and return its predictions on each of `tests` (name -> data).
    With `save_dir`, the run folder is kept there (`keep_run`, with the processor `make_processor(config)` gives)
    instead of in a temporary folder: the same training, the same predictions."""
    if method.name.partition(":")[0] in plain_peers():
        from plain_peers import train_and_predict_plain

        return train_and_predict_plain(settings, method, build_model, seed, train, tests)
    set_seed(seed)
    model = build_model(method)
    with contextlib.ExitStack() as stack:
        folder = save_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix=f"dmil-bench-{method.paradigm}-"))
        trainer = DMILTrainer(model=model, args=training_arguments(settings, method, seed, folder), train_dataset=train)
        trainer.remove_callback(PrinterCallback)  # its end-of-stage metric dicts would bury the progress lines
        start = time.perf_counter()
        trainer.train()
        train_time = time.perf_counter() - start
        predictions = {name: trainer.predict(data).predictions for name, data in tests.items()}
        if save_dir:
            keep_run(trainer, tests["clean"], make_processor(trainer.model.config) if make_processor else None)
    return {"config": trainer.model.config, "train_time_s": train_time, **predictions}


def keep_run(trainer: DMILTrainer, test, processor: Any = None) -> None:
    """A kept run (`--save_models`) as `training/run.py` leaves one: the final model's evaluation on the clean test
    split (one more `Trainer.predict` pass, after the benchmark's own, so its numbers do not move) joins the last
    stage's results, in `output_dir/eval_results.json` and in the model card of `final/`, with the plots of that pass
    in `final/plots`; `processor` (raw inputs to what the data feeds the model) is saved with the pipeline code, so
    that `pipeline("multimodal-classification", model=final/)` serves the model."""
    from dmil_hf.evaluation.plots import save_plots
    from dmil_hf.models.dmil.pipeline_dmil import save_for_pipeline

    config = trainer.model.config
    if processor is not None:
        save_for_pipeline(trainer.model, processor, trainer.final_dir)
    types = list(test["interaction_type"])
    trainer.compute_metrics = make_compute_metrics(config, interaction_types=types)
    output = trainer.predict(test, metric_key_prefix="eval")
    trainer.stage_results[max(trainer.stage_results)].update(output.metrics)
    final_dir = trainer.final_dir
    save_plots(output, config, os.path.join(final_dir, "plots"), log_history=trainer.run_log_history,
               interaction_types=types)
    trainer.write_model_card(final_dir)
    stages = {str(k): v for k, v in trainer.stage_results.items()}
    Path(trainer.args.output_dir, "eval_results.json").write_text(
        json.dumps({**output.metrics, "stages": stages}, indent=2, default=float))


# ---------------------------------------------------------------------- metrics


def metric_names(interaction_types: list[str], components: list[str] | None = None) -> list[str]:
    names = ["accuracy", *[f"accuracy_{t}" for t in interaction_types], "synergy_indicator", "robust_accuracy_R"]
    if components:
        names += [f"gate_{c}_{t}" for t in interaction_types for c in components]
    return names


def gate_summary_names(interaction_types: list[str], modalities: list[str]) -> list[str]:
    """The gate weights the acceptance criteria read: synergy on R and S samples, uniqueness_m on U_m samples."""
    return ["gate_synergy_R", *[f"gate_uniqueness_{m}_U_{m}" for m in modalities], "gate_synergy_S"]


def score_runs(
    interaction_types: list[str], runs: dict[str, dict[str, Any]], test, test_corrupted
) -> dict[str, dict[str, float]]:
    """Per-method metrics of one (mixture, seed), with the ensemble's heads as the unimodal reference."""
    labels, types = np.asarray(test["labels"]), list(test["interaction_type"])
    reference = runs["ensemble"]["clean"]["modality_logits"] if "ensemble" in runs else None
    r_labels = np.asarray(test_corrupted["labels"])
    scores: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        compute_metrics = make_compute_metrics(run["config"], interaction_types=types, unimodal_predictions=reference)
        metrics = compute_metrics(EvalPrediction(predictions=run["clean"], label_ids=labels))
        corrupted_prediction = np.asarray(run["corrupted"]["logits"]).argmax(-1)
        metrics["robust_accuracy_R"] = float(np.mean(corrupted_prediction == r_labels)) if len(r_labels) else math.nan
        components = run["config"].interaction_components if run["config"].paradigm == "dmil" else None
        scores[name] = {k: metrics.get(k, math.nan) for k in metric_names(interaction_types, components)}
    return scores


def plain_peer_gaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each library baseline against its plain-PyTorch peer run beside it (`plain_peers.PLAIN_PEERS`), per mixture and
    metric: the library's mean minus the plain one's (>= 0 where the library is at least as strong)."""
    peers = plain_peers()
    by_key = {(r["mixture"], r["method"], r["metric"]): r for r in rows}
    gaps = []
    for (mixture, method, metric), row in by_key.items():
        if method not in peers or metric.startswith("gate_"):
            continue
        library = by_key.get((mixture, peers[method][1], metric))
        if library is None or math.isnan(row["mean"]) or math.isnan(library["mean"]):
            continue
        gaps.append({"library": peers[method][1], "plain": method, "mixture": mixture, "metric": metric,
                     "library_mean": library["mean"], "plain_mean": row["mean"],
                     "difference": library["mean"] - row["mean"]})
    return gaps


def mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    mean = float(np.mean(finite))
    return mean, float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def aggregate(per_seed: list[dict[str, Any]], methods: list[str], mixtures: list[str]) -> list[dict[str, Any]]:
    """Rows of mean ± std over seeds, one per (method, mixture, metric)."""
    rows = []
    for mixture in mixtures:
        for method in methods:
            entries = [e for e in per_seed if e["method"] == method and e["mixture"] == mixture]
            metrics = [k for k in entries[0] if k not in ("method", "mixture", "seed", "train_time_s")] if entries else []
            for metric in metrics:
                mean, std = mean_std([e[metric] for e in entries])
                rows.append({"method": method, "mixture": mixture, "metric": metric, "mean": mean, "std": std,
                             "n_seeds": len(entries)})
    return rows


# What one (mixture, seed) unit of `run_seeds` reads: closures cannot be pickled, so worker processes are forked and
# inherit this instead of being sent it.
_UNIT: dict[str, Any] = {}


def _run_unit(mixture: str, seed: int) -> tuple[list[dict[str, Any]], float]:
    """Train every method on one (mixture, seed); its per-method metric rows and the synergy indicator's chance."""
    unit = _UNIT
    torch.set_num_threads(unit["threads"])
    settings, methods, log, start = unit["settings"], unit["methods"], unit["log"], unit["start"]
    splits = unit["make_splits"](mixture, seed)
    tests = {"clean": splits["test"], "corrupted": splits["test_corrupted"]}
    save = unit["save_models"]
    runs = {
        m.name: train_and_predict(settings, m, lambda method: unit["build_model"](mixture, method), seed,
                                  splits["train"], tests,
                                  save_dir=os.path.join(save, mixture, f"seed{seed}", m.name) if save else None,
                                  make_processor=unit["make_processor"])
        for m in methods
    }
    scores = score_runs(unit["interaction_types"](mixture), runs, splits["test"], splits["test_corrupted"])
    unimodal = np.asarray(runs["ensemble"]["clean"]["modality_logits"]).argmax(-1)
    every_wrong = (unimodal != np.asarray(splits["test"]["labels"])[:, None]).all(1)
    rows = []
    for m in methods:
        s = scores[m.name]
        rows.append({"method": m.name, "mixture": mixture, "seed": seed,
                     "train_time_s": round(runs[m.name]["train_time_s"], 2), **s})
        gate = "  ".join(f"{k} {s[k]:.2f}" for k in s if k in ("gate_synergy_R", "gate_synergy_S"))
        log(f"[{time.perf_counter() - start:6.0f}s] {mixture:>14} seed {seed} {m.name:>16}: "
            f"acc {s['accuracy']:.3f}  S {s.get('accuracy_S', math.nan):.3f}  syn {s['synergy_indicator']:.3f}"
            f"  robust_R {s['robust_accuracy_R']:.3f}  {gate}")
    return rows, float(every_wrong.mean()) / unit["num_labels"]


def run_seeds(
    *,
    settings: RunSettings,
    methods: list[Method],
    mixtures: list[str],
    seeds: list[int],
    make_splits: Callable[[str, int], dict[str, Any]],
    build_model: Callable[[str, Method], Any],
    interaction_types: Callable[[str], list[str]],
    num_labels: int,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    save_models: str | None = None,
    make_processor: Callable[[Any], Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Train every method on every (mixture, seed); `make_splits(mixture, seed)` gives train / test / test_corrupted.
    Returns the per-seed metric rows and the synergy indicator's chance level per mixture. `jobs` > 1 trains that
    many (mixture, seed) units at once in forked processes (one torch thread each): the same runs, the same rows, in
    the same order, as seed and data depend on the unit alone. `save_models` keeps each library method's run folder
    (its model, card and evaluation, and the processor `make_processor(config)` gives: `keep_run`) in
    `save_models/<mixture>/seed<seed>/<method>`."""
    if "ensemble" not in [m.name for m in methods]:
        raise ValueError("the ensemble run is the synergy indicator's unimodal reference: keep it in the methods")
    _UNIT.update(
        settings=settings, methods=sorted(methods, key=lambda m: m.name != "ensemble"),  # ensemble first: others
        make_splits=make_splits, build_model=build_model, interaction_types=interaction_types,  # are scored by it
        num_labels=num_labels, log=log, start=time.perf_counter(), threads=torch.get_num_threads(),
        save_models=save_models, make_processor=make_processor,
    )
    units = [(mixture, seed) for mixture in mixtures for seed in seeds]
    if jobs > 1 and len(units) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _UNIT["threads"] = 1
        with ProcessPoolExecutor(min(jobs, len(units)), mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_run_unit, *zip(*units)))
    else:
        results = [_run_unit(mixture, seed) for mixture, seed in units]
    per_seed: list[dict[str, Any]] = []
    chance_synergy: dict[str, list[float]] = {}
    for (mixture, _), (rows, chance) in zip(units, results):
        per_seed.extend(rows)
        chance_synergy.setdefault(mixture, []).append(chance)
    return per_seed, {m: float(np.mean(v)) for m, v in chance_synergy.items()}


def build_report(
    *, benchmark: str, settings: Any, methods: list[Method], mixtures: list[str], modalities: list[str],
    interaction_types: dict[str, list[str]], per_seed: list[dict[str, Any]], chance: dict[str, float],
    robustness: str, started: float, **extra: Any,
) -> dict[str, Any]:
    """The JSON report every interaction benchmark writes (schema shared, so the tables and chart read both)."""
    rows = aggregate(per_seed, [m.name for m in methods], mixtures)
    return {
        "benchmark": benchmark,
        "unimodal_reference": UNIMODAL_REFERENCE,
        "budget": (
            f"{settings.total_steps} optimizer steps of batch {settings.batch_size} per method; steps per stage: "
            + "; ".join(f"{m.name} {'/'.join(map(str, m.stage_steps(settings.total_steps)))}"
                        for m in methods if len(m.stage_steps(settings.total_steps)) > 1)
        ),
        "robustness": robustness,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        "methods": {m.name: {"paradigm": m.paradigm, "config": m.config, "stage_fractions": m.stage_fractions,
                             "stage_learning_rates": m.stage_learning_rates, "training": m.training} for m in methods},
        "components": ["redundancy", *[f"uniqueness_{m}" for m in modalities], "synergy"],
        "interaction_types": interaction_types,
        "gate_summary": gate_summary_names(interaction_types[mixtures[0]], modalities),
        "rows": rows,
        "plain_peer_gaps": plain_peer_gaps(rows),
        **extra,
        "synergy_indicator_chance": chance,
        "per_seed": per_seed,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": settings.threads,
                        "machine": platform.machine()},
    }


def comma_tuple(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
    """argparse type: "a,b,c" -> (kind(a), kind(b), kind(c))."""
    return lambda text: tuple(kind(x.strip()) for x in text.split(",") if x.strip())


def benchmark_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
    """The command-line options every interaction benchmark has; each settings field of the same name is set by one."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=None, help="write the JSON report here (and the chart next to it as .png)")
    parser.add_argument("--modalities", type=comma_tuple(str))
    parser.add_argument("--mixtures", type=comma_tuple(str))
    parser.add_argument("--seeds", type=comma_tuple(int))
    parser.add_argument("--methods", type=comma_tuple(str), help="comma-separated methods: joint, ensemble, "
                        "i2m2, dmil_reference, dmil, or ablations like dmil:gate_objective=mixture+stages=0.4/0.2/0.4")
    parser.add_argument("--steps", dest="total_steps", type=int, help="optimizer steps per method")
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--n-train", dest="n_train", type=int)
    parser.add_argument("--n-test", dest="n_test", type=int)
    parser.add_argument("--finetune-method", dest="finetune_method", choices=("full", "lora"))
    parser.add_argument("--jobs", type=int, help="(mixture, seed) units trained at once, each in its own process "
                        "with one torch thread (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1: tiny models gain nothing from more, "
                        "and on a shared 2-core machine 2 threads run several times slower)")
    return parser


def apply_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Any) -> Any:
    """`settings` (a dataclass) with every field given on the command line replaced; unknown methods are an error."""
    given = {f.name: getattr(args, f.name) for f in fields(settings) if getattr(args, f.name, None) is not None}
    settings = replace(settings, **given)
    try:
        [parse_method(name) for name in settings.methods]
    except ValueError as err:
        parser.error(str(err))
    return settings


# ---------------------------------------------------------------------- output


def write_report(report: dict[str, Any], out: str) -> None:
    """Write a benchmark's JSON report to `out` (its folder made if missing) and say where."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def emit(report: dict[str, Any], out: str | None, chart: str | None = None) -> None:
    """Print the tables; write the JSON to `out` and the chart to `chart` (default: `out` with .png)."""
    print()
    print(markdown_table(report))
    print()
    print(gate_table(report))
    for gap in report.get("plain_peer_gaps", []):
        if gap["metric"] in ("accuracy", "accuracy_S"):
            print(f"{gap['mixture']}: {gap['library']} - {gap['plain']} {gap['metric']}: {gap['difference']:+.3f} "
                  f"({gap['library_mean']:.3f} vs {gap['plain_mean']:.3f})")
    print(f"\n{UNIMODAL_REFERENCE}.\n{report['budget']}.\n{report['robustness']}.\n"
          f"wall time {report['wall_time_s']:.0f} s")
    if out:
        write_report(report, out)
    chart = chart or (str(Path(out).with_suffix(".png")) if out else None)
    if chart and write_chart(report, chart):
        print(f"wrote {chart}")


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return "n/a" if math.isnan(row["mean"]) else f"{row['mean']:.3f} ± {row['std']:.3f}"


def markdown_table(report: dict[str, Any], metrics: list[str] | None = None) -> str:
    """One row per (mixture, method), one column per metric (default: every non-gate metric), cells "mean ± std"."""
    rows = report["rows"]
    metrics = metrics or [m for m in dict.fromkeys(r["metric"] for r in rows) if not m.startswith("gate_")]
    by_key = {(r["mixture"], r["method"], r["metric"]): r for r in rows}
    pairs = list(dict.fromkeys((r["mixture"], r["method"]) for r in rows))
    lines = ["| mixture | method | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for mixture, method in pairs:
        lines.append(f"| {mixture} | {method} | " + " | ".join(_cell(by_key.get((mixture, method, m))) for m in metrics) + " |")
    for mixture, ceiling in report.get("bayes_ceilings", {}).items():
        ceiling = {**ceiling, "synergy_indicator": report.get("synergy_indicator_chance", {}).get(mixture)}
        lines.append(f"| {mixture} | *Bayes ceiling (syn: chance level)* | " + " | ".join(
            f"{ceiling[m]:.3f}" if ceiling.get(m) is not None else "-" for m in metrics) + " |")
    return "\n".join(lines)


def gate_table(report: dict[str, Any]) -> str:
    """Mean gate weight of each component per interaction type, per DMIL method and mixture."""
    rows = [r for r in report["rows"] if r["metric"].startswith("gate_")]
    if not rows:
        return ""
    lines = ["| mixture | method | type | " + " | ".join(report["components"]) + " |",
             "|---|---|---|" + "---|" * len(report["components"])]
    by_key = {(r["mixture"], r["method"], r["metric"]): r for r in rows}
    for mixture, method in dict.fromkeys((r["mixture"], r["method"]) for r in rows):
        for t in report["interaction_types"][mixture]:
            cells = [by_key.get((mixture, method, f"gate_{c}_{t}")) for c in report["components"]]
            if all(c is None or math.isnan(c["mean"]) for c in cells):
                continue
            lines.append(f"| {mixture} | {method} | {t} | " + " | ".join(
                "-" if c is None or math.isnan(c["mean"]) else f"{c['mean']:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: str, metrics: list[str] | None = None) -> str | None:
    """Grouped bars of accuracy per type per method (one panel per mixture), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in report["rows"] if not r["metric"].startswith("gate_")]
    mixtures = list(dict.fromkeys(r["mixture"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(mixtures), 1, figsize=(12, 3.4 * len(mixtures)), squeeze=False)
    for ax, mixture in zip(axes[:, 0], mixtures):
        mixture_rows = [r for r in rows if r["mixture"] == mixture]
        names = metrics or list(dict.fromkeys(r["metric"] for r in mixture_rows))
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            found = {r["metric"]: r for r in mixture_rows if r["method"] == method}
            means = [found[m]["mean"] if m in found else np.nan for m in names]
            stds = [found[m]["std"] if m in found else 0 for m in names]
            ax.bar(np.arange(len(names)) + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds,
                   label=method, capsize=2)
        ceiling = report.get("bayes_ceilings", {}).get(mixture, {})
        marks = [(i, ceiling[m]) for i, m in enumerate(names) if m in ceiling]
        if marks:
            ax.scatter(*zip(*marks), marker="_", s=900, color="black", zorder=3, label="Bayes ceiling")
        ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{report.get('benchmark', '')}: mixture {mixture} (mean ± std over seeds)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.text(0.01, 0.005, UNIMODAL_REFERENCE, fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
