#!/usr/bin/env python
"""Where DMIL stands against the joint and ensemble baselines, per interaction type, on the synthetic benchmark.

For each mixture and seed, the three paradigms train on the SAME generated data, from the same tiny random backbones
(`dmil_hf.synthetic_dmil.tiny_config_for`), through the project's `DMILTrainer`, with the same budget: the same
number of optimizer steps at the same batch size. DMIL's three stages share that budget (by default 50% / 25% / 25%,
the split of `training/configs/synthetic_tiny.yaml`); the baselines spend it in their single stage. Learning rates
are those of the same shipped config (baselines use DMIL's stage-1 rate, the stage that trains the backbones from
scratch). Nothing here is tuned per paradigm. The budget is equal in optimizer steps and samples seen, not in
FLOPs: DMIL's stage 2 runs the frozen backbones without a backward pass, while its heads cost more than a baseline's.

Reported per paradigm and mixture, mean ± std over seeds (sample std, ddof=1; 0 for a single seed):

* ``accuracy`` and ``accuracy_<type>`` (``R``, ``U_<modality>``, ``S``) on a fresh test split;
* ``synergy_indicator``: share of test samples the paradigm gets right while EVERY unimodal prediction is wrong. The
  unimodal reference is the same for every paradigm: the per-modality heads of the ENSEMBLE run of the same mixture
  and seed (independently trained unimodal models, the paper's definition). It is not 0 for a model that guesses:
  the report gives its chance level (1/C times the share of samples on which every reference head is wrong);
* ``robust_accuracy_R``: accuracy on the R test samples after the dominant modality is corrupted
  (`corrupt(..., mode="blank")`: re-encoded with no label evidence), i.e. how much of the other modalities'
  redundant evidence the paradigm learned to use.

The data make the dominant modality cleaner: the other modalities' direct evidence is replaced by a random class with
probability ``dominance`` (0.3). The Bayes ceilings this implies (computed from the decoded inputs) are written next
to the results.

    python benchmarks/interactions.py --quick --out bench_out/interactions_quick.json    # < 5 min on 2 CPU cores
    python benchmarks/interactions.py --out bench_out/interactions.json                  # 3 mixtures, 1500 steps
    python benchmarks/interactions.py --modalities text,vision,audio --out bench_out/interactions_tva.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

# Random init only: nothing may touch the network, and the flag must be set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import EvalPrediction, PrinterCallback, set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmil_hf import DMILForMultimodalClassification  # noqa: E402
from dmil_hf.metrics_dmil import make_compute_metrics  # noqa: E402
from dmil_hf.synthetic_dmil import (  # noqa: E402
    SyntheticInteractionSpec,
    corrupt,
    decode_slots,
    make_interaction_splits,
    tiny_config_for,
)
from dmil_hf.training_dmil import DMILTrainer, DMILTrainingArguments  # noqa: E402

PARADIGMS = ("joint", "ensemble", "dmil")
UNIMODAL_REFERENCE = (
    "synergy_indicator uses the ensemble run's per-modality heads (same mixture, same seed) as the unimodal "
    "reference for every paradigm"
)


@dataclass
class BenchmarkSettings:
    """Everything one benchmark run depends on (written into the JSON report)."""

    # Two modalities by default: on CPU the audio backbone costs ~5x the other two together, and a three-way synergy
    # (a sum mod C of three shares) is far beyond this budget; pass --modalities text,vision,audio for K = 3.
    modalities: tuple[str, ...] = ("text", "vision")
    mixtures: tuple[str, ...] = ("half_U_half_R", "synergy_heavy", "balanced")
    seeds: tuple[int, ...] = (0, 1, 2)
    paradigms: tuple[str, ...] = PARADIGMS
    num_labels: int = 4
    dominant_modality: str = "text"
    dominance: float = 0.3
    n_train: int = 4000
    n_test: int = 1000
    total_steps: int = 1500
    batch_size: int = 32
    # DMIL's split of the step budget over stages 1, 2, 3 (synthetic_tiny.yaml trains 6 / 3 / 3 epochs).
    stage_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    # synthetic_tiny.yaml's rates; the baselines take stage 1's (the stage that trains the backbones).
    stage_learning_rates: tuple[float, float, float] = (1e-3, 3e-3, 5e-4)
    warmup_ratio: float = 0.05  # of each stage's steps (transformers 5 takes a float < 1 in warmup_steps)
    weight_decay: float = 0.01
    latent_dim: int = 32
    finetune_method: str = "full"  # the paper's stage 3; "lora" is this project's extension
    threads: int = 1

    def stage_steps(self) -> tuple[int, int, int]:
        s1 = max(1, round(self.stage_fractions[0] * self.total_steps))
        s2 = max(1, round(self.stage_fractions[1] * self.total_steps))
        return s1, s2, max(1, self.total_steps - s1 - s2)

    def spec(self, mixture: str) -> SyntheticInteractionSpec:
        return SyntheticInteractionSpec(
            modalities=self.modalities, num_labels=self.num_labels, mixture=mixture,
            dominant_modality=self.dominant_modality, dominance=self.dominance,
        )


# --quick: two mixtures and a smaller budget (~3 min on 2 shared CPU cores). Too short for synergy to be learned:
# it shows the R/U picture; the full run is the one to read for S.
QUICK = BenchmarkSettings(mixtures=("half_U_half_R", "synergy_heavy"), n_train=2000, n_test=600, total_steps=400)


# ---------------------------------------------------------------------- one training run


def _training_arguments(
    settings: BenchmarkSettings, paradigm: str, seed: int, output_dir: str
) -> DMILTrainingArguments:
    s1, s2, s3 = settings.stage_steps()
    lr1, lr2, lr3 = settings.stage_learning_rates
    stage_args: dict[str, Any] = (
        dict(stage1_max_steps=s1, stage2_max_steps=s2, stage3_max_steps=s3,
             stage1_learning_rate=lr1, stage2_learning_rate=lr2, stage3_learning_rate=lr3)
        if paradigm == "dmil"
        else dict(max_steps=settings.total_steps, learning_rate=lr1)
    )
    return DMILTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=256,
        finetune_method=settings.finetune_method, warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay, lr_scheduler_type="linear", seed=seed, data_seed=seed,
        use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, **stage_args,
    )


def train_and_predict(settings: BenchmarkSettings, paradigm: str, spec: SyntheticInteractionSpec, seed: int,
                      train, test, test_corrupted) -> dict[str, Any]:
    """Train one paradigm and return its test predictions (clean and with the dominant modality corrupted)."""
    set_seed(seed)
    config = tiny_config_for(spec, paradigm=paradigm, latent_dim=settings.latent_dim)
    model = DMILForMultimodalClassification(config)
    with tempfile.TemporaryDirectory(prefix=f"dmil-bench-{paradigm}-") as tmp:
        trainer = DMILTrainer(model=model, args=_training_arguments(settings, paradigm, seed, tmp), train_dataset=train)
        trainer.remove_callback(PrinterCallback)  # its end-of-stage metric dicts would bury the progress lines
        start = time.perf_counter()
        trainer.train()
        train_time = time.perf_counter() - start
        clean = trainer.predict(test).predictions
        corrupted = trainer.predict(test_corrupted).predictions
    return {"config": config, "clean": clean, "corrupted": corrupted, "train_time_s": train_time}


# ---------------------------------------------------------------------- metrics


def bayes_ceilings(spec: SyntheticInteractionSpec, test, test_corrupted) -> dict[str, float]:
    """Accuracy of the Bayes rule on the slot values decoded from the test inputs: the best any model can do.

    Rule: no direct evidence anywhere means synergy (sum of the shares mod C); otherwise trust the cleanest modality
    showing a value (the dominant one, else the first in order; the weaker ones are all equally noisy).
    """
    def predict(data) -> np.ndarray:
        decoded = {m: decode_slots(data, m, spec) for m in spec.modalities}
        order = [spec.dominant_modality] + [m for m in spec.modalities if m != spec.dominant_modality]
        prediction = sum(decoded[m][1] for m in spec.modalities) % spec.num_labels
        for m in reversed(order):  # reversed: the cleanest modality is written last and wins
            a = decoded[m][0]
            prediction = np.where(a >= 0, a, prediction)
        return prediction

    labels, types = np.asarray(test["labels"]), np.asarray(test["interaction_type"])
    clean, corrupted = predict(test), predict(test_corrupted)
    out = {"accuracy": float(np.mean(clean == labels))}
    for t in spec.interaction_types:
        if (types == t).any():
            out[f"accuracy_{t}"] = float(np.mean(clean[types == t] == labels[types == t]))
    r = types == "R"
    out["robust_accuracy_R"] = float(np.mean(corrupted[r] == labels[r])) if r.any() else float("nan")
    return out


def _metric_names(spec: SyntheticInteractionSpec) -> list[str]:
    return ["accuracy", *[f"accuracy_{t}" for t in spec.interaction_types], "synergy_indicator", "robust_accuracy_R"]


def score_runs(
    spec: SyntheticInteractionSpec, runs: dict[str, dict[str, Any]], test, test_corrupted
) -> dict[str, dict[str, float]]:
    """Per-paradigm metrics of one (mixture, seed), with the ensemble's heads as the unimodal reference."""
    labels, types = np.asarray(test["labels"]), list(test["interaction_type"])
    reference = runs["ensemble"]["clean"]["modality_logits"] if "ensemble" in runs else None
    r_rows = np.asarray(types) == "R"
    scores: dict[str, dict[str, float]] = {}
    for paradigm, run in runs.items():
        compute_metrics = make_compute_metrics(run["config"], interaction_types=types, unimodal_predictions=reference)
        metrics = compute_metrics(EvalPrediction(predictions=run["clean"], label_ids=labels))
        corrupted_prediction = np.asarray(run["corrupted"]["logits"]).argmax(-1)
        metrics["robust_accuracy_R"] = (
            float(np.mean(corrupted_prediction[r_rows] == labels[r_rows])) if r_rows.any() else float("nan")
        )
        scores[paradigm] = {k: metrics.get(k, float("nan")) for k in _metric_names(spec)}
    return scores


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = float(np.mean(finite))
    return mean, float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


