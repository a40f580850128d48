"""LoRA for DMIL's fine-tuning stage (peft): which modules of each backbone get adapters, the heads trained fully as
`modules_to_save`, the checks that every backbone is reached by an adapter that runs, and reading an adapter back
exactly (every tensor of it, or an error)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from ..models.dmil.backbones_dmil import DIRECT_WEIGHT_READERS
from ..models.dmil.modeling_dmil import DMILForMultimodalClassification

if TYPE_CHECKING:
    from peft import PeftModel


def lora_target_regex(model: DMILForMultimodalClassification, leaf_names: list[str] | None = None) -> str:
    """A regex that peft full-matches against module names: each backbone's LoRA targets, scoped to that backbone."""
    parts = []
    for modality in model.modalities:
        names = leaf_names or model.specs[modality].lora_targets
        parts.append(rf"backbones\.{modality}\.(.*\.)?({'|'.join(map(re.escape, names))})")
    return rf"^({'|'.join(parts)})$"


def head_module_names(model: DMILForMultimodalClassification) -> list[str]:
    """Every parameterised leaf module outside the backbones: trained fully (peft `modules_to_save`) in stage 3.

    Leaves rather than the top-level containers because peft's wrapper cannot stand in for an indexed ModuleDict.
    """
    return [
        name
        for name, module in model.named_modules()
        if name
        and not name.startswith("backbones.")
        and not list(module.children())
        and any(True for _ in module.parameters(recurse=False))
    ]


def add_lora(model: DMILForMultimodalClassification, **lora_kwargs: Any) -> torch.nn.Module:
    """Wrap the model in peft LoRA: adapters on each backbone's table targets (unless `target_modules` is given),
    every head trained fully as `modules_to_save`. `lora_kwargs` go to `LoraConfig` (r, lora_alpha, ...)."""
    from peft import LoraConfig, get_peft_model

    lora_kwargs.setdefault("target_modules", lora_target_regex(model))
    lora = LoraConfig(modules_to_save=head_module_names(model), task_type=None, **lora_kwargs)
    _refuse_unreachable_targets(model, lora)
    _refuse_backbones_without_targets(model, lora)
    return get_peft_model(model, lora)


def name_adapter_base(adapter_dir: str | os.PathLike, base_model: str, revision: str | None = None) -> bool:
    """Name, in a saved adapter's `adapter_config.json`, the model it applies to: `base_model` (a Hub repo id, whose
    stage folder before the fine-tuning stage is the base; see docs/hub.md) and its `revision`, where peft recorded
    the folder the base was loaded from (`out/stage-2`, a path of this machine). peft's boilerplate card beside it,
    whose metadata names that folder too, is removed (the Hub publisher writes the adapter's own card). Returns
    whether `adapter_dir` holds an adapter. Main process.

    Rewritten after peft saved it rather than set on the peft model: with a repo id there, every adapter save (each
    checkpoint of the LoRA stage) asks the Hub whether that repo has a config.json (`save_embedding_layers="auto"`).

    `task_type` stays None, as peft's guide to custom models has it: a task type wraps the model in a task class
    (`SEQ_CLS`: `PeftModelForSequenceClassification`) that calls it with a text classifier's arguments
    (`input_ids`, `attention_mask`, `inputs_embeds`, ...) and adds the modules named `classifier` and `score` to
    `modules_to_save`, which match DMIL's `*_classifier` head modules by suffix."""
    from .run_folder import write_json_atomically

    path = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        config = json.load(f)
    config.update(base_model_name_or_path=base_model, revision=revision)
    write_json_atomically(path, config, indent=2, sort_keys=True)
    card = os.path.join(adapter_dir, "README.md")
    if os.path.isfile(card):
        os.remove(card)
    return True


def _refuse_backbones_without_targets(model: torch.nn.Module, lora: Any) -> None:
    """Raise before wrapping when a backbone has no module the LoRA targets match: in a LoRA stage it would neither
    train nor say so (a family the table lacks whose attention has other leaf names, GPT-2's `c_attn`, or
    `lora_target_modules` naming one family's leaves only); peft itself complains only when no backbone matches."""
    from peft.tuners.tuners_utils import check_target_module_exists

    backbones = getattr(model, "backbones", None) or {}
    untargeted = [
        f"{modality} ({backbone.config.model_type})"
        for modality, backbone in backbones.items()
        if not any(
            check_target_module_exists(lora, f"backbones.{modality}.{name}")
            for name, _ in backbone.named_modules() if name
        )
    ]
    if untargeted:
        raise ValueError(
            f"LoRA target_modules {lora.target_modules!r} match no module of the backbone(s) {', '.join(untargeted)}, "
            "which would then not train in the LoRA stage; give leaf names that each backbone has "
            "(lora_target_modules, or the family's lora_targets in dmil_hf.models.dmil.backbones_dmil.BACKBONES)"
        )


def _refuse_unreachable_targets(model: torch.nn.Module, lora: Any) -> None:
    """Raise before wrapping when a LoRA target is a Linear whose parent reads its weight as a tensor instead of
    calling it (`backbones_dmil.DIRECT_WEIGHT_READERS`): its adapter would train and save but never run."""
    from peft.tuners.tuners_utils import check_target_module_exists

    unreachable = [
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        for child in DIRECT_WEIGHT_READERS.get(type(module).__name__, ())
        if hasattr(module, child) and check_target_module_exists(lora, f"{name}.{child}" if name else child)
    ]
    if unreachable:
        raise ValueError(
            f"LoRA target_modules match {unreachable[:3]}{' ...' if len(unreachable) > 3 else ''}: their parent "
            "module reads their weight directly, so an adapter there would never run; target other modules (the "
            "backbone table's defaults avoid these)"
        )


def load_adapter_exactly(model: PeftModel, checkpoint: str) -> None:
    """Load a peft adapter saved by `save_pretrained` into `model` (a peft model) in place, every tensor of it, or raise
    `ValueError` naming the missing / unexpected keys."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    adapter = model.active_adapter
    result = set_peft_model_state_dict(model, load_peft_weights(checkpoint, device="cpu"), adapter_name=adapter)
    # An adapter file holds only the adapter's own tensors (LoRA factors, modules_to_save copies): every base weight
    # is "missing" by design, but none of the adapter's may be.
    missing = [key for key in result.missing_keys if f".{adapter}." in key]
    _raise_on_bad_keys(checkpoint, missing, result.unexpected_keys)


def _raise_on_bad_keys(checkpoint: str, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    problems = {kind: sorted(keys) for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys}
    if problems:
        details = "; ".join(f"{len(keys)} {kind} keys, e.g. {keys[:5]}" for kind, keys in problems.items())
        raise ValueError(
            f"checkpoint {checkpoint} does not match the model being trained ({details}); refusing to continue with "
            "part of the model left at other weights"
        )
