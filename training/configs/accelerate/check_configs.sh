#!/usr/bin/env bash
# Runs the tiny synthetic job (three stages, LoRA stage 3) under each shipped launch config on this machine's GPUs
# (or, with CHECK_ON_CPU=1, on 2 CPU processes) and checks that every run's stage folders, final/ model and LoRA
# adapters equal its reference run's:
#   reference: ddp.yaml over all N devices (one plain process on a one-GPU machine);
#   fsdp.yaml (GPUs only), deepspeed_zero2.yaml and deepspeed_zero3.yaml over the same N devices, and ZeRO-3 with
#   every parameter partitioned (training/configs/deepspeed/zero3.json with stage3_param_persistence_threshold 0:
#   by default DeepSpeed keeps parameters under 1e5 elements, all of this tiny model's, whole on every device, and
#   the gather around the LoRA merge and the adapter save would gather nothing), against the reference;
#   zero3-1 (machines of 2 or more devices): that partitioned ZeRO-3 on one device against one plain process with the
#   same batch (on a one-GPU machine every run is one process, and zero3-partitioned is that check).
# The DeepSpeed legs run where deepspeed is installed (pip install --no-build-isolation deepspeed, after torch). All
# runs start from one saved initial model (ZeRO-3 builds a fresh model inside zero.Init, with other random values),
# with the same seed and data order, in fp32 (--mixed_precision no), so only the distribution differs.
#
#   bash training/configs/accelerate/check_configs.sh                  # on a GPU machine, from the repository root
#   CHECK_ON_CPU=1 bash training/configs/accelerate/check_configs.sh   # on 2 CPU processes: DDP, ZeRO-2, ZeRO-3
#
# OUT (default outputs/accelerate-check) holds each run's folder and log; the last line says PASS or FAIL.
set -euo pipefail

OUT=${OUT:-outputs/accelerate-check}
CONFIGS=training/configs/accelerate
PYTHON=${PYTHON:-python}
ACCELERATE=${ACCELERATE:-accelerate}
mkdir -p "$OUT"
rm -rf "${OUT:?}"/{initial,reference,single,fsdp,zero2,zero3,zero3-partitioned,zero3-1,ddp}

if [[ "${CHECK_ON_CPU:-0}" == 1 ]]; then
    # accelerate runs FSDP only on accelerators (docs/distributed.md). DeepSpeed runs on CPU processes when the
    # training arguments say --use_cpu true and the launcher is not told --cpu / ACCELERATE_USE_CPU=1 (which would
    # switch DeepSpeed off); DDP over gloo gets ACCELERATE_USE_CPU=1 (cpu_env below).
    N=2
    DEVICE=(--use_cpu true)
    TOLERANCE=${CHECK_TOLERANCE:-1e-6}
else
    N=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    if [[ "$N" -lt 1 ]]; then echo "no GPU here; CHECK_ON_CPU=1 runs the CPU part"; exit 1; fi
    DEVICE=(--use_cpu false)
    # GPU reductions in another order (reduce-scatter against all-reduce) differ in the last bits, and three stages
    # of AdamW carry that on.
    TOLERANCE=${CHECK_TOLERANCE:-1e-4}
fi
cpu_env() { if [[ "${CHECK_ON_CPU:-0}" == 1 ]]; then ACCELERATE_USE_CPU=1 "$@"; else "$@"; fi; }
HAS_DEEPSPEED=0
"$PYTHON" -c "import deepspeed" 2> /dev/null && HAS_DEEPSPEED=1
BATCH=$((32 / N > 0 ? 32 / N : 1))
DATA=(training/configs/synthetic_tiny.yaml "${DEVICE[@]}" --bf16 false
      --synthetic_train_size 256 --synthetic_eval_size 64 --synthetic_modalities text,vision,audio)
JOB=(training/run.py "${DATA[@]}" --model_name_or_path "$OUT/initial" --finetune_method lora
     --stage1_num_train_epochs 1 --stage2_num_train_epochs 1 --stage3_num_train_epochs 1
     --save_strategy no --logging_steps 4 --dataloader_num_workers 0)

# The job's model before training, built once: every run starts from it.
"$PYTHON" - "$OUT/initial" "${DATA[@]}" <<'PY'
import sys

import torch
from transformers import AutoModel

sys.path.insert(0, "training")
import run  # noqa: E402  training/run.py: its own parsing, so the model is the one the job would build

from dmil_hf.training.data import load_synthetic  # noqa: E402

model_args, data_args, args, _ = run.parse_arguments(sys.argv[2:])
_, _, config, _ = load_synthetic(data_args, model_args, args.seed)
# wav2vec2's LayerDrop (0.1) skips random layers in a step, whose parameters then get no gradient: torch's AdamW under
# DDP leaves them alone, DeepSpeed steps them with zero gradients (flat partitions), and the runs drift apart by more
# than rounding (measured on 2 CPU processes: 2e-4 under ZeRO-2, 7e-3 under ZeRO-3; 3e-7 and 4e-7 without it). Off
# here: this compares the distribution alone.
for modality in config.modalities:
    if hasattr(config.backbone_config(modality), "layerdrop"):
        config.backbone_config(modality).layerdrop = 0.0
