"""FSDP on two CPU processes through `accelerate launch`: what Accelerate does with it, and DMILTrainer under FSDP2.

Accelerate 1.15 has no FSDP on CPU. `AcceleratorState` turns ACCELERATE_USE_FSDP into `DistributedType.FSDP` only from
an accelerator's multi-process type (MULTI_GPU, MULTI_XPU, ...), never from MULTI_CPU, so a CPU (gloo) launch with an
FSDP config trains with DDP and says nothing (FSDP1 stops earlier: its plugin wants a CUDA/XPU/... device for
`sync_module_states`). `test_accelerate_runs_an_fsdp_launch_on_cpu_as_ddp` pins that; two-process CPU DDP itself is
tested in test_cli.py.

torch's FSDP2 (`fully_shard`) does run on a CPU gloo mesh. `test_dmil_stages_under_fsdp2_on_two_cpu_processes` hands
Accelerate's own FSDP plugin back to the CPU run (a test shim of a few lines, `SHIM` below) so that Accelerate's FSDP2
code (`fully_shard` per layer, `get_state_dict`) and the Trainer's FSDP branches run DMILTrainer's three stages, LoRA
stage 3 included, and checks the result against the same run under DDP.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from dmil_hf import DMILForMultimodalClassification, DMILTrainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "training", "run.py")
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")
# The short synthetic run of test_cli.py (every stage, 2 optimizer steps each on 2 processes), LoRA in stage 3.
SHORT = [
    "--synthetic_train_size", "64", "--synthetic_eval_size", "32", "--synthetic_modalities", "text,vision",
    "--stage1_num_train_epochs", "1", "--stage2_num_train_epochs", "1", "--stage3_num_train_epochs", "1",
    "--per_device_train_batch_size", "16", "--save_strategy", "no", "--logging_steps", "2",
    "--finetune_method", "lora",
]
# An FSDP2 accelerate config: each BERT and ViT layer its own shard unit (DMIL has no _no_split_modules, so without
# the layer classes only the whole model and the embeddings would be), sharded state dicts (Accelerate's default).
FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
dynamo_config: {{}}
main_process_port: {port}
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: BertLayer,ViTLayer
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_reshard_after_forward: true
  fsdp_offload_params: false
  fsdp_cpu_ram_efficient_loading: false
"""
# Runs the script named by its first argument with Accelerate's FSDP plugin kept on a CPU run, and prints (main
# process) which modules the Trainer's `accelerator.prepare` sharded.
SHIM = '''\
import runpy, sys
from accelerate import Accelerator, state
from torch.distributed.fsdp import FSDPModule
from torch.nn import Module

_init, _plugin = state.AcceleratorState.__init__, []

def init(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    _plugin[:] = [fsdp_plugin] if fsdp_plugin is not None else _plugin
    # Each AcceleratorState() copies PartialState's type (MULTI_CPU) again: route it every time.
    if self.distributed_type == state.DistributedType.MULTI_CPU and _plugin:
        self.distributed_type, self.fsdp_plugin = state.DistributedType.FSDP, _plugin[0]

_prepare = Accelerator.prepare

def prepare(self, *objects, **kwargs):
    result = _prepare(self, *objects, **kwargs)
    for obj in objects:
        if isinstance(obj, Module) and self.is_main_process:  # fully_shard works in place
            names = sorted({type(m).__name__ for m in obj.modules() if isinstance(m, FSDPModule)})
            print("sharded:", names, flush=True)
    return result

state.AcceleratorState.__init__, Accelerator.prepare = init, prepare
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''
PROBE = """\
import torch
from accelerate import Accelerator

accelerator = Accelerator()
model = accelerator.prepare(torch.nn.Linear(4, 2))
print(f"rank {accelerator.process_index}/{accelerator.num_processes}: {accelerator.distributed_type} "
      f"fsdp_plugin={getattr(accelerator.state, 'fsdp_plugin', None) is not None} {type(model).__name__};", flush=True)
"""

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo on CPU is exercised on Linux CI")


def launch(tmp_path, launcher, script, args=(), cpu=True, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO, "HF_HOME": str(tmp_path / "hf_home"),
           "OMP_NUM_THREADS": "1"}
    # `use_cpu: true` in an FSDP config does not reach the processes (measured): Accelerate reads the environment.
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return subprocess.run([ACCELERATE, "launch", *launcher, *script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path))


def fsdp_launcher(tmp_path, port):
    config = tmp_path / f"fsdp-{port}.yaml"
    config.write_text(FSDP_CONFIG.format(port=port))
    return ["--config_file", str(config)]


def check(done):
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_accelerate_runs_an_fsdp_launch_on_cpu_as_ddp(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    out = check(launch(tmp_path, fsdp_launcher(tmp_path, 29563), [str(tmp_path / "probe.py")]))
    # Two processes print at once: their lines can run together.
    reports = sorted(re.findall(r"rank \d/\d: \S+ fsdp_plugin=\w+ \w+;", out))
    # If this fails because the run is sharded, Accelerate has learnt FSDP on CPU: drop SHIM below and the README's
    # "no FSDP on CPU" paragraph.
    assert reports == [
        f"rank {rank}/2: DistributedType.MULTI_CPU fsdp_plugin=False DistributedDataParallel;" for rank in (0, 1)
    ], out


@pytest.mark.xfail(
    not hasattr(DMILTrainer, "_gathered_model"), run=False,
    reason="DMILTrainer saves the stages of a sharded model with Trainer.save_model (nothing under a "
           "SHARDED_STATE_DICT) and merges and saves LoRA on the sharded model",
)
def test_dmil_stages_under_fsdp2_on_two_cpu_processes(tmp_path):
    from safetensors.torch import load_file

    from dmil_hf.data import SyntheticInteractionSpec, make_interaction_splits, model_columns

    (tmp_path / "shim.py").write_text(SHIM)
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    out = check(launch(tmp_path, fsdp_launcher(tmp_path, 29564), [str(tmp_path / "shim.py"), RUN],
                       [*SHORT, "--output_dir", str(fsdp)]))
    # Every stage's model went through fully_shard, per BERT and ViT layer (stage 3: the peft model).
    sharded = [line for line in out.splitlines() if line.startswith("sharded:")]
    assert len(sharded) == 3 and all("'FSDPBertLayer'" in line and "'FSDPViTLayer'" in line for line in sharded), out
    assert "'FSDPPeftModel'" in sharded[2] and "per-stage results" in out
    for stage in (1, 2, 3):
        marker = json.loads((fsdp / f"stage-{stage}" / "dmil_stage.json").read_text())
        assert marker["stage"] == stage and (fsdp / f"stage-{stage}" / "model.safetensors").is_file()
    assert (fsdp / "stage-3" / "adapter" / "adapter_model.safetensors").is_file()
    final = fsdp / "final"
    # Saved as the model's own class: FSDP2 swaps in a generated subclass (FSDPDMILForMultimodalClassification).
    auto_map = json.loads((final / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_dmil.DMILForMultimodalClassification"
    assert (final / "modeling_dmil.py").is_file() and not list(final.glob("_fsdp*.py"))
    # 64 samples, 16 per device, 2 processes: 2 optimizer steps per stage (one process would take 4).
    assert json.loads((fsdp / "stage-1" / "dmil_stage.json").read_text())["global_step"] == 2
    assert json.loads((final / "training_args.json").read_text())["per_device_train_batch_size"] == 16
    assert not (final / "training_args.bin").exists()  # no pickle in final/

    model, info = DMILForMultimodalClassification.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    spec = SyntheticInteractionSpec(modalities=("text", "vision"))
    batch = make_interaction_splits(4, 4, spec=spec)["test"].with_format("torch")[:]
    with torch.no_grad():
        logits = model.eval()(**{c: batch[c] for c in model_columns(spec) if c != "labels"}).logits
    assert logits.shape == (4, model.config.num_labels) and torch.isfinite(logits).all()

    # The same run under DDP: same data order and steps, so the same model up to float summation order.
    check(launch(tmp_path, ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", "--main_process_port", "29565"], [RUN],
                 [*SHORT, "--output_dir", str(ddp)]))
    for name in ("final/model.safetensors", "stage-3/adapter/adapter_model.safetensors"):
        expected, got = load_file(ddp / name), load_file(fsdp / name)
        assert expected.keys() == got.keys(), name
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.xfail(
    not hasattr(DMILTrainer, "_check_distribution"), run=False,
    reason="without the check, the two processes train alone and race on output_dir",
)
def test_launch_without_cpu_flag_is_refused(tmp_path):
    # Without ACCELERATE_USE_CPU / --use_cpu true, Accelerate sets up no distribution on a machine without GPUs:
    # each of the two processes is a "main process" training alone. (The default job, the base of these flags, says
    # `use_cpu: true`; --use_cpu false takes it back.)
    done = launch(tmp_path, fsdp_launcher(tmp_path, 29566), [RUN],
                  [*SHORT, "--use_cpu", "false", "--output_dir", str(tmp_path / "out")], cpu=False)
    assert done.returncode != 0 and "launched as 2 processes, but Accelerate set up 1" in done.stderr
    assert not (tmp_path / "out" / "stage-1").exists()
