"""DMILTrainer never gives a silently wrong result: checkpoints load back exactly (ViT's legacy key names included),
a folder holding an earlier run is not reused by accident, and resuming survives incomplete checkpoints."""

import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dmil_hf import DMILForMultimodalClassification, DMILTrainer
from dmil_hf.testing_utils import InterruptAt, TrainingInterrupted
from dmil_hf.testing_utils import import_cli
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model
from dmil_hf.training.lora import add_lora
from dmil_hf.training.run_folder import STAGE_MARKER


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))

def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def run_interrupted(tmp_path, out: str, stage: int, at_step: int = 3, **kwargs) -> None:
    """Train into `out` and stop (as a kill would) at `at_step` of `stage`, after the checkpoint of step 2."""
    settings = dict(output_dir=str(tmp_path / out), max_steps=4, save_strategy="steps", save_steps=2)
    args = make_args(tmp_path, **settings, **kwargs)
    trainer = DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data())
    trainer.add_callback(InterruptAt([trainer], stage, at_step))
    with pytest.raises(TrainingInterrupted):
        trainer.train()


def run_to_end(tmp_path, out: str, resume=None, **kwargs) -> DMILTrainer:
    settings = dict(output_dir=str(tmp_path / out), max_steps=4, save_strategy="steps", save_steps=2)
    trainer = DMILTrainer(model=two_modality_model(), args=make_args(tmp_path, **{**settings, **kwargs}),
                          train_dataset=make_data())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


# ------------------------------------------------------------------ 1. checkpoints load back exactly


def test_best_model_at_end_restores_every_weight_of_the_best_checkpoint(tmp_path):
    # Evaluated on its own training data, the model's loss falls epoch after epoch; asking for the *highest* loss
    # makes the first epoch's checkpoint the best one, so the best checkpoint is not the last.
    args = make_args(
        tmp_path, stages="1", max_steps=-1, num_train_epochs=3, learning_rate=1e-3, eval_strategy="epoch",
        save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True,
    )
    trainer = DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data(), eval_dataset=make_data())
    trainer.train()
    stage1 = tmp_path / "run" / "stage-1"
    best, last = trainer.state.best_model_checkpoint, str(stage1 / "checkpoint-12")
    assert best == str(stage1 / "checkpoint-4") and os.path.isdir(last)

    expected = state(DMILForMultimodalClassification.from_pretrained(best))
    last_weights = state(DMILForMultimodalClassification.from_pretrained(last))
    # The test means something only if the vision encoder moved between the best and the last checkpoint.
    assert any(not torch.equal(expected[k], last_weights[k]) for k in expected if k.startswith("backbones.vision."))
    assert_same_tensors(state(DMILForMultimodalClassification.from_pretrained(stage1)), expected)


@pytest.mark.parametrize("stage, finetune_method", [(1, "lora"), (3, "full")])
def test_resume_inside_a_stage_that_trains_vit_matches_uninterrupted_run(tmp_path, stage, finetune_method):
    stages = "1" if stage == 1 else "1,2,3"
    run_to_end(tmp_path, "straight", stages=stages, finetune_method=finetune_method)
    run_interrupted(tmp_path, "interrupted", stage, stages=stages, finetune_method=finetune_method)
    assert (tmp_path / "interrupted" / f"stage-{stage}" / "checkpoint-2").is_dir()
    run_to_end(tmp_path, "interrupted", resume=True, stages=stages, finetune_method=finetune_method)
    straight = weights(tmp_path / "straight" / f"stage-{stage}")
    resumed = weights(tmp_path / "interrupted" / f"stage-{stage}")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=1e-5, msg=key)


FAMILIES = [
    dict(text="bert", vision="vit", audio="wav2vec2"),
    dict(text="roberta", vision="clip_vision_model", audio="hubert"),
    dict(text="bert", vision="dinov2", audio="audio-spectrogram-transformer"),
    dict(text="bert", vision="vit", audio="whisper"),
]


@pytest.mark.parametrize("families", FAMILIES, ids=lambda f: "-".join(f.values()))
def test_a_saved_checkpoint_loads_back_exactly_for_every_backbone_family(tmp_path, families):
    torch.manual_seed(0)
    saved = DMILForMultimodalClassification(make_config(**families))
    trainer = DMILTrainer(model=saved, args=make_args(tmp_path))
    trainer.save_model(str(tmp_path / "checkpoint-1"))
    torch.manual_seed(1)  # a differently initialised model of the same class takes the checkpoint
    trainer.model = DMILForMultimodalClassification(make_config(**families))
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    assert_same_tensors(state(trainer.model), state(saved))


