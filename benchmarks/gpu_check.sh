#!/usr/bin/env bash
# Every GPU measurement of the speed issue, in one run of under 8 minutes on one H100/H200 (base preset: BERT-base +
# ViT-B/16 + wav2vec2-base, random init, B=128, bf16 autocast). Writes one JSON per measurement to $OUT (the device
# tool's output folder) or bench_out/gpu, and a summary.json of the ratios and throughputs the README's speed table
# reads:
#   speed_eager.json        DMIL vs joint, every training variant and inference, eager
#   speed_fast_paths.json   the same with DMILConfig.fast_paths=positional_conv_unfold (that lever alone)
#   speed_compile.json      the same under torch.compile (that lever alone; compile time in warmup_s)
#   speed_compile_fast.json both levers
#   trainer_loop.json       stage 3 through DMILTrainer vs the bare step (the loop's overhead)
# Each step has its own time limit, so that a compile that hangs costs its slot and not the run.
#   bash benchmarks/gpu_check.sh            (on the GPU machine, from the repository root)
#   DRY_RUN=1 bash benchmarks/gpu_check.sh  (a CPU dry run of the same plumbing: tiny preset, one step, no compile;
#                                            the test suite runs it, tests/benchmarks/test_benchmark_scripts.py)
# The exit status is 1 when a measurement failed (its JSON is then "missing" in summary.json).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_out/gpu}"
mkdir -p "$OUT"
PY="${PY:-python}"
PRESET="${PRESET:-base}"  # PRESET=tiny: a CPU smoke run of the same plumbing
COMPILE=(--compile)
SIZE=()  # appended to every measurement's arguments: the last value of an option wins
if [ "${DRY_RUN:-0}" = 1 ]; then
    PRESET=tiny
    COMPILE=()
    SIZE=(--device cpu --batch-size 4 --steps 2 --warmup 1 --rounds 1)
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
"$PY" -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" \
    > "$OUT/versions.txt" 2>&1
if ! "$PY" -c "import dmil_hf" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps -e . > "$OUT/install.log" 2>&1 || true
fi
start=$(date +%s)
failed=0
run() {  # run NAME LIMIT_S ARGS...: one measurement, its log next to its JSON
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s, t=$(( $(date +%s) - start ))s)"
    timeout "$limit" "$PY" "$@" "${SIZE[@]}" > "$OUT/$name.log" 2>&1
    local rc=$?
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    echo "   rc=$rc"; tail -n 12 "$OUT/$name.log"
}
TRAIN=train_joint,train_stage1,train_stage3_full,train_joint_lora,train_stage3_lora,infer_joint,infer_dmil
run speed_eager 100 benchmarks/speed.py --preset "$PRESET" --variants "$TRAIN" --out "$OUT/speed_eager.json"
run speed_fast_paths 90 benchmarks/speed.py --preset "$PRESET" --variants "$TRAIN" --fast-paths positional_conv_unfold \
    --out "$OUT/speed_fast_paths.json"
run speed_compile 150 benchmarks/speed.py --preset "$PRESET" "${COMPILE[@]}" --rounds 2 \
    --variants train_joint,train_stage3_full,train_stage3_lora,train_joint_lora,infer_joint,infer_dmil \
    --out "$OUT/speed_compile.json"
run trainer_loop 80 benchmarks/trainer_loop.py --preset "$PRESET" --steps 120 --warmup 20 --rounds 1 \
    --out "$OUT/trainer_loop.json"
run speed_compile_fast 60 benchmarks/speed.py --preset "$PRESET" "${COMPILE[@]}" --rounds 1 \
    --fast-paths positional_conv_unfold --variants train_joint,train_stage3_full,infer_dmil --out "$OUT/speed_compile_fast.json"
"$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
summary = {}
for name in ("speed_eager", "speed_fast_paths", "speed_compile", "speed_compile_fast", "trainer_loop"):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        summary[name] = "missing (see its .log)"
        continue
    report = json.load(open(path))
    if name == "trainer_loop":
        summary[name] = {k: report[k] for k in ("overhead", "bare_samples_per_s", "trainer_samples_per_s_steady",
                                                 "trainer_samples_per_s_wall")}
    else:
        summary[name] = {
            "ratios": report["ratios"],
            "samples_per_s": {k: round(v["samples_per_s"], 1) for k, v in report["variants"].items()},
            "warmup_s": {k: round(v["warmup_s"], 1) for k, v in report["variants"].items()},
        }
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=1))
EOF
echo "total $(( $(date +%s) - start ))s; results in $OUT; $failed measurement(s) failed"
[ "$failed" -eq 0 ]
