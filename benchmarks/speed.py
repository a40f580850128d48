#!/usr/bin/env python
"""DMIL's cost against the joint baseline on the same backbones and batch, measured in ONE process.

Variants, interleaved round by round so that drift (thermal, other load) hits them alike:
  train_joint          joint baseline, full fine-tuning (forward, backward, AdamW step)
  train_joint_lora     joint baseline with LoRA on the backbones (context for the LoRA ratio)
  train_stage1         DMIL stage 1 (backbones + level 1)
  train_stage2         DMIL stage 2 as the default runs it: level 2, with the encoders training on the unimodal CEs
                       (`stage2_modality_weight`)
  train_stage2_frozen  DMIL stage 2 with the encoders frozen (`stage2_modality_weight=0`, the reference's stage 2)
  train_stage3_lora    DMIL stage 3, backbones through LoRA, all heads and losses on
  train_stage3_full    DMIL stage 3, everything trainable
  infer_joint / infer_dmil   eval-mode forward under torch.inference_mode

Each variant's figure is the median step time over all timed steps after a warm-up. `ratios` are DMIL's time
over the joint baseline's (train: over full joint training; inference: over joint inference). On CUDA the run
also reports achieved TFLOP/s (FLOPs counted once per variant with torch.utils.flop_counter) and peak memory.

    python benchmarks/speed.py --preset tiny --out bench_out/speed_tiny.json      # CPU, tiny backbones
    python benchmarks/speed.py --preset base --out bench_out/speed_base.json      # GPU: BERT-base + ViT-B/16 + wav2vec2-base
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init only: nothing may touch the network

import torch  # noqa: E402
from transformers import BertConfig, ViTConfig, Wav2Vec2Config  # noqa: E402

from dmil_hf import DMILConfig, DMILForMultimodalClassification  # noqa: E402
from dmil_hf.testing_utils import tiny_audio_config, tiny_text_config, tiny_vision_config  # noqa: E402
from dmil_hf.training import add_lora, prepare_model_for_stage  # noqa: E402

PRESETS = {
    "tiny": dict(
        device="cpu", batch_size=32, seq_len=16, image_size=16, num_samples=1600, latent_dim=32, bf16=False,
        warmup=3, steps=10, rounds=5,
    ),
    "base": dict(
        device="cuda", batch_size=128, seq_len=128, image_size=224, num_samples=16000, latent_dim=64, bf16=True,
        warmup=5, steps=10, rounds=3,
    ),
}
TRAIN_VARIANTS = ("train_joint", "train_joint_lora", "train_stage1", "train_stage2", "train_stage2_frozen",
                  "train_stage3_lora", "train_stage3_full")
# What a variant changes in DMIL's default config.
VARIANT_CONFIG = {"train_stage2_frozen": {"stage2_modality_weight": 0.0}}
INFER_VARIANTS = ("infer_joint", "infer_dmil")


def backbone_configs(preset: str, image_size: int) -> dict:
    if preset == "tiny":
        return dict(text_config=tiny_text_config(), vision_config=tiny_vision_config(image_size=image_size),
                    audio_config=tiny_audio_config())
    return dict(
        text_config=BertConfig(),  # bert-base-uncased shape, random init
        vision_config=ViTConfig(image_size=image_size, patch_size=16),  # ViT-B/16
        audio_config=Wav2Vec2Config(mask_time_prob=0.0),  # wav2vec2-base shape
    )


def make_batch(settings: dict, num_labels: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    b = settings["batch_size"]
    batch = {
        "input_ids": torch.randint(3, 1000 if settings["seq_len"] > 16 else 99, (b, settings["seq_len"]), generator=g),
        "attention_mask": torch.ones(b, settings["seq_len"], dtype=torch.long),
        "pixel_values": torch.randn(b, 3, settings["image_size"], settings["image_size"], generator=g),
        "input_values": torch.randn(b, settings["num_samples"], generator=g),
        "labels": torch.randint(0, num_labels, (b,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


class Variant:
    """One model + optimizer + the step it times."""

    def __init__(self, name: str, settings: dict, configs: dict, device: torch.device, compile_model: bool, check_inputs: bool):
        self.name, self.train = name, name.startswith("train_")
        paradigm = "joint" if "joint" in name else "dmil"
        config = DMILConfig(**configs, paradigm=paradigm, num_labels=8, latent_dim=settings["latent_dim"],
                            check_inputs=check_inputs, fast_paths=settings.get("fast_paths", ()),
                            **VARIANT_CONFIG.get(name, {}))
        torch.manual_seed(0)
        model = DMILForMultimodalClassification(config).to(device)
        self.stage = {"train_stage1": 1, "train_stage2": 2, "train_stage2_frozen": 2}.get(name, 3)
        self.frozen: list[torch.nn.Module] = []
        if name.endswith("_lora"):
            if paradigm == "joint":  # the trainer gives baselines no LoRA stage; the benchmark wraps it the same way
                model = add_lora(model, r=8, lora_alpha=16)
            else:
                model, self.frozen = prepare_model_for_stage(model, 3, "lora", {"r": 8, "lora_alpha": 16})
        elif self.train:
            model, self.frozen = prepare_model_for_stage(model, self.stage, "full")
        self.model = model.train(self.train)
        for module in self.frozen:
            module.eval()
        self.forward = torch.compile(model) if compile_model else model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = (
            torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda") if self.train else None
        )
        self.trainable = sum(p.numel() for p in params)
        self.device, self.bf16 = device, settings["bf16"]
        self.times: list[float] = []
        self.flops: int | None = None
        self.peak_mem_gb: float | None = None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, batch: dict, no_grad=torch.inference_mode) -> None:
        if self.train:
            with self.autocast():
                loss = self.forward(**batch, stage=self.stage).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with no_grad(), self.autocast():
                self.forward(**inputs)

    def count_flops(self, batch: dict) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            # no_grad, not inference_mode: FlopCounterMode under inference_mode cannot read weight-norm
            # parametrised convolutions (wav2vec2). The FLOPs are the same.
            self.step(batch, no_grad=torch.no_grad)
        self.flops = counter.get_total_flops()


def profile_variant(variant: "Variant", batch: dict, top: int = 6) -> dict:
    """Operator count and the operators with the most self time in one step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if variant.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        variant.step(batch)
        synchronize(variant.device)
    events = prof.key_averages()
    device_time = "self_device_time_total" if variant.device.type == "cuda" else "self_cpu_time_total"
    ranked = sorted(events, key=lambda e: getattr(e, device_time), reverse=True)[:top]
    return {
        "op_calls": sum(e.count for e in events if e.key.startswith("aten::")),
        "top_ops": [{"op": e.key, "calls": e.count, "self_ms": getattr(e, device_time) / 1e3} for e in ranked],
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(settings: dict, preset: str, compile_model: bool, check_inputs: bool, profile: bool = False) -> dict:
    device = torch.device(settings["device"])
    configs = backbone_configs(preset, settings["image_size"])
    batch = make_batch(settings, 8, device)
    names = settings.get("variants") or TRAIN_VARIANTS + INFER_VARIANTS
    variants = [Variant(n, settings, configs, device, compile_model, check_inputs) for n in names]
    for v in variants:  # warm-up (and compilation) outside the timed rounds
        synchronize(device)
        start = time.perf_counter()
        for _ in range(settings["warmup"]):
            v.step(batch)
        synchronize(device)
        v.warmup_s = time.perf_counter() - start  # under --compile: the compile time, plus warmup steps
        if not compile_model:
            v.count_flops(batch)
    synchronize(device)
    for _ in range(settings["rounds"]):
        for v in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for _ in range(settings["steps"]):
                synchronize(device)
                start = time.perf_counter()
                v.step(batch)
                synchronize(device)
                v.times.append(time.perf_counter() - start)
            if device.type == "cuda":
                v.peak_mem_gb = max(v.peak_mem_gb or 0.0, torch.cuda.max_memory_allocated() / 2**30)
    results = {}
    for v in variants:
        median = statistics.median(v.times)
        results[v.name] = {
            "median_step_s": median,
            "samples_per_s": settings["batch_size"] / median,
            "trainable_params": v.trainable,
            "flops_per_step": v.flops,
            "tflops": v.flops / median / 1e12 if v.flops else None,
            "peak_mem_gb": v.peak_mem_gb,
            "warmup_s": v.warmup_s,
        }
    if profile:
        for v in variants:
            results[v.name]["profile"] = profile_variant(v, batch)
    t = {k: r["median_step_s"] for k, r in results.items()}
    pairs = {
        "train_stage1": ("train_stage1", "train_joint"),
        "train_stage2": ("train_stage2", "train_joint"),
        "train_stage2_frozen": ("train_stage2_frozen", "train_joint"),
        "train_stage3_lora": ("train_stage3_lora", "train_joint"),
        "train_stage3_full": ("train_stage3_full", "train_joint"),
        "inference": ("infer_dmil", "infer_joint"),
        "train_stage3_lora_vs_joint_lora": ("train_stage3_lora", "train_joint_lora"),
    }
    ratios = {name: t[a] / t[b] for name, (a, b) in pairs.items() if a in t and b in t}
    return {"variants": results, "ratios": ratios}


def environment(device: str) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "machine": platform.machine()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"\npreset {report['preset']} on {report['environment'].get('gpu', 'CPU')}: batch {s['batch_size']}, "
          f"bf16 {s['bf16']}, compile {report['compile']}, {s['rounds']}x{s['steps']} timed steps per variant")
    print("| variant | median step (ms) | samples/s | TFLOP/s | peak mem (GiB) | trainable params |")
    print("|---|---|---|---|---|---|")
    for name, r in report["variants"].items():
        tf = f"{r['tflops']:.1f}" if r["tflops"] is not None and report["settings"]["device"] == "cuda" else "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        print(f"| {name} | {1e3 * r['median_step_s']:.2f} | {r['samples_per_s']:.0f} | {tf} | {mem} | {r['trainable_params']:,} |")
    print("\nratios (DMIL time / joint time): " + ", ".join(f"{k} {v:.3f}" for k, v in report["ratios"].items()))