def test_a_lora_checkpoint_loads_back_exactly(tmp_path):
    def lora_model():
        torch.manual_seed(0)  # the same base model on both sides, as when stage 3 starts from stage 2
        return add_lora(DMILForMultimodalClassification(make_config(("text", "vision"), vision="dinov2")), r=4)

    saved = lora_model()
    with torch.no_grad():  # adapters and heads away from their initial values
        for name, parameter in saved.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    trainer = DMILTrainer(model=saved, args=make_args(tmp_path))
    trainer.save_model(str(tmp_path / "checkpoint-1"))
    trainer.model = lora_model()
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    assert_same_tensors(state(trainer.model), state(saved))


@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_a_checkpoint_with_missing_or_unexpected_keys_is_an_error(tmp_path, damage):
    trainer = DMILTrainer(model=two_modality_model(), args=make_args(tmp_path))
    folder = tmp_path / "checkpoint-1"
    trainer.save_model(str(folder))
    tensors = load_file(folder / "model.safetensors")
    if damage == "missing":
        tensors.pop(next(k for k in tensors if k.startswith("head.interaction_gate.")))
    else:
        tensors["interaction_gate.stray.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=damage):
        trainer._load_from_checkpoint(str(folder))


# ------------------------------------------------------------------ 2. a folder holding a run is not reused by accident


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    trainer = run_to_end(tmp_path, "run", save_strategy="no")  # LoRA stage 3: writes stage-3/adapter
    trainer.save_final()
    run = tmp_path / "run"
    assert (run / "final" / "adapter").is_dir()
    before = (run / "stage-1" / STAGE_MARKER).read_text()

    for stage in (None, 1, 3):  # the whole schedule, or a stage whose folder is there
        again = DMILTrainer(model=two_modality_model(), args=make_args(tmp_path, finetune_method="full"),
                            train_dataset=make_data())
        with pytest.raises(ValueError, match="overwrite_output_dir"):
            again.train(stage=stage)
    assert (run / "stage-1" / STAGE_MARKER).read_text() == before and (run / "stage-3" / "adapter").is_dir()

    # Asked to overwrite, the old stages and final model are removed first: nothing of the LoRA run survives.
    args = make_args(tmp_path, finetune_method="full", overwrite_output_dir=True)
    fresh = DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data())
    fresh.train()
    fresh.save_final()
    assert not (run / "stage-3" / "adapter").exists() and not (run / "final" / "adapter").exists()
    assert sorted(p.name for p in run.iterdir()) == [
        "dmil_run.json", "final", "log_history.json", "stage-1", "stage-2", "stage-3"]


def test_save_final_copies_only_an_adapter_of_this_run(tmp_path):
    # A finished LoRA run resumed: its stage-3 adapter is this run's, and the final model gets it.
    run_to_end(tmp_path, "lora", save_strategy="no")
    resumed = run_to_end(tmp_path, "lora", resume=True, save_strategy="no")
    assert resumed.stage_results and (tmp_path / "lora" / "stage-3" / "adapter").is_dir()
    assert (tmp_path / resumed.save_final() / "adapter" / "adapter_config.json").is_file()

    # A finished full fine-tuning run next to an adapter it did not write (left by another run), and a final
    # folder that already holds one: the final model must not get or keep either.
    run_to_end(tmp_path, "full", save_strategy="no", finetune_method="full")
    full = tmp_path / "full"
    shutil.copytree(tmp_path / "lora" / "stage-3" / "adapter", full / "stage-3" / "adapter")
    shutil.copytree(tmp_path / "lora" / "stage-3" / "adapter", full / "final" / "adapter")
    resumed = run_to_end(tmp_path, "full", resume=True, save_strategy="no", finetune_method="full")
    final = resumed.save_final()
    assert not os.path.exists(os.path.join(final, "adapter"))


# ------------------------------------------------------------------ 3. resuming


