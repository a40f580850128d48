"""What trains in a stage: `prepare_model_for_stage` freezes what the paradigm's stage table
(`models/dmil/stages_dmil.py`) leaves out and wraps the model in LoRA for a LoRA fine-tuning stage."""

from __future__ import annotations

from typing import Any

import torch

from ..models.dmil.modeling_dmil import DMILForMultimodalClassification
from ..models.dmil.stages_dmil import EVERYTHING, STAGES, stage_plan
from .lora import add_lora


def prepare_model_for_stage(
    model: DMILForMultimodalClassification,
    stage: int,
    finetune_method: str = "lora",
    lora_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """Set what trains in a stage; returns the model to train (peft-wrapped for a LoRA fine-tuning stage) and the
    frozen modules, which the caller must hold in eval mode.

    What trains is the paradigm's stage table (`stages_dmil.stage_plan(config, stage)`); in a fine-tuning stage
    (DMIL's stage 3, two_stage's stage 2) the backbones train through LoRA adapters when `finetune_method="lora"` (the
    heads then train fully as peft `modules_to_save`). The joint and ensemble baselines train everything in their
    single stage.

    `stage` is one of the model's stages (1, 2, 3). A stage past the paradigm's last means its last, as it does for
    the model's `forward(stage=...)`: stage 3, the finished model's stage, is a baseline's only stage and two_stage's
    joint fine-tuning.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
    model.requires_grad_(True)
    frozen: list[torch.nn.Module] = []
    # The stage table says what trains; everything else is frozen and held in eval mode (dropout off).
    plan = stage_plan(model.config, stage)
    trained = plan.trained_modules(model.config)
    if EVERYTHING not in trained:
        for name, module in model.stage_modules().items():
            if name not in trained:
                module.requires_grad_(False)
                frozen.append(module)
    if plan.finetune and finetune_method == "lora":
        model = add_lora(model, **(lora_kwargs or {}))
    return model, frozen
