"""The accelerate configs in training/configs/accelerate/ (DDP, FSDP2, DeepSpeed ZeRO-2/3, multi-node) load with
accelerate's own loader and resolve, through `accelerate launch`'s own argument handling, to the environment and
plugins a launch would give the training processes; and FSDP's transformer auto-wrap finds every backbone's layers
through DMIL's `_no_split_modules`. All on CPU, without a process group: accelerate refuses FSDP on a CPU launch
(docs/distributed.md says where), so what a GPU launch would do is checked up to the model's wrapping. (DeepSpeed does
run on CPU processes: test_distributed_deepspeed.py.) Also the DeepSpeed JSONs for torchrun (training/configs/deepspeed)."""

import collections
import json
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils import launch as accelerate_launch
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

from dmil_hf import DMILConfig, DMILForMultimodalClassification, Modality
from dmil_hf.models.dmil.backbones_dmil import BACKBONES, backbone_no_split_modules, backbone_spec
from dmil_hf.models.dmil.modeling_dmil import _build_backbone
from dmil_hf.testing_utils import (
    TINY_BACKBONES,
    tiny_audio_config,
    tiny_backbone_config,
    tiny_feature_encoder_config,
    tiny_text_config,
    tiny_vision_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs" / "accelerate"
EXPECTED = {
    "ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
    "multi_node.yaml": DistributedType.MULTI_GPU,
}


def _launch_env(path: Path) -> tuple:
    """The launch arguments and the environment `accelerate launch --config_file path` gives its processes, from
    accelerate's own parser, validation and env preparation (accelerate/commands/launch.py `launch_command`)."""
    args = launch_command_parser().parse_args(["--config_file", str(path), "training/run.py", "config.yaml"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    # Port checks would make the result depend on what else this machine runs.
    with mock.patch.object(accelerate_launch, "is_port_in_use", return_value=False):
        if args.use_deepspeed:
            # Set by launch_command before it calls the DeepSpeed launcher.
            args.deepspeed_fields_from_accelerate_config = ",".join(
                [*defaults.deepspeed_config, *(["mixed_precision"] if precision_from_config else [])]
            )
            _, env = accelerate_launch.prepare_deepspeed_cmd_env(args)
        else:
            env = accelerate_launch.prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if os.environ.get(k) != v and k != "PYTHONPATH"}


def test_every_config_is_shipped_and_loads_with_accelerates_loader():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    for name, distributed_type in EXPECTED.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert isinstance(config, ClusterConfig) and config.distributed_type == distributed_type, name
        assert config.mixed_precision == "bf16" and not config.use_cpu, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_resolves_as_accelerate_launch_resolves_it(name):
    args, env = _launch_env(CONFIGS / name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    if name == "multi_node.yaml":
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, 0)
        # torchrun's per-node arguments, as accelerate hands them over.
        assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 0)
        # The main machine's address: as a rendezvous endpoint (accelerate keeps its parser's same_network=False over
        # the file's, in _validate_launch_command) or as master address and port.
        endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
        assert endpoint == "10.0.0.1:29500"
    else:
        assert (args.num_machines, args.num_processes) == (1, 8)
    if name == "fsdp.yaml":
        with mock.patch.dict(os.environ, env):
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"
        assert plugin.transformer_cls_names_to_wrap == sorted(_base_pretrained_model()._no_split_modules)
    elif name.startswith("deepspeed"):
        stage = int(name[-6])
        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()  # builds its config without deepspeed installed
        ds = plugin.deepspeed_config
        assert plugin.zero_stage == stage and ds["zero_optimization"]["stage"] == stage
        # Left to the Trainer: explicit values here would have to match the training arguments exactly.
        assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
        assert ds["gradient_clipping"] == "auto"
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)
        assert plugin.zero3_init_flag is False
    else:
        assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_for_torchrun_leaves_the_batch_sizes_to_the_trainer(stage):
    # training/configs/deepspeed/zero{2,3}.json: the Trainer's --deepspeed (torchrun, or any launcher).
    path = CONFIGS.parent / "deepspeed" / f"zero{stage}.json"
    config = json.loads(path.read_text())
    assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
    assert config["gradient_clipping"] == "auto"
    # DeepSpeed derives it (micro batch x accumulation x world size). "auto" would be filled from the training
    # arguments, and a ZeRO-3 model built before DeepSpeed's process group exists (CPU processes) is checked against a
    # world size of 1: "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size".
    assert "train_batch_size" not in config
    assert config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))  # accelerate's reading of it, without deepspeed installed
    assert plugin.zero_stage == stage


