#!/usr/bin/env python
"""What the README's own-data recipe costs on a CPU: its python block (the example csv and the stand-in backbones of
`dmil_hf.testing_utils.save_tiny_backbones`) and its `training/run.py` command, run as the README gives them, in an
empty folder.

Two figures:
- **the step**: one stage-1 optimizer step at the recipe's batch size (8) on the model the command builds (the saved
  backbones, the own-data job's latent size, everything training as in stage 1), on the first batch of the csv,
  timed in this process after a warm-up (median), with each backbone's output length (tokens, patches, audio frames)
  and its share of the forward pass;
- **the recipe**: the README's command run as a subprocess, timed from its start to the first eval line on its
  console (`stage 1 | epoch 1 | eval: ...`, the recipe's first result) and to its end, with the seconds per
  optimizer step of each stage net of evaluation (from `log_history.json`) and the final validation accuracy.

The recipe is read from README.md (the first python block that calls `save_tiny_backbones` and the first bash block
after it that runs `training/run.py`), so the benchmark times what the README says. `--smoke` shortens the command
to two optimizer steps a stage and the step timing to two steps (seconds; the suite runs it).

    OMP_NUM_THREADS=1 python benchmarks/own_data_recipe.py --threads 1 --label after   # a row in results/
    python benchmarks/own_data_recipe.py --smoke --output /tmp/own_data_recipe.json
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "own_data_recipe.json"
# The console line of an evaluation (training/run.py's console callback): "stage 1 | epoch 1 | eval: loss ...".
EVAL_LINE = re.compile(r"\beval: ")
# --smoke: two optimizer steps a stage, no checkpoints, no loader workers (their start-up would dominate).
SMOKE_FLAGS = ["--stage1_max_steps", "2", "--stage2_max_steps", "2", "--stage3_max_steps", "2",
               "--save_strategy", "no", "--dataloader_num_workers", "0"]


def readme_recipe(readme: Path) -> tuple[str, list[str]]:
    """The own-data recipe of `readme`: the python block that calls `save_tiny_backbones` and the first bash block
    after it that runs `training/run.py` (as argv, line continuations joined)."""
    text = readme.read_text()
    for block in re.finditer(r"```python\n(.*?)```", text, re.S):
        if "save_tiny_backbones" in block.group(1) and "write_example_dataset" in block.group(1):
            for command in re.finditer(r"```bash\n(.*?)```", text[block.end():], re.S):
                argv = shlex.split(command.group(1).replace("\\\n", " "), comments=True)
                if argv[:2] == ["python", "training/run.py"]:
                    return block.group(1), argv
    raise SystemExit(f"{readme}: no python block with write_example_dataset and save_tiny_backbones followed by a "
                     "`python training/run.py` command")


def run_python_block(code: str, folder: Path) -> dict:
    """Exec the README's python block in `folder` (its paths are relative) and return its globals."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        scope: dict = {}
        exec(compile(code, "README: your own data", "exec"), scope)
        return scope
    finally:
        os.chdir(cwd)


def own_data_latent_dim() -> int:
    import yaml

    return int(yaml.safe_load((REPO / "training" / "configs" / "own_data.yaml").read_text())["latent_dim"])


