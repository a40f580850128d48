"""DeepSpeed ZeRO-2 and ZeRO-3 running DMIL's three stages (LoRA stage 3) for real on CPU, with gloo.

DeepSpeed (0.19.8) has a CPU accelerator, and the Trainer runs it on CPU processes when the training arguments say
`--use_cpu true` and the launcher is not told `--cpu` (docs/distributed.md says why, by file and line). Under ZeRO-3
each parameter holds only its partition outside a forward pass, so DMILTrainer gathers the weights (accelerate's
`get_state_dict` of the engine) before it saves the adapter and merges LoRA: one process already exercises that, with
every parameter partitioned (`stage3_param_persistence_threshold: 0`; by default DeepSpeed keeps parameters under
1e5 elements, all of a tiny model's, whole on every process, and nothing would need gathering). Without the gather,
that run writes an adapter and a merged model of empty tensors and exits 0.
The runs start from one saved initial model (a model built under ZeRO-3's `zero.Init` draws other random initial
values than a plain one) and must give the plain runs' stage folders, merged model and adapter.

The DeepSpeed tests need `pip install --no-build-isolation deepspeed` (after torch) and are skipped without it; the
tests of what DMIL changed for DeepSpeed that need no DeepSpeed run everywhere.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from dmil_hf import DMILForMultimodalClassification, DMILTrainer
from dmil_hf.testing_utils import (
    import_cli,
    repo_root,
    run_cli,
    tiny_training_arguments,
    tiny_training_dataset,
    tiny_two_modality_model,
)

REPO = Path(repo_root())
BIN = Path(sys.executable).parent
ACCELERATE_CONFIGS = REPO / "training" / "configs" / "accelerate"
DEEPSPEED_CONFIGS = REPO / "training" / "configs" / "deepspeed"
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install --no-build-isolation deepspeed, after torch)",
)
# The short synthetic job of test_cli.py (2 optimizer steps a stage on 2 processes, LoRA in stage 3), from the
# default job's file (learning rates, LoRA settings, --use_cpu true) and a saved initial model.
JOB = [
    str(REPO / "training" / "configs" / "synthetic_tiny.yaml"),
    "--synthetic_train_size", "64", "--synthetic_eval_size", "32", "--synthetic_modalities", "text,vision",
    "--stage1_num_train_epochs", "1", "--stage2_num_train_epochs", "1", "--stage3_num_train_epochs", "1",
    "--save_strategy", "no", "--logging_steps", "2", "--finetune_method", "lora", "--use_cpu", "true",
]
# fp32 on CPU: DeepSpeed's reductions against DDP's / one process's differ in the last bits at most (measured: 3e-8).
TOLERANCE = 1e-6


def _accelerate(config: str, processes: int, port: int) -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIGS / config), "--num_processes",
            str(processes), "--mixed_precision", "no", "--main_process_port", str(port)]


def _partitioned_zero3(folder: Path) -> str:
    """training/configs/deepspeed/zero3.json with every parameter partitioned, whatever its size."""
    config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = folder / "zero3_partitioned.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def initial_model(tmp_path_factory) -> str:
    """The job's model before training, saved: every run starts from it (`--model_name_or_path`)."""
    run = import_cli()
    from dmil_hf.training.data import load_synthetic

    model_args, data_args, training_args, _ = run.parse_arguments(JOB)
    _, _, config, _ = load_synthetic(data_args, model_args, training_args.seed)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("deepspeed") / "initial"
    AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def _results(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every stage folder's and final/'s model, as `from_pretrained` reads it back, and every LoRA adapter's tensors.
    (A stage saved under ZeRO-3 from a model loaded inside zero.Init holds BERT's LayerNorms under their legacy names,
    gamma / beta, which from_pretrained maps back: the models are compared as loaded, not as files.)"""
    results = {}
    for name in ("stage-1", "stage-2", "stage-3", "final"):
        model = DMILForMultimodalClassification.from_pretrained(folder / name, dtype=torch.float32)
        results[name] = model.state_dict()
        if (folder / name / "adapter").is_dir():
            results[f"{name}/adapter"] = load_file(folder / name / "adapter" / "adapter_model.safetensors")
    return results


def _assert_same_results(got: Path, want: Path) -> None:
    got_results, want_results = _results(got), _results(want)
    assert set(got_results) == set(want_results) == {"stage-1", "stage-2", "stage-3", "final", "stage-3/adapter",
                                                     "final/adapter"}
    for name, tensors in want_results.items():
        assert set(got_results[name]) == set(tensors), name
        for key, value in tensors.items():
            torch.testing.assert_close(got_results[name][key], value, rtol=0, atol=TOLERANCE, msg=f"{name}: {key}")


def _deepspeed_processes(stdout: str) -> int:
    """How many processes of a run started DeepSpeed's communication layer: on CPU each one builds (or loads) its
    shared-memory op and says so on stdout; a DDP run, or one where accelerate switched DeepSpeed off, says nothing.
    (final/ keeps the training arguments as JSON, without the DeepSpeed plugin or the world size.)"""
    return stdout.count("deepspeed_shm_comm_op built successfully")


# ------------------------------------------------------------------ without DeepSpeed


def test_a_stages_random_draws_do_not_depend_on_how_its_start_was_loaded(tmp_path, monkeypatch):
    # Under ZeRO-3, from_pretrained builds the model inside deepspeed.zero.Init, which draws random numbers while it
    # loads (a plain load draws none): the stage's seed is set once its start is loaded, so its LoRA init and dropout
    # are those of a plain run.
    def train(folder):
        trainer = DMILTrainer(model=tiny_two_modality_model(), args=tiny_training_arguments(folder),
                              train_dataset=tiny_training_dataset())
        trainer.train()
        return trainer.model.state_dict()

    plain = train(tmp_path / "plain")
    load = DMILForMultimodalClassification.from_pretrained.__func__

    def load_drawing_random_numbers(cls, *args, **kwargs):
        model = load(cls, *args, **kwargs)
        torch.rand(1000)
        return model

    monkeypatch.setattr(DMILForMultimodalClassification, "from_pretrained", classmethod(load_drawing_random_numbers))
    drawing = train(tmp_path / "drawing")
    assert set(drawing) == set(plain)
    for key, value in plain.items():
        torch.testing.assert_close(drawing[key], value, rtol=0, atol=0, msg=key)


def test_every_process_builds_the_model_together_under_zero3(tmp_path):
    # ZeRO-3's zero.Init partitions each parameter as it is created, a collective: run.py builds the model in
    # main_process_first (the main process first, the others at a barrier) except under ZeRO-3.
    # accelerate's HfDeepSpeedConfig (transformers' own subclass wants deepspeed installed), registered with
    # transformers as the Trainer's is.
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    run = import_cli()
    args = tiny_training_arguments(tmp_path)
    assert not isinstance(run.data_preparation(args), contextlib.nullcontext)
    for stage, together in ((2, False), (3, True)):
        registered = HfDeepSpeedConfig({"zero_optimization": {"stage": stage}})
        set_hf_deepspeed_config(registered)
        try:
            assert isinstance(run.data_preparation(args), contextlib.nullcontext) is together, stage
        finally:
            unset_hf_deepspeed_config()


# ------------------------------------------------------------------ DeepSpeed on CPU


@needs_deepspeed
def test_zero3_on_one_process_gives_the_plain_runs_stages_merged_model_and_adapter(tmp_path, initial_model):
    job = [*JOB, "--model_name_or_path", initial_model, "--per_device_train_batch_size", "32"]
    run_cli([*job, "--output_dir", str(tmp_path / "plain")], tmp_path)
    # accelerate's DeepSpeed launch with a DeepSpeed config file.
    launcher = (str(BIN / "accelerate"), "launch", "--use_deepspeed", "--deepspeed_config_file",
                _partitioned_zero3(tmp_path), "--num_processes", "1", "--mixed_precision", "no",
                "--main_process_port", "29601")
    out = run_cli([*job, "--output_dir", str(tmp_path / "zero3")], tmp_path, launcher=launcher, timeout=500)
    assert "per-stage results" in out and _deepspeed_processes(out) == 1
    _assert_same_results(tmp_path / "zero3", tmp_path / "plain")
    # Resuming the finished run loads every stage (whole: no engine holds them) and writes final/ again.
    shutil.rmtree(tmp_path / "zero3" / "final")
    run_cli([*job, "--output_dir", str(tmp_path / "zero3"), "--resume_from_checkpoint", "true"], tmp_path,
            launcher=launcher, timeout=500)
    _assert_same_results(tmp_path / "zero3", tmp_path / "plain")


@needs_deepspeed
def test_zero2_and_zero3_on_two_cpu_processes_give_the_ddp_runs_results(tmp_path, initial_model, monkeypatch):
    job = [*JOB, "--model_name_or_path", initial_model, "--per_device_train_batch_size", "16"]
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # DDP over gloo
    out = run_cli([*job, "--output_dir", str(tmp_path / "ddp")], tmp_path, timeout=500,
                  launcher=(str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29602"))
    assert _deepspeed_processes(out) == 0
    # ACCELERATE_USE_CPU=1 would switch DeepSpeed off (AcceleratorState: DeepSpeed only `and not cpu`).
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    # ZeRO-2 through accelerate's config file, ZeRO-3 through torchrun and the Trainer's --deepspeed JSON.
    outputs = {
        "zero2": run_cli([*job, "--output_dir", str(tmp_path / "zero2")], tmp_path, timeout=500,
                         launcher=(*_accelerate("deepspeed_zero2.yaml", 2, 29603),)),
        "zero3": run_cli([*job, "--deepspeed", _partitioned_zero3(tmp_path), "--output_dir", str(tmp_path / "zero3")],
                         tmp_path, timeout=500,
                         launcher=(str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29604")),
    }
    for name, out in outputs.items():
        assert _deepspeed_processes(out) == 2, name
        _assert_same_results(tmp_path / name, tmp_path / "ddp")


@needs_deepspeed
def test_zero3_without_whole_model_saves_is_refused_before_training(tmp_path):
    # Without them a ZeRO-3 stage would leave only DeepSpeed's sharded checkpoint, and the next stage nothing to load.
    cmd = [*_accelerate("deepspeed_zero3.yaml", 1, 29605), "--zero3_save_16bit_model", "false",
           str(REPO / "training" / "run.py"), *JOB, "--output_dir", str(tmp_path / "run")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert done.returncode != 0
    assert "DeepSpeed ZeRO-3 needs whole-model saves" in done.stderr + done.stdout
    assert not (tmp_path / "run" / "stage-1").exists()
