"""What trains in a stage (`dmil_hf.training.stages.prepare_model_for_stage`), for every paradigm: the stage table's
stages, and stage 3 (the finished model's stage, what `forward` and the speed benchmark default to) for a paradigm
with fewer stages."""

import pytest
import torch

from dmil_hf import DMILConfig, DMILForMultimodalClassification
from dmil_hf.models.dmil.stages_dmil import stage_plans
from dmil_hf.testing_utils import tiny_text_config, tiny_vision_config
from dmil_hf.training import prepare_model_for_stage


def model_of(paradigm):
    torch.manual_seed(0)
    config = DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), num_labels=3,
                        latent_dim=16, paradigm=paradigm)
    return DMILForMultimodalClassification(config)


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("paradigm", ["joint", "ensemble", "i2m2"])
def test_stage_3_of_a_one_stage_paradigm_is_its_only_stage(paradigm):
    # `make bench` (benchmarks/speed.py) asks for stage 3 of the joint baseline: a KeyError before.
    assert list(stage_plans(paradigm)) == [1]
    model, frozen = prepare_model_for_stage(model_of(paradigm), 3, "full")
    assert frozen == [] and trainable(model) == {name for name, _ in model.named_parameters()}
    # A baseline's only stage trains its backbones fully whatever finetune_method says, in stage 1 or 3 alike.
    model, frozen = prepare_model_for_stage(model_of(paradigm), 3, "lora", {"r": 4})
    assert type(model) is DMILForMultimodalClassification and frozen == []


def test_stage_3_of_two_stage_is_its_joint_fine_tuning():
    stage2, frozen2 = prepare_model_for_stage(model_of("two_stage"), 2, "full")
    stage3, frozen3 = prepare_model_for_stage(model_of("two_stage"), 3, "full")
    assert trainable(stage3) == trainable(stage2) and frozen2 == frozen3 == []
    lora, _ = prepare_model_for_stage(model_of("two_stage"), 3, "lora", {"r": 4})
    assert hasattr(lora, "merge_and_unload")  # the fine-tuning stage takes LoRA, as stage 2 does
    # Its first stage still freezes what the table leaves out.
    _, frozen1 = prepare_model_for_stage(model_of("two_stage"), 1, "full")
    assert frozen1


def test_dmil_stages_follow_the_table():
    model, frozen = prepare_model_for_stage(model_of("dmil"), 2, "full")
    assert frozen and not any(name.startswith("backbones.") for name in trainable(model))
    model, frozen = prepare_model_for_stage(model_of("dmil"), 3, "full")
    assert frozen == [] and any(name.startswith("backbones.") for name in trainable(model))


@pytest.mark.parametrize("stage", [0, 4, "3"])
def test_a_stage_the_model_does_not_have_is_an_error(stage):
    with pytest.raises(ValueError, match="stage must be one of"):
        prepare_model_for_stage(model_of("joint"), stage, "full")