# ---------------------------------------------------------------------- the benchmark


def run_benchmark(settings: BenchmarkSettings, log=print) -> dict[str, Any]:
    """Train every paradigm on every mixture and seed; return the report (see the module docstring)."""
    torch.set_num_threads(settings.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if "ensemble" not in settings.paradigms:
        raise ValueError("the ensemble run is the synergy indicator's unimodal reference: keep it in paradigms")
    start = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    ceilings: dict[str, dict[str, list[float]]] = {}
    chance_synergy: dict[str, list[float]] = {}
    # Ensemble first: the others are scored against its unimodal heads.
    order = ["ensemble", *[p for p in settings.paradigms if p != "ensemble"]]
    for mixture in settings.mixtures:
        spec = settings.spec(mixture)
        for seed in settings.seeds:
            splits = make_interaction_splits(settings.n_train, settings.n_test, seed=seed, spec=spec)
            test = splits["test"]
            test_corrupted = corrupt(test, settings.dominant_modality, mode="blank", seed=seed)
            for k, v in bayes_ceilings(spec, test, test_corrupted).items():
                ceilings.setdefault(mixture, {}).setdefault(k, []).append(v)
            runs = {}
            for paradigm in order:
                runs[paradigm] = train_and_predict(
                    settings, paradigm, spec, seed, splits["train"], test, test_corrupted
                )
            scores = score_runs(spec, runs, test, test_corrupted)
            unimodal = np.asarray(runs["ensemble"]["clean"]["modality_logits"]).argmax(-1)
            every_wrong = (unimodal != np.asarray(test["labels"])[:, None]).all(1)
            chance_synergy.setdefault(mixture, []).append(float(every_wrong.mean()) / spec.num_labels)
            for paradigm in order:
                per_seed.append({"paradigm": paradigm, "mixture": mixture, "seed": seed,
                                 "train_time_s": round(runs[paradigm]["train_time_s"], 2), **scores[paradigm]})
                log(f"[{time.perf_counter() - start:6.0f}s] {mixture:>14} seed {seed} {paradigm:>8}: "
                    f"acc {scores[paradigm]['accuracy']:.3f}  syn {scores[paradigm]['synergy_indicator']:.3f}  "
                    f"robust_R {scores[paradigm]['robust_accuracy_R']:.3f}")
    rows = []
    for mixture in settings.mixtures:
        for paradigm in settings.paradigms:
            entries = [e for e in per_seed if e["paradigm"] == paradigm and e["mixture"] == mixture]
            for metric in _metric_names(settings.spec(mixture)):
                mean, std = _mean_std([e[metric] for e in entries])
                rows.append({"paradigm": paradigm, "mixture": mixture, "metric": metric, "mean": mean, "std": std,
                             "n_seeds": len(entries)})
    return {
        "benchmark": "interactions",
        "unimodal_reference": UNIMODAL_REFERENCE,
        "budget": (
            f"{settings.total_steps} optimizer steps of batch {settings.batch_size} per paradigm; DMIL stages 1/2/3: "
            f"{'/'.join(map(str, settings.stage_steps()))} steps"
        ),
        "robustness": (
            f"robust_accuracy_R: accuracy on R test samples with {settings.dominant_modality} corrupted (blank)"
        ),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        "rows": rows,
        "bayes_ceilings": {m: {k: float(np.mean(v)) for k, v in c.items()} for m, c in ceilings.items()},
        "synergy_indicator_chance": {m: float(np.mean(v)) for m, v in chance_synergy.items()},
        "per_seed": per_seed,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": settings.threads,
                        "machine": platform.machine()},
    }