torch.manual_seed(args.seed)
AutoModel.from_config(config).save_pretrained(sys.argv[1])
PY
# ZeRO-3 with every parameter partitioned.
"$PYTHON" - training/configs/deepspeed/zero3.json "$OUT/zero3_partitioned.json" <<'PY'
import json
import sys

config = json.load(open(sys.argv[1]))
config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
json.dump(config, open(sys.argv[2], "w"), indent=2)
PY

launch() {  # name, per-device batch, then the launcher's command line up to the script
    local name=$1 batch=$2; shift 2
    echo "== $name: $* (log: $OUT/$name.log)"
    "$@" "${JOB[@]}" --per_device_train_batch_size "$batch" --output_dir "$OUT/$name" > "$OUT/$name.log" 2>&1 \
        || { echo "FAIL: $name did not finish; the end of its log:"; tail -n 30 "$OUT/$name.log"; exit 1; }
}
ONE=(--num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)
PAIRS=()  # run:reference

if [[ "$N" -ge 2 ]]; then
    launch reference "$BATCH" cpu_env "$ACCELERATE" launch --config_file "$CONFIGS/ddp.yaml" --num_processes "$N" \
        --mixed_precision no
else
    launch reference "$BATCH" "$PYTHON"
fi
if [[ "${CHECK_ON_CPU:-0}" != 1 ]]; then
    launch fsdp "$BATCH" "$ACCELERATE" launch --config_file "$CONFIGS/fsdp.yaml" --num_processes "$N" \
        --mixed_precision no
    PAIRS+=(fsdp:reference)
fi
if [[ "$HAS_DEEPSPEED" == 1 ]]; then
    for stage in 2 3; do
        launch "zero$stage" "$BATCH" "$ACCELERATE" launch --config_file "$CONFIGS/deepspeed_zero$stage.yaml" \
            --num_processes "$N" --mixed_precision no
        PAIRS+=("zero$stage:reference")
    done
    launch zero3-partitioned "$BATCH" "$ACCELERATE" launch --use_deepspeed --deepspeed_config_file \
        "$OUT/zero3_partitioned.json" --num_processes "$N" --num_machines 1 --mixed_precision no --dynamo_backend no
    PAIRS+=(zero3-partitioned:reference)
    if [[ "$N" -ge 2 ]]; then
        # ZeRO-3 on one device (on a one-GPU machine, zero3-partitioned above is that run).
        launch single 32 "$PYTHON"
        launch zero3-1 32 "$ACCELERATE" launch --use_deepspeed --deepspeed_config_file \
            "$OUT/zero3_partitioned.json" "${ONE[@]}"
        PAIRS+=(zero3-1:single)
    fi
else
    echo "deepspeed is not installed: the ZeRO-2/3 legs are skipped (pip install --no-build-isolation deepspeed)"
fi
if [[ ${#PAIRS[@]} -eq 0 ]]; then
    # Nothing else ran (CPU without deepspeed): the script itself, DDP against DDP.
    launch ddp "$BATCH" cpu_env "$ACCELERATE" launch --config_file "$CONFIGS/ddp.yaml" --num_processes "$N" \
        --mixed_precision no
    PAIRS+=(ddp:reference)
fi

CHECK_TOLERANCE=$TOLERANCE PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - "$OUT" "${PAIRS[@]}" <<'PY'
"""Each run's stage folders, final/ and LoRA adapters against its reference's: the largest difference of any tensor.
Models are compared as from_pretrained reads them back (a stage saved under ZeRO-3 from a model loaded inside
zero.Init holds BERT's LayerNorms under their legacy names, gamma / beta, which from_pretrained maps back)."""
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from dmil_hf import DMILForMultimodalClassification

out, pairs = Path(sys.argv[1]), [pair.split(":") for pair in sys.argv[2:]]
TOLERANCE = float(os.environ["CHECK_TOLERANCE"])


def results(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    found = {}
    for name in ("stage-1", "stage-2", "stage-3", "final"):
        if (folder / name / "config.json").is_file():
            model = DMILForMultimodalClassification.from_pretrained(folder / name, dtype=torch.float32)
            found[name] = model.state_dict()
        if (folder / name / "adapter" / "adapter_model.safetensors").is_file():
            found[f"{name}/adapter"] = load_file(folder / name / "adapter" / "adapter_model.safetensors")
    return found


failed = False
for run, reference in pairs:
    want, got = results(out / reference), results(out / run)
    if "final" not in want or "final/adapter" not in want:
        print(f"FAIL: {out / reference} has no final/ model or adapter")
        failed = True
        continue
    worst, where = 0.0, None
    for name, tensors in want.items():
        if name not in got or set(got[name]) != set(tensors):
            print(f"FAIL {run}: {name} is missing or holds other tensors")
            failed = True
            continue
        for key, value in tensors.items():
            if got[name][key].shape != value.shape:
                print(f"FAIL {run}: {name}:{key} has shape {tuple(got[name][key].shape)}, not {tuple(value.shape)}")
                failed = True
                continue
            diff = (got[name][key].float() - value.float()).abs().max().item() if value.numel() else 0.0
            if diff > worst:
                worst, where = diff, f"{name}:{key}"
    print(f"{run} against {reference}: {len(want)} folders, largest difference {worst:.2e}"
          + (f" ({where})" if where else ""))
    failed |= worst > TOLERANCE
print("FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
PY