def _base_pretrained_model(audio="wav2vec2", vision="vit", text="bert"):
    """A tiny DMIL model of base_pretrained.yaml's backbone families (BERT, ViT, wav2vec2)."""
    config = DMILConfig(text_config=tiny_text_config(text), vision_config=tiny_vision_config(vision),
                        audio_config=tiny_audio_config(audio), num_labels=3, latent_dim=8)
    return DMILForMultimodalClassification(config)


def _layer_class(backbone: torch.nn.Module) -> str:
    """The backbone's transformer layer: the class of the ModuleList entries that hold an attention module (not
    wav2vec2's list of convolutions, which is as long)."""
    for module in backbone.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            if all(any("Attention" in type(m).__name__ for m in layer.modules()) for layer in module):
                return type(module[0]).__name__
    raise AssertionError(f"no list of attention layers in {type(backbone).__name__}")


def test_every_family_of_the_backbone_table_names_its_layer_class():
    assert set(TINY_BACKBONES) >= set(BACKBONES)
    for family in BACKBONES:
        kind, config = tiny_backbone_config(family)
        spec = backbone_spec(config.model_type, kind, config)
        backbone = _build_backbone(config, spec, spec.pooling)
        assert _layer_class(backbone) in backbone_no_split_modules(backbone, spec), family


@pytest.mark.parametrize("families", [("bert", "vit", "wav2vec2"), ("roberta", "clip_vision_model", "whisper")])
def test_fsdp_auto_wrap_finds_every_backbones_layers(families):
    text, vision, audio = families
    model = _base_pretrained_model(audio=audio, vision=vision, text=text)
    layers = {m: _layer_class(model.backbones[m]) for m in model.modalities}
    assert set(layers.values()) <= model._no_split_modules
    # fsdp.yaml without its explicit class list: accelerate falls back to the model's _no_split_modules.
    _, env = _launch_env(CONFIGS / "fsdp.yaml")
    env.pop("FSDP_TRANSFORMER_CLS_TO_WRAP")
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.transformer_cls_names_to_wrap is None
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = collections.Counter(type(m).__name__ for m in model.modules() if policy(m))
    for modality, layer in layers.items():
        count = sum(type(m).__name__ == layer for m in model.backbones[modality].modules())
        assert count >= 2 and wrapped[layer] == count, (modality, layer, wrapped)
    # Only backbone blocks, never DMIL's own head, projections or the backbones as a whole.
    head_modules = {id(m) for m in (*model.head.modules(), *model.projections.modules())}
    assert not any(policy(m) for m in model.modules() if id(m) in head_modules)
    assert not any(policy(model.backbones[m]) for m in model.modalities)
    # FSDP1's policy (accelerate's own set_auto_wrap_policy) resolves the same classes. (FSDP1's plugin refuses
    # sync_module_states on a CPU, accelerate/utils/dataclasses.py, so it is off here.)
    with mock.patch.dict(os.environ, {**env, "FSDP_VERSION": "1", "FSDP_SYNC_MODULE_STATES": "false"}):
        plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(model)
    assert set(plugin.transformer_cls_names_to_wrap) == model._no_split_modules


def test_no_split_modules_survive_save_and_load_and_cover_features_encoders(tmp_path):
    config = DMILConfig(modality_table=[Modality("text", "text", tiny_text_config()),
                                        Modality("facs", "features", tiny_feature_encoder_config())], num_labels=2)
    model = DMILForMultimodalClassification(config)
    assert model._no_split_modules == {"BertEmbeddings", "BertLayer", "DMILFeatureEncoderLayer"}
    model.save_pretrained(tmp_path)
    assert DMILForMultimodalClassification.from_pretrained(tmp_path)._no_split_modules == model._no_split_modules