def time_step(folder: Path, backbones: dict, train_csv: str, batch_size: int, steps: int, warmup: int) -> dict:
    """One stage-1 training step (forward with the stage's loss, backward, AdamW) at `batch_size` on the recipe's
    model and first batch, median seconds over `steps` after `warmup`; each backbone's output length and its share
    of the forward pass."""
    import torch

    from dmil_hf import DMILDataCollator, DMILForMultimodalClassification, DMILProcessor
    from dmil_hf.training.trainer import prepare_model_for_stage

    paths = {m: str(folder / p) for m, p in backbones.items()}
    with open(folder / train_csv) as f:
        rows = list(csv.DictReader(f))[:batch_size]
    labels = sorted({row["label"] for row in rows})
    processor = DMILProcessor.from_backbones_pretrained(**paths)
    examples = [{"text": r["text"], "image": str(folder / r["image_path"]), "audio": str(folder / r["wav_path"]),
                 "label": labels.index(r["label"])} for r in rows]
    batch = DMILDataCollator(processor)(examples)
    torch.manual_seed(0)
    model = DMILForMultimodalClassification.from_backbones_pretrained(
        **paths, num_labels=max(len(labels), 2), latent_dim=own_data_latent_dim())
    model, _ = prepare_model_for_stage(model, 1, finetune_method="full")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    # Each backbone's output length and forward time, by hooks on the backbone modules.
    backbone_modules = dict(model.backbones.named_children())
    lengths, forward_s, started = {}, {name: [] for name in backbone_modules}, {}

    def pre_hook(name):
        return lambda module, args, kwargs: started.__setitem__(name, time.perf_counter())

    def hook(name):
        def record(module, args, kwargs, output):
            forward_s[name].append(time.perf_counter() - started[name])
            hidden = getattr(output, "last_hidden_state", None)
            if hidden is not None:
                lengths[name] = int(hidden.shape[1])
        return record

    handles = [h for name, module in backbone_modules.items() for h in (
        module.register_forward_pre_hook(pre_hook(name), with_kwargs=True),
        module.register_forward_hook(hook(name), with_kwargs=True))]
    times, forward_total = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = model(**batch, stage=1)
        forward_end = time.perf_counter()
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            forward_total.append(forward_end - start)
        else:
            for name in forward_s:
                forward_s[name].clear()
    for handle in handles:
        handle.remove()
    forward = statistics.median(forward_total)
    return {
        "batch_size": batch_size, "steps": steps, "step_s": statistics.median(times), "forward_s": forward,
        "backbone_output_length": lengths,
        "backbone_forward_share": {name: round(statistics.median(s) / forward, 3) for name, s in forward_s.items() if s},
        "input_shapes": {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")},
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def time_recipe(folder: Path, argv: list[str], threads: int, extra: list[str], timeout: float) -> dict:
    """The README's command in `folder` as a subprocess: seconds to its first eval line and to its end, and what its
    run folder says (seconds per step of each stage net of evaluation, the final validation accuracy)."""
    command = [sys.executable, str(REPO / "training" / "run.py"), *argv[2:], *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "HF_HOME": str(folder / "hf_home"), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    first_eval, lines = None, []
    with subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            lines.append(line)
            if first_eval is None and EVAL_LINE.search(line):
                first_eval = time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                process.kill()
                raise SystemExit(f"the recipe ran past {timeout:.0f} s; its last lines:\n{''.join(lines[-20:])}")
        process.wait()
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"the recipe failed (exit {process.returncode}); its last lines:\n{''.join(lines[-30:])}")
    result = {"command": shlex.join(["python", "training/run.py", *argv[2:], *extra]), "first_eval_line_s": first_eval,
              "total_s": total, "first_eval_line": next((l.strip() for l in lines if EVAL_LINE.search(l)), None),
              # The per-stage table and where the results are: what the README shows of a run.
              "console_tail": [l.rstrip("\n") for l in lines[-12:]]}
    run_dir = folder / _output_dir(argv[2:] + extra)
    log_path = run_dir / "log_history.json"
    if log_path.is_file():
        result["stages"] = stage_costs(json.loads(log_path.read_text()))
    results_path = run_dir / "eval_results.json"
    if results_path.is_file():
        result["eval_accuracy"] = json.loads(results_path.read_text()).get("eval_accuracy")
    return result


def _output_dir(args: list[str]) -> str:
    """The run's output folder: the last `--output_dir` of the command, else the own-data job's."""
    import yaml

    folder = yaml.safe_load((REPO / "training" / "configs" / "own_data.yaml").read_text())["output_dir"]
    for i, arg in enumerate(args):
        if arg == "--output_dir" and i + 1 < len(args):
            folder = args[i + 1]
        elif arg.startswith("--output_dir="):
            folder = arg.split("=", 1)[1]
    return folder


def stage_costs(log: list[dict]) -> dict:
    """Per stage: its optimizer steps and seconds per step net of its evaluations (the Trainer's train_runtime
    minus the eval_runtime of the evaluations it ran; checkpoint saves stay in)."""
    costs, done = {}, 0
    for stage in sorted({e["stage"] for e in log if "stage" in e}):
        entries = [e for e in log if e.get("stage") == stage]
        summary = next((e for e in entries if "train_runtime" in e), None)
        last = max(e.get("step", 0) for e in entries)
        # The log's steps count on across the stages.
        steps, done = last - done, last
        if summary is None:
            continue
        evaluating = sum(e.get("eval_runtime", 0.0) for e in entries)
        costs[str(stage)] = {"steps": steps, "train_runtime_s": summary["train_runtime"], "eval_s": evaluating,
                             "step_s": (summary["train_runtime"] - evaluating) / steps if steps else None}
    return costs


def environment(threads: int) -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "threads": threads, "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
            "machine": platform.machine()}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="two steps a stage and two timed steps (seconds)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="torch threads here and OMP_NUM_THREADS of the recipe's process (default: $OMP_NUM_THREADS or 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 2 with --smoke)")
    parser.add_argument("--clip_seconds", type=float, default=None,
                        help="rewrite the example csv with clips this long (the README's are 0.1 s; own recordings "
                             "last seconds)")
    parser.add_argument("--skip_recipe", action="store_true", help="time the step only, not the README's command")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--workdir", type=Path, default=None, help="run in this (empty) folder and keep it")
    parser.add_argument("--label", default=None, help="a name for the row (e.g. before / after)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"append the row to this json list (default: {RESULTS.relative_to(REPO)} for a full "
                             "run, nothing with --smoke)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the recipe may run")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = args.steps or (2 if args.smoke else 10)
    code, command = readme_recipe(args.readme)
    with tempfile.TemporaryDirectory(prefix="own_data_recipe_") as scratch:
        folder = args.workdir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        scope = run_python_block(code, folder)
        setup_s = time.perf_counter() - start
        files, backbones = scope["files"], scope["backbones"]
        if args.clip_seconds is not None:
            from dmil_hf.testing_utils import write_example_dataset

            cwd = os.getcwd()
            os.chdir(folder)
            try:
                write_example_dataset(os.path.dirname(files["train"]), clip_seconds=args.clip_seconds)
            finally:
                os.chdir(cwd)
        step = time_step(folder, backbones, files["train"], batch_size=8, steps=steps, warmup=1 if args.smoke else 2)
        row = {"label": args.label, "smoke": args.smoke, "date": datetime.datetime.now(datetime.timezone.utc)
               .strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(), "environment": environment(args.threads),
               "setup_s": setup_s, "clip_seconds": args.clip_seconds or 0.1, "step": step}
        if not args.skip_recipe:
            row["recipe"] = time_recipe(folder, command, args.threads, SMOKE_FLAGS if args.smoke else [],
                                        args.timeout)
    print(f"step (stage 1, batch 8, {args.threads} thread(s)): {step['step_s']:.3f} s; backbone output lengths "
          f"{step['backbone_output_length']}; forward shares {step['backbone_forward_share']}")
    if "recipe" in row:
        recipe = row["recipe"]
        per_stage = ", ".join(f"stage {k} {v['step_s']:.3f} s/step" for k, v in recipe.get("stages", {}).items())
        print(f"recipe: first eval line after {recipe['first_eval_line_s']:.1f} s, done after "
              f"{recipe['total_s']:.1f} s ({per_stage}); eval accuracy {recipe.get('eval_accuracy')}")
    output = args.output or (None if args.smoke else RESULTS)
    if output is not None:
        rows = json.loads(output.read_text()) if output.is_file() else []
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps([*rows, row], indent=2) + "\n")
        print(f"row appended to {output}")
    return row


if __name__ == "__main__":
    main()
