#!/usr/bin/env python
"""Where DMIL stands against the joint and ensemble baselines, per interaction type, on the synthetic benchmark.

For each mixture and seed, every method (`harness.py`: joint, ensemble, DMIL-reference, DMIL-default, or ablations
such as ``dmil:gate_objective=mixture``) trains on the SAME generated data, from the same tiny random backbones
(`dmil_hf.data.tiny_config_for`), through the project's `DMILTrainer`, with the same budget: the same
number of optimizer steps at the same batch size. DMIL's three stages share that budget (DMIL-default 50% / 25% / 25%,
DMIL-reference the reference code's 10 / 5 / 55 epochs); the baselines spend it in their single stage. Learning rates
are those of `training/configs/synthetic_tiny.yaml` (baselines use DMIL's stage-1 rate, the stage that trains the
backbones from scratch). The budget is equal in optimizer steps and samples seen, not in
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
import os
import sys
import time
from dataclasses import dataclass, replace
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
from transformers.utils import logging as hf_logging  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmil_hf import DMILForMultimodalClassification  # noqa: E402
from dmil_hf.data import (  # noqa: E402
    SyntheticInteractionSpec,
    corrupt,
    decode_slots,
    make_interaction_splits,
    tiny_config_for,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    METHODS,
    Method,
    RunSettings,
    apply_arguments,
    benchmark_parser,
    build_report,
    emit,
    gate_table,  # noqa: F401  (re-exported: the tables are part of this script's interface)
    markdown_table,  # noqa: F401
    parse_method,
    run_seeds,
)

@dataclass
class BenchmarkSettings:
    """Everything one benchmark run depends on (written into the JSON report)."""

    # Two modalities by default: on CPU the audio backbone costs ~5x the other two together, and a three-way synergy
    # (a sum mod C of three shares) is far beyond this budget; pass --modalities text,vision,audio for K = 3.
    modalities: tuple[str, ...] = ("text", "vision")
    mixtures: tuple[str, ...] = ("half_U_half_R", "synergy_heavy", "balanced")
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    num_labels: int = 4
    dominant_modality: str = "text"
    dominance: float = 0.3
    n_train: int = 4000
    n_test: int = 1000
    total_steps: int = 1500
    batch_size: int = 32
    # synthetic_tiny.yaml's rates; the baselines take stage 1's (the stage that trains the backbones).
    stage_learning_rates: tuple[float, float, float] = (1e-3, 3e-3, 1e-3)
    warmup_ratio: float = 0.05  # of each stage's steps (transformers 5 takes a float < 1 in warmup_steps)
    weight_decay: float = 0.01
    # None: the library's default (DMILConfig.latent_dim), so that "dmil" is the DMIL a user gets.
    latent_dim: int | None = None
    finetune_method: str = "full"  # the paper's stage 3; "lora" is this project's extension
    threads: int = 1
    # (mixture, seed) units trained at once, each in its own process (harness.run_seeds).
    jobs: int = 1

    def run_settings(self) -> RunSettings:
        return RunSettings(
            total_steps=self.total_steps, batch_size=self.batch_size, stage_learning_rates=self.stage_learning_rates,
            warmup_ratio=self.warmup_ratio, weight_decay=self.weight_decay, finetune_method=self.finetune_method,
        )

    def spec(self, mixture: str) -> SyntheticInteractionSpec:
        return SyntheticInteractionSpec(
            modalities=self.modalities, num_labels=self.num_labels, mixture=mixture,
            dominant_modality=self.dominant_modality, dominance=self.dominance,
        )


# --quick: two mixtures and a smaller budget (~3 min on 2 shared CPU cores). Too short for synergy to be learned:
# it shows the R/U picture; the full run is the one to read for S.
QUICK = BenchmarkSettings(mixtures=("half_U_half_R", "synergy_heavy"), n_train=2000, n_test=600, total_steps=400)


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


# ---------------------------------------------------------------------- the benchmark


def run_benchmark(settings: BenchmarkSettings, log=print) -> dict[str, Any]:
    """Train every method on every mixture and seed; return the report (see the module docstring)."""
    torch.set_num_threads(settings.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    methods = [parse_method(name) for name in settings.methods]
    start = time.perf_counter()
    ceilings: dict[str, dict[str, list[float]]] = {}

    def make_splits(mixture: str, seed: int) -> dict[str, Any]:
        spec = settings.spec(mixture)
        splits = make_interaction_splits(settings.n_train, settings.n_test, seed=seed, spec=spec)
        test = splits["test"]
        corrupted = corrupt(test, settings.dominant_modality, mode="blank", seed=seed)
        for k, v in bayes_ceilings(spec, test, corrupted).items():
            ceilings.setdefault(mixture, {}).setdefault(k, []).append(v)
        r_rows = [i for i, t in enumerate(test["interaction_type"]) if t == "R"]
        return {"train": splits["train"], "test": test, "test_corrupted": corrupted.select(r_rows)}

    def build_model(mixture: str, method: Method) -> DMILForMultimodalClassification:
        # A method's own fields (an ablation's `dmil:latent_dim=128`) win over the benchmark's settings.
        fields = {**({"latent_dim": settings.latent_dim} if settings.latent_dim else {}), **method.config}
        config = tiny_config_for(settings.spec(mixture), paradigm=method.paradigm, **fields)
        return DMILForMultimodalClassification(config)

    per_seed, chance = run_seeds(
        settings=settings.run_settings(), methods=methods, mixtures=list(settings.mixtures),
        seeds=list(settings.seeds), make_splits=make_splits, build_model=build_model,
        interaction_types=lambda mixture: settings.spec(mixture).interaction_types,
        num_labels=settings.num_labels, log=log, jobs=settings.jobs,
    )
    return build_report(
        benchmark="interactions (synthetic)", settings=settings, methods=methods, mixtures=list(settings.mixtures),
        modalities=list(settings.spec(settings.mixtures[0]).modalities),
        interaction_types={mixture: settings.spec(mixture).interaction_types for mixture in settings.mixtures},
        per_seed=per_seed, chance=chance, started=start,
        robustness=f"robust_accuracy_R: accuracy on R test samples with {settings.dominant_modality} corrupted (blank)",
        bayes_ceilings={m: {k: float(np.mean(v)) for k, v in c.items()} for m, c in ceilings.items()},
    )


def parse_settings(argv: list[str] | None = None) -> tuple[BenchmarkSettings, argparse.Namespace]:
    parser = benchmark_parser(__doc__, "2 mixtures, 400 steps: < 5 min on 2 CPU cores")
    parser.add_argument("--chart", default=None, help="PNG path of the chart (default: --out with .png)")
    parser.add_argument("--dominant-modality", dest="dominant_modality")
    parser.add_argument("--dominance", type=float)
    args = parser.parse_args(argv)
    settings = apply_arguments(parser, args, QUICK if args.quick else BenchmarkSettings())
    if settings.dominant_modality not in settings.modalities:
        if args.dominant_modality is not None:
            parser.error(f"--dominant-modality {args.dominant_modality} is not one of {settings.modalities}")
        settings = replace(settings, dominant_modality=settings.modalities[0])
    return settings, args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings, args = parse_settings(argv)
    report = run_benchmark(settings, log=lambda line: print(line, flush=True))
    emit(report, args.out, args.chart)
    return report


if __name__ == "__main__":
    main()