def print_profile(report: dict) -> None:
    print("\nprofile of one step: aten operator calls, and the operators with the most self time")
    for name, r in report["variants"].items():
        p = r["profile"]
        top = ", ".join(f"{o['op']} {o['self_ms']:.1f} ms ({o['calls']}x)" for o in p["top_ops"])
        print(f"- {name}: {p['op_calls']} op calls; {top}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--device", default=None, help="override the preset's device (e.g. a CPU smoke run of 'base')")
    parser.add_argument("--variants", type=lambda v: tuple(v.split(",")), default=None,
                        help=f"comma-separated subset of {','.join(TRAIN_VARIANTS + INFER_VARIANTS)}")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--fast-paths", type=lambda v: tuple(x for x in v.split(",") if x), default=None,
                        help="DMILConfig.fast_paths for every variant, e.g. positional_conv_unfold")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step per variant: operator calls and the top operators by self time")
    parser.add_argument("--check-inputs", action="store_true",
                        help="keep the NaN/label-range input checks on (one host sync per step; same for both paradigms)")
    args = parser.parse_args(argv)
    unknown = set(args.variants or ()) - set(TRAIN_VARIANTS + INFER_VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {TRAIN_VARIANTS + INFER_VARIANTS}")
    settings = dict(PRESETS[args.preset])
    for key in ("batch_size", "steps", "rounds", "warmup", "device", "variants", "fast_paths"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit(f"preset {args.preset!r} needs a CUDA GPU; use --preset tiny on CPU")
    if settings["device"] == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report = {"preset": args.preset, "settings": settings, "compile": args.compile, "check_inputs": args.check_inputs,
              "environment": environment(settings["device"])}
    report.update(run(settings, args.preset, args.compile, args.check_inputs, args.profile))
    print_table(report)
    if args.profile:
        print_profile(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