# ---------------------------------------------------------------------- output


def markdown_table(report: dict[str, Any]) -> str:
    """One row per (mixture, paradigm), one column per metric, cells "mean ± std"."""
    metrics = list(dict.fromkeys(row["metric"] for row in report["rows"]))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for row in report["rows"]:
        text = "n/a" if math.isnan(row["mean"]) else f"{row['mean']:.3f} ± {row['std']:.3f}"
        cells.setdefault((row["mixture"], row["paradigm"]), {})[row["metric"]] = text
    lines = ["| mixture | paradigm | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for (mixture, paradigm), values in cells.items():
        lines.append(f"| {mixture} | {paradigm} | " + " | ".join(values.get(m, "-") for m in metrics) + " |")
    for mixture, ceiling in report.get("bayes_ceilings", {}).items():
        ceiling = {**ceiling, "synergy_indicator": report.get("synergy_indicator_chance", {}).get(mixture)}
        lines.append(f"| {mixture} | *Bayes ceiling (syn: chance level)* | " + " | ".join(
            f"{ceiling[m]:.3f}" if ceiling.get(m) is not None else "-" for m in metrics) + " |")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: str) -> str | None:
    """Grouped bars (one panel per mixture), or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    mixtures = list(dict.fromkeys(r["mixture"] for r in report["rows"]))
    paradigms = list(dict.fromkeys(r["paradigm"] for r in report["rows"]))
    fig, axes = plt.subplots(len(mixtures), 1, figsize=(11, 3.4 * len(mixtures)), squeeze=False)
    for ax, mixture in zip(axes[:, 0], mixtures):
        rows = [r for r in report["rows"] if r["mixture"] == mixture]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        width = 0.8 / len(paradigms)
        for i, paradigm in enumerate(paradigms):
            found = {r["metric"]: r for r in rows if r["paradigm"] == paradigm}
            means = [found[m]["mean"] if m in found else np.nan for m in metrics]
            stds = [found[m]["std"] if m in found else 0 for m in metrics]
            ax.bar(np.arange(len(metrics)) + (i - (len(paradigms) - 1) / 2) * width, means, width, yerr=stds,
                   label=paradigm, capsize=2)
        ceiling = report.get("bayes_ceilings", {}).get(mixture, {})
        marks = [(i, ceiling[m]) for i, m in enumerate(metrics) if m in ceiling]
        if marks:
            ax.scatter(*zip(*marks), marker="_", s=900, color="black", zorder=3, label="Bayes ceiling")
        ax.set_xticks(np.arange(len(metrics)), metrics, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"mixture {mixture} (mean ± std over seeds)", fontsize=10)
        ax.legend(fontsize=8)
    fig.text(0.01, 0.005, UNIMODAL_REFERENCE, fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tuple(kind):
    return lambda text: tuple(kind(x.strip()) for x in text.split(",") if x.strip())


def parse_settings(argv: list[str] | None = None) -> tuple[BenchmarkSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 mixtures, 400 steps: < 5 min on 2 CPU cores")
    parser.add_argument("--out", default=None, help="write the JSON report here (and the chart next to it as .png)")
    parser.add_argument("--chart", default=None, help="PNG path of the chart (default: --out with .png)")
    parser.add_argument("--modalities", type=_tuple(str))
    parser.add_argument("--mixtures", type=_tuple(str))
    parser.add_argument("--seeds", type=_tuple(int))
    parser.add_argument("--paradigms", type=_tuple(str))
    parser.add_argument("--steps", dest="total_steps", type=int, help="optimizer steps per paradigm")
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--n-train", dest="n_train", type=int)
    parser.add_argument("--n-test", dest="n_test", type=int)
    parser.add_argument("--dominant-modality", dest="dominant_modality")
    parser.add_argument("--dominance", type=float)
    parser.add_argument("--finetune-method", dest="finetune_method", choices=("full", "lora"))
    parser.add_argument("--threads", type=int, help="torch threads (default 1: tiny models gain nothing from more, "
                        "and on a shared 2-core machine 2 threads run several times slower)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else BenchmarkSettings()
    overrides = {
        f.name: getattr(args, f.name) for f in fields(BenchmarkSettings) if getattr(args, f.name, None) is not None
    }
    settings = replace(settings, **overrides)
    if settings.dominant_modality not in settings.modalities:
        if args.dominant_modality is not None:
            parser.error(f"--dominant-modality {args.dominant_modality} is not one of {settings.modalities}")
        settings = replace(settings, dominant_modality=settings.modalities[0])
    unknown = set(settings.paradigms) - set(PARADIGMS)
    if unknown:
        parser.error(f"unknown paradigms {sorted(unknown)}; choose from {PARADIGMS}")
    return settings, args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings, args = parse_settings(argv)
    report = run_benchmark(settings, log=lambda line: print(line, flush=True))
    print()
    print(markdown_table(report))
    print(f"\n{UNIMODAL_REFERENCE}.\n{report['budget']}.\n{report['robustness']}.\n"
          f"wall time {report['wall_time_s']:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    chart_path = args.chart or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if chart_path and write_chart(report, chart_path):
        print(f"wrote {chart_path}")
    return report


if __name__ == "__main__":
    main()
