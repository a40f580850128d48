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
    # By default the encoders keep training through stage 2 (stage2_modality_weight); the reference's wait frozen.
    assert any(name.startswith("backbones.") for name in trainable(model))
    reference = model_of("dmil")
    reference.config.stage2_modality_weight = 0.0
    model, frozen = prepare_model_for_stage(reference, 2, "full")
    assert frozen and not any(name.startswith("backbones.") for name in trainable(model))
    model, frozen = prepare_model_for_stage(model_of("dmil"), 3, "full")
    assert frozen == [] and any(name.startswith("backbones.") for name in trainable(model))


@pytest.mark.parametrize("stage", [0, 4, "3"])
def test_a_stage_the_model_does_not_have_is_an_error(stage):
    with pytest.raises(ValueError, match="stage must be one of"):
        prepare_model_for_stage(model_of("joint"), stage, "full")


def test_split_parameter_groups_moves_the_named_parameters_into_groups_at_their_rate():
    from dmil_hf.training.trainer import split_parameter_groups

    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    optimizer = torch.optim.AdamW([{"params": [a, b], "weight_decay": 0.1}, {"params": [c], "weight_decay": 0.0}],
                                  lr=1e-2)
    split_parameter_groups(optimizer, {id(b): 1e-4, id(c): 1e-4})
    groups = [(g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in optimizer.param_groups]
    assert groups == [(1e-2, 0.1, [id(a)]), (1e-2, 0.0, []), (1e-4, 0.1, [id(b)]), (1e-4, 0.0, [id(c)])]
    # A parameter already at its rate stays where it is.
    split_parameter_groups(optimizer, {id(b): 1e-4})
    assert len(optimizer.param_groups) == 4


def test_stage_2_trains_the_encoders_at_stage_1s_rate_under_stage2_modality_weight(tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback

    from dmil_hf import DMILTrainer, DMILTrainingArguments

    seen = {}

    class Rates(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
            names = {id(p): n for n, p in model.named_parameters()}
            seen[trainer.stage] = {names[id(p)].split(".")[0] + "." + names[id(p)].split(".")[1]: g["lr"]
                                   for g in optimizer.param_groups for p in g["params"]}

    for weight in (0.0, 1.0):
        model = model_of("dmil")
        model.config.stage2_modality_weight = weight
        data = Dataset.from_dict({"input_ids": torch.randint(3, 99, (4, 6)).tolist(),
                                  "pixel_values": torch.randn(4, 3, 16, 16).tolist(), "labels": [0, 1, 2, 0]})
        args = DMILTrainingArguments(output_dir=str(tmp_path / str(weight)), stages="1,2", max_steps=1,
                                     stage1_learning_rate=1e-4, stage2_learning_rate=1e-2, use_cpu=True,
                                     report_to=[], save_strategy="no", disable_tqdm=True)
        trainer = DMILTrainer(model=model, args=args, train_dataset=data, callbacks=[Rates()])
        trainer.train()
        assert seen[1]["backbones.text"] == seen[1]["head.intra_decomposition"] == 1e-4
        assert seen[2]["head.interaction_gate"] == seen[2]["head.component_classifiers"] == 1e-2
        if weight:
            assert seen[2]["backbones.text"] == seen[2]["projections.vision"] == 1e-4
            assert seen[2]["head.intra_decomposition"] == 1e-4
        else:
            assert not any(name.startswith(("backbones.", "projections.")) for name in seen[2])