def test_resume_skips_an_incomplete_checkpoint_with_a_warning(tmp_path, caplog):
    run_to_end(tmp_path, "straight", stages="1")
    run_interrupted(tmp_path, "interrupted", 1, stages="1")
    stage1 = tmp_path / "interrupted" / "stage-1"
    # A kill while checkpoint-4 was being written: weights cut short, no trainer state yet.
    (stage1 / "checkpoint-4").mkdir()
    weights_file = (stage1 / "checkpoint-2" / "model.safetensors").read_bytes()
    (stage1 / "checkpoint-4" / "model.safetensors").write_bytes(weights_file[:1000])
    with caplog.at_level(logging.WARNING, logger="dmil_hf"):
        run_to_end(tmp_path, "interrupted", resume=True, stages="1")
    assert any("checkpoint-4" in r.getMessage() and "incomplete" in r.getMessage() for r in caplog.records)
    straight, resumed = weights(tmp_path / "straight" / "stage-1"), weights(stage1)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("lost", ["optimizer.pt", "scheduler.pt"])
def test_resume_without_optimizer_or_scheduler_state_warns(tmp_path, caplog, lost):
    run_interrupted(tmp_path, "run", 1, stages="1")
    (tmp_path / "run" / "stage-1" / "checkpoint-2" / lost).unlink()
    with caplog.at_level(logging.WARNING, logger="dmil_hf"):
        run_to_end(tmp_path, "run", resume=True, stages="1")
    assert any(lost in r.getMessage() and "checkpoint-2" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "stage-1" / STAGE_MARKER).is_file()


@pytest.fixture
def cli():
    return import_cli()


def test_cli_resume_true_skips_finished_stages_and_overwrite_is_exposed(tmp_path, cli):
    out = tmp_path / "out"
    argv = [
        "--synthetic_train_size", "32", "--synthetic_eval_size", "16", "--synthetic_modalities", "text,vision",
        "--max_steps", "1", "--per_device_train_batch_size", "16", "--save_strategy", "no", "--report_to", "none",
        "--use_cpu", "true", "--disable_tqdm", "true", "--output_dir", str(out),
    ]
    cli.main(argv)
    markers = {k: (out / f"stage-{k}" / STAGE_MARKER).read_text() for k in (1, 2, 3)}
    _, _, args, _ = cli.parse_arguments([*argv, "--resume_from_checkpoint", "true"])
    assert args.resume_from_checkpoint is True
    metrics = cli.main([*argv, "--resume_from_checkpoint", "true"])
    # Every stage was finished: each is loaded, none retrained.
    assert sorted(metrics["stages"]) == ["1", "2", "3"]
    assert all((out / f"stage-{k}" / STAGE_MARKER).read_text() == markers[k] for k in (1, 2, 3))
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        cli.main(argv)
    cli.main([*argv, "--overwrite_output_dir", "true"])
    assert json.loads((out / "stage-1" / STAGE_MARKER).read_text())["stage"] == 1


def _tiny(model_type: str, **extra):
    from transformers import AutoConfig

    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    return AutoConfig.for_model(model_type, **sizes, **extra)


TEXT = dict(vocab_size=99, max_position_embeddings=64)
IMAGE = dict(image_size=16, patch_size=4)
WAVEFORM = dict(conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2)
# The table's families that the tiny backbones of the other tests do not cover.
MORE_FAMILIES = [
    dict(text=("xlm-roberta", {**TEXT, "pad_token_id": 1}), vision=("deit", IMAGE), audio=("wavlm", WAVEFORM)),
    dict(text=("distilbert", {**TEXT, "hidden_dim": 37}), vision=("siglip_vision_model", IMAGE)),
    dict(text=("deberta-v2", TEXT), vision=("deit", IMAGE)),
]


@pytest.mark.parametrize("families", MORE_FAMILIES, ids=lambda f: "-".join(t for t, _ in f.values()))
def test_a_saved_checkpoint_loads_back_exactly_for_the_other_table_families(tmp_path, families):
    from dmil_hf import DMILConfig

    def config():
        sub = {f"{m}_config": _tiny(model_type, **extra) for m, (model_type, extra) in families.items()}
        return DMILConfig(**sub, num_labels=3, latent_dim=16)

    torch.manual_seed(0)
    saved = DMILForMultimodalClassification(config())
    trainer = DMILTrainer(model=saved, args=make_args(tmp_path))
    trainer.save_model(str(tmp_path / "checkpoint-1"))
    torch.manual_seed(1)
    trainer.model = DMILForMultimodalClassification(config())
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    assert_same_tensors(state(trainer.model), state(saved))
