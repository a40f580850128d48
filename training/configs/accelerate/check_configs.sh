#!/usr/bin/env bash
# Runs the tiny synthetic job (three stages, LoRA stage 3) under each shipped accelerate config on this machine's
# GPUs and checks that every run's final/ model and stage-3 LoRA adapter equal the reference run's:
#   reference: ddp.yaml over all GPUs (or one plain process on a one-GPU machine);
#   then fsdp.yaml, deepspeed_zero2.yaml and deepspeed_zero3.yaml (when deepspeed is installed) over the same GPUs.
# Same processes, seed and data order, so only the sharding differs; fp32 (--mixed_precision no) for comparable
# weights. ZeRO-3 on one GPU already exercises the gather around the LoRA merge and the adapter save.
#
#   bash training/configs/accelerate/check_configs.sh            # on a GPU machine, from the repository root
#   CHECK_ON_CPU=1 bash training/configs/accelerate/check_configs.sh   # the script itself, on 2 CPU processes (DDP only)
#
# OUT (default outputs/accelerate-check) holds each run's folder and log; the last line says PASS or FAIL.
set -euo pipefail

OUT=${OUT:-outputs/accelerate-check}
CONFIGS=training/configs/accelerate
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

if [[ "${CHECK_ON_CPU:-0}" == 1 ]]; then
    # accelerate runs FSDP and DeepSpeed only on accelerators (docs/distributed.md): on CPU, DDP over 2 processes.
    export ACCELERATE_USE_CPU=1
    N=2
    DEVICE=(--use_cpu true)
else
    N=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    if [[ "$N" -lt 1 ]]; then echo "no GPU here; CHECK_ON_CPU=1 runs the CPU part"; exit 1; fi
    DEVICE=(--use_cpu false)
fi
BATCH=$((32 / N > 0 ? 32 / N : 1))
JOB=(training/run.py training/configs/synthetic_tiny.yaml "${DEVICE[@]}" --bf16 false
     --synthetic_train_size 256 --synthetic_eval_size 64 --synthetic_modalities text,vision,audio
     --stage1_num_train_epochs 1 --stage2_num_train_epochs 1 --stage3_num_train_epochs 1
     --per_device_train_batch_size "$BATCH" --save_strategy no --logging_steps 4 --dataloader_num_workers 0)

launch() {  # name, then accelerate launch arguments
    local name=$1; shift
    echo "== $name: accelerate launch $* (log: $OUT/$name.log)"
    accelerate launch "$@" --mixed_precision no "${JOB[@]}" --output_dir "$OUT/$name" > "$OUT/$name.log" 2>&1 \
        || { echo "FAIL: $name did not finish; the end of its log:"; tail -n 30 "$OUT/$name.log"; exit 1; }
}

if [[ "$N" -ge 2 ]]; then
    launch reference --config_file "$CONFIGS/ddp.yaml" --num_processes "$N"
else
    launch reference --num_processes 1 --num_machines 1 --dynamo_backend no
fi
RUNS=()
if [[ "${CHECK_ON_CPU:-0}" == 1 ]]; then
    launch ddp --config_file "$CONFIGS/ddp.yaml" --num_processes "$N"
    RUNS+=(ddp)
else
    launch fsdp --config_file "$CONFIGS/fsdp.yaml" --num_processes "$N"
    RUNS+=(fsdp)
    if "$PYTHON" -c "import deepspeed" 2> /dev/null; then
        for stage in 2 3; do
            launch "zero$stage" --config_file "$CONFIGS/deepspeed_zero$stage.yaml" --num_processes "$N"
            RUNS+=("zero$stage")
        done
    else
        echo "deepspeed is not installed: ZeRO-2/3 skipped (pip install --no-build-isolation deepspeed)"
    fi
fi

"$PYTHON" - "$OUT" "${RUNS[@]}" <<'PY'
"""Each run's final/ weights and stage-3 adapter against the reference's: the largest difference of any tensor."""
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

out, runs = Path(sys.argv[1]), sys.argv[2:]
# Atol: GPU reductions in another order (reduce-scatter against all-reduce) differ in the last bits, and three
# stages of AdamW carry that on. CHECK_TOLERANCE overrides it.
TOLERANCE = float(os.environ.get("CHECK_TOLERANCE", "1e-4"))


def tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every safetensors file under final/ and the stage folders (merged models, LoRA adapters), by relative path."""
    return {str(f.relative_to(folder)): load_file(f) for f in sorted(folder.rglob("*.safetensors"))
            if "checkpoint-" not in str(f)}


reference = tensors(out / "reference")
assert any(name.startswith("final/") for name in reference), f"no final/ weights in {out / 'reference'}"
failed = False
for run in runs:
    got = tensors(out / run)
    worst, where = 0.0, None
    for name, want in reference.items():
        if name not in got or set(got[name]) != set(want):
            print(f"FAIL {run}: {name} is missing or holds other tensors")
            failed = True
            continue
        for key, value in want.items():
            diff = (got[name][key].float() - value.float()).abs().max().item()
            if diff > worst:
                worst, where = diff, f"{name}:{key}"
    print(f"{run}: {len(reference)} files, largest difference {worst:.2e}" + (f" ({where})" if where else ""))
    failed |= worst > TOLERANCE
print("FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
PY
