#!/usr/bin/env python
"""When each modality's encoder starts to learn: the unimodal CE of every modality over training, per method and
seed, on the real-signal benchmark's quick setting, and each unimodal head's accuracy on the test samples that
carry the label in that modality (R and U_m). Written to trace DMIL's collapsing seed (vision + audio, seed 4) to
its cause: which module stays at chance, and in which stage.

    OMP_NUM_THREADS=1 python benchmarks/unimodal_takeoff.py --seeds 4 --methods ensemble,dmil \\
        --out bench_out/takeoff_seed4.json

Every method trains through `DMILTrainer` exactly as in `real_signals.py` (same data, budget, rates, no clipping),
with the loss terms logged every `--log-every` steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import parse_method, training_arguments, write_report  # noqa: E402  (sets HF_HUB_OFFLINE before transformers)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import real_signals  # noqa: E402
from dmil_hf.training import DMILTrainer  # noqa: E402


def takeoff(settings: real_signals.RealSignalSettings, method_name: str, seed: int, log_every: int) -> dict[str, Any]:
    """One run: the unimodal CE of each modality at every log, and each unimodal head's test accuracy."""
    method = parse_method(method_name)
    splits = real_signals.make_real_signal_splits(settings.modalities, settings.mixtures[0], settings.n_train,
                                                  settings.n_test, seed=seed)
    set_seed(seed)
    model = real_signals.build_model(settings, method)
    with tempfile.TemporaryDirectory(prefix="dmil-takeoff-") as tmp:
        args = training_arguments(settings.run_settings(), method, seed, tmp)
        args.logging_strategy, args.logging_steps = "steps", log_every
        trainer = DMILTrainer(model=model, args=args, train_dataset=splits["train"])
        trainer.train()
        predictions = trainer.predict(splits["test"]).predictions
        history = trainer.run_log_history
    curves = [
        {"step": entry["step"], "stage": entry.get("stage"),
         **{k: round(v, 4) for k, v in entry.items() if k.startswith("ce_modality_")}}
        for entry in history if any(k.startswith("ce_modality_") for k in entry)
    ]
    labels = np.asarray(splits["test"]["labels"])
    types = np.asarray(splits["test"]["interaction_type"])
    modality_logits = np.asarray(predictions["modality_logits"])
    accuracy = {
        f"unimodal_accuracy_{m}": float((modality_logits[:, k].argmax(-1) == labels)[np.isin(types, ["R", f"U_{m}"])].mean())
        for k, m in enumerate(settings.modalities)
    }
    return {"method": method_name, "seed": seed, **accuracy, "curves": curves}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="4")
    parser.add_argument("--methods", default="ensemble,dmil")
    parser.add_argument("--steps", type=int, help="optimizer steps per method (the quick setting's by default)")
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--n-test", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    settings = real_signals.QUICK
    for field, value in (("total_steps", args.steps), ("n_train", args.n_train), ("n_test", args.n_test),
                         ("batch_size", args.batch_size)):
        if value is not None:
            settings = replace(settings, **{field: value})
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.methods.split(","):
            run = takeoff(settings, name, seed, args.log_every)
            runs.append(run)
            ends = {c["stage"]: c for c in run["curves"]}
            print(f"seed {seed} {name:>24}: " + "  ".join(f"{k} {v:.3f}" for k, v in run.items() if k.startswith("unimodal_"))
                  + "  | CE at each stage's last log: "
                  + "; ".join(f"stage {s}: " + ", ".join(f"{k[12:]} {v:.3f}" for k, v in c.items() if k.startswith("ce_"))
                              for s, c in sorted(ends.items())), flush=True)
    report = {"benchmark": "unimodal take-off (real signals, quick setting)", "runs": runs}
    if args.out:
        write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
