#!/usr/bin/env python
"""The interaction gate on a regression: DMIL (`problem_type="regression"`) against the joint and ensemble baselines
on the synthetic benchmark's regression task, per interaction type.

The data are `SyntheticInteractionSpec(task="regression")`: the samples, types and inputs of the classification
benchmark, with the class value y turned into a real target t = (2y - (C-1)) / (C-1) + N(0, target_noise^2). R, U and S
keep their meaning (one modality determines t; only one does; only the combination does). Every method trains on the
same data from the same tiny random backbones through `DMILTrainer`, with the same optimizer-step budget (DMIL's three
stages share it, 50% / 25% / 25%), as in `benchmarks/interactions.py`.

Reported per method, mean ± std over seeds: ``mae``, ``pearson`` and ``mae_<type>`` on a fresh test split, and for
DMIL the mean gate weight of each component per type: the routing. With the composition gate
(`gate_objective="composition"`), the gate learns each training sample's composition from the Gaussian information
estimate (`problem_types_dmil`), so R samples should weigh redundancy, U_<m> samples uniqueness_<m> and S samples
synergy, as on the classification benchmark.

    python benchmarks/regression_routing.py --quick --out bench_out/regression_routing_quick.json   # 1 seed, 400 steps
    python benchmarks/regression_routing.py --out bench_out/regression_routing.json                 # 3 seeds, 1500 steps
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import EvalPrediction  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dmil_hf import DMILForMultimodalClassification  # noqa: E402
from dmil_hf.data import SyntheticInteractionSpec, make_interaction_splits, tiny_config_for  # noqa: E402
from dmil_hf.evaluation import make_compute_metrics  # noqa: E402
from harness import (  # noqa: E402
    RunSettings,
    apply_arguments,
    benchmark_parser,
    mean_std,
    parse_method,
    train_and_predict,
    write_report,
)


@dataclass
class RegressionSettings:
    """Everything one run depends on (written into the JSON report)."""

    modalities: tuple[str, ...] = ("text", "vision")
    mixtures: tuple[str, ...] = ("balanced",)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("joint", "ensemble", "dmil")
    num_labels: int = 4  # class values behind the target
    target_noise: float = 0.05
    n_train: int = 4000
    n_test: int = 1000
    total_steps: int = 1500
    batch_size: int = 32
    stage_learning_rates: tuple[float, float, float] = (1e-3, 3e-3, 1e-3)  # synthetic_tiny.yaml's
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    latent_dim: int = 32
    finetune_method: str = "full"
    threads: int = 1

    def spec(self, mixture: str) -> SyntheticInteractionSpec:
        return SyntheticInteractionSpec(
            modalities=self.modalities, num_labels=self.num_labels, mixture=mixture, task="regression",
            target_noise=self.target_noise,
        )


QUICK = RegressionSettings(seeds=(0,), n_train=2000, n_test=600, total_steps=400)


def run_benchmark(settings: RegressionSettings, log=print) -> dict[str, Any]:
    torch.set_num_threads(settings.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    run_settings = RunSettings(
        total_steps=settings.total_steps, batch_size=settings.batch_size,
        stage_learning_rates=settings.stage_learning_rates, warmup_ratio=settings.warmup_ratio,
        weight_decay=settings.weight_decay, finetune_method=settings.finetune_method,
    )
    methods = [parse_method(name) for name in settings.methods]
    start = time.perf_counter()
    values: dict[tuple[str, str, str], list[float]] = {}
    components: list[str] = []
    for mixture in settings.mixtures:
        spec = settings.spec(mixture)
        for seed in settings.seeds:
            splits = make_interaction_splits(settings.n_train, settings.n_test, seed=seed, spec=spec)
            test = splits["test"]
            types = list(test["interaction_type"])
            for method in methods:
                def build(m, spec=spec):
                    config = tiny_config_for(spec, paradigm=m.paradigm, latent_dim=settings.latent_dim, **m.config)
                    return DMILForMultimodalClassification(config)

                run = train_and_predict(run_settings, method, build, seed, splits["train"], {"clean": test})
                components = list(run["config"].interaction_components)
                compute = make_compute_metrics(run["config"], interaction_types=types)
                metrics = compute(EvalPrediction(predictions=run["clean"], label_ids=np.asarray(test["labels"])))
                for name, value in metrics.items():
                    values.setdefault((mixture, method.name, name), []).append(value)
                gate = "  ".join(
                    f"{t}: " + "/".join(f"{metrics.get(f'gate_{c}_{t}', float('nan')):.2f}" for c in components)
                    for t in spec.interaction_types
                ) if method.paradigm == "dmil" else ""
                log(f"[{mixture} seed {seed}] {method.name:10s} mae {metrics['mae']:.3f}  pearson "
                    f"{metrics['pearson']:.3f}  {gate}  ({run['train_time_s']:.0f} s)")
    rows = []
    for (mixture, method, metric), vs in values.items():
        mean, std = mean_std(vs)
        rows.append({"mixture": mixture, "method": method, "metric": metric, "mean": mean, "std": std, "n": len(vs)})
    return {
        "benchmark": "regression routing (synthetic)", "settings": asdict(settings), "components": components,
        "interaction_types": {m: settings.spec(m).interaction_types for m in settings.mixtures}, "rows": rows,
        "wall_time_s": time.perf_counter() - start,
    }


def tables(report: dict[str, Any]) -> str:
    by_key = {(r["mixture"], r["method"], r["metric"]): r for r in report["rows"]}
    pairs = list(dict.fromkeys((r["mixture"], r["method"]) for r in report["rows"]))
    lines = []
    for mixture in dict.fromkeys(m for m, _ in pairs):
        types = report["interaction_types"][mixture]
        metrics = ["mae", "pearson", *[f"mae_{t}" for t in types]]
        lines += [f"mixture {mixture}", "", "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for m, method in pairs:
            if m == mixture:
                cells = [by_key.get((mixture, method, k)) for k in metrics]
                lines.append(f"| {method} | " + " | ".join(
                    "-" if c is None else f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells) + " |")
        gate_rows = []
        for m, method in pairs:
            for t in types:
                cells = [by_key.get((mixture, method, f"gate_{c}_{t}")) for c in report["components"]]
                if m == mixture and all(c is not None for c in cells):
                    gate_rows.append(f"| {method} | {t} | " + " | ".join(f"{c['mean']:.2f}" for c in cells) + " |")
        if gate_rows:
            lines += ["", "mean gate weight per type", "", "| method | type | " + " | ".join(report["components"]) + " |",
                      "|---|---|" + "---|" * len(report["components"]), *gate_rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = benchmark_parser(__doc__, "1 seed, 400 steps")
    parser.add_argument("--target-noise", dest="target_noise", type=float)
    args = parser.parse_args(argv)
    settings = apply_arguments(parser, args, QUICK if args.quick else RegressionSettings())
    report = run_benchmark(settings)
    print()
    print(tables(report))
    print(f"wall time {report['wall_time_s']:.0f} s")
    if args.out:
        write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
