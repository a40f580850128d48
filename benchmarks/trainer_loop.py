#!/usr/bin/env python
"""What the training loop costs: DMIL stage 3 through `DMILTrainer` (data from a `datasets.Dataset`, the Trainer's
collator and dataloader, logging of the loss terms, the real loop) next to the bare step on the same model, batches
and math, in ONE process.

The bare step is what the loop does per batch and no more: forward, backward, gradient clipping at the Trainer's
default 1.0, AdamW and the linear schedule, on batches already on the device. The Trainer runs the same stage with
the same settings for `--steps` steps, logging every `--logging-steps`. Both are timed per step after a warm-up
(median of steady-state steps, the Trainer's through a callback), round after round, alternating, so that drift
hits both alike; `overhead` is the Trainer's median step over the bare one, minus 1. The Trainer's wall-clock
throughput, which adds its start-up and the end-of-stage save, is reported too.

    python benchmarks/trainer_loop.py --preset tiny --out bench_out/trainer_loop_tiny.json   # CPU, tiny backbones
    python benchmarks/trainer_loop.py --preset base --out bench_out/trainer_loop_base.json   # GPU, BERT/ViT/wav2vec2-base
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Array3D, Dataset, Features, Sequence, Value  # noqa: E402
from transformers import Trainer, TrainerCallback, get_linear_schedule_with_warmup  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import PRESETS, backbone_configs, environment, make_batch  # noqa: E402

from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments  # noqa: E402
from dmil_hf.training.stages import prepare_model_for_stage  # noqa: E402

NUM_LABELS = 8


def make_model(settings: dict, configs: dict) -> DMILForMultimodalClassification:
    config = DMILConfig(**configs, num_labels=NUM_LABELS, latent_dim=settings["latent_dim"], check_inputs=False)
    torch.manual_seed(0)
    return DMILForMultimodalClassification(config)


def make_dataset(settings: dict, distinct_batches: int) -> Dataset:
    """`distinct_batches` batches of the benchmark's shapes as a torch-formatted Dataset (the loop cycles over it).

    Fixed-shape columns are stored as datasets' Array types, not nested lists: formatting a batch of nested lists as
    tensors walks every value in Python (~25 ms a batch of 32 tiny samples, a third of the step)."""
    batches = [make_batch({**settings}, NUM_LABELS, torch.device("cpu")) for _ in range(distinct_batches)]
    columns = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    features = Features({
        name: Value(str(array.dtype)) if array.ndim == 1
        else Sequence(Value(str(array.dtype)), length=array.shape[1]) if array.ndim == 2
        else Array3D(shape=array.shape[1:], dtype=str(array.dtype))
        for name, array in columns.items()
    })
    return Dataset.from_dict({k: list(v) for k, v in columns.items()}, features=features).with_format("torch")


class _StepTimes(TrainerCallback):
    def __init__(self, device: torch.device):
        self.device, self.times, self._last = device, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            _sync(self.device)
            self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync(self.device)
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_arguments(
    settings: dict, steps: int, device: torch.device, output_dir: str, logging_steps: int = 10, workers: int = 0
) -> DMILTrainingArguments:
    return DMILTrainingArguments(
        output_dir=output_dir, stages="3", finetune_method="full", max_steps=steps, learning_rate=5e-5,
        per_device_train_batch_size=settings["batch_size"], logging_steps=logging_steps, save_strategy="no",
        report_to="none", disable_tqdm=True, bf16=settings["bf16"], use_cpu=device.type == "cpu",
        dataloader_num_workers=workers, dataloader_pin_memory=device.type == "cuda", seed=0,
    )


def bare_run(settings: dict, configs: dict, data: Dataset, steps: int, device: torch.device) -> list[float]:
    """The loop's math and nothing else: the same stage-3 step, clip, AdamW and schedule on device-resident batches."""
    model, _ = prepare_model_for_stage(make_model(settings, configs), 3, "full")
    model.to(device).train()
    batch_size = settings["batch_size"]
    batches = [{k: v.to(device) for k, v in data[i : i + batch_size].items()} for i in range(0, len(data), batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    # The optimizer the Trainer builds from the same arguments (AdamW, fused where torch offers it, its weight decay
    # split aside: the same kernels either way).
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_arguments(settings, steps, device, "."))
    optimizer = optimizer_cls(params, **optimizer_kwargs)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, steps)
    times = []
    for step in range(steps):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings["bf16"]):
            loss = model(**batches[step % len(batches)], stage=3).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def trainer_run(
    settings: dict, configs: dict, data: Dataset, steps: int, device: torch.device, logging_steps: int, workers: int
) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as out:
        args = training_arguments(settings, steps, device, out, logging_steps=logging_steps, workers=workers)
        trainer = DMILTrainer(model=make_model(settings, configs), args=args, train_dataset=data)
        timer = _StepTimes(device)
        trainer.add_callback(timer)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    return timer.times, steps * settings["batch_size"] / wall


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the median")
    parser.add_argument("--rounds", type=int, default=2, help="bare/Trainer pairs, alternating")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers (default: 0 on CPU, 4 on GPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    settings = dict(PRESETS[args.preset])
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    device = torch.device(args.device or settings["device"])
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    configs = backbone_configs(args.preset, settings["image_size"])
    data = make_dataset(settings, distinct_batches=4)
    bare, looped, throughput = [], [], []
    for _ in range(args.rounds):
        bare += bare_run(settings, configs, data, args.steps, device)[args.warmup :]
        times, samples_per_s = trainer_run(settings, configs, data, args.steps, device, args.logging_steps, workers)
        looped += times[args.warmup :]
        throughput.append(samples_per_s)
    bare_step, loop_step = statistics.median(bare), statistics.median(looped)
    report = {
        "preset": args.preset, "device": str(device), "batch_size": settings["batch_size"], "steps": args.steps,
        "rounds": args.rounds, "logging_steps": args.logging_steps, "dataloader_workers": workers,
        "bare_step_ms": 1e3 * bare_step, "trainer_step_ms": 1e3 * loop_step,
        "overhead": loop_step / bare_step - 1.0,
        "bare_samples_per_s": settings["batch_size"] / bare_step,
        "trainer_samples_per_s_steady": settings["batch_size"] / loop_step,
        "trainer_samples_per_s_wall": statistics.median(throughput),
        "environment": environment(str(device)),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "environment"}, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
