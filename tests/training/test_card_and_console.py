"""What a run tells its user: the model card (a baseline's describes a baseline, no machine paths, a usage line that
loads), the console (one short line per log, one bar per stage, no nested evaluation bars)."""

import pytest
import torch
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from dmil_hf import DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments
from dmil_hf.hub.model_card import backbone_display_name, render_model_card
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.training.callbacks import DMILPrinterCallback, DMILProgressCallback, console_line


def card_of(tmp_path, paradigm, **args):
    config = make_config(("text", "vision"), paradigm=paradigm)
    config.text_config._name_or_path = str(tmp_path / "machine" / "backbones" / "my-text-encoder")
    config.vision_config._name_or_path = "google/vit-base-patch16-224"
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(config)
    settings = dict(output_dir=str(tmp_path / "runs" / "dmil-x"), use_cpu=True, report_to=[])
    return render_model_card(model, DMILTrainingArguments(**{**settings, **args}), {1: {"eval_accuracy": 0.5}})


@pytest.mark.parametrize("paradigm", ["joint", "ensemble"])
def test_a_baselines_card_describes_a_baseline(tmp_path, paradigm):
    card = card_of(tmp_path, paradigm).content
    assert f"A multimodal baseline built with `dmil_hf` (paradigm: **{paradigm}**)" in card
    assert "no interaction gate, so its predictions come without an interaction composition" in card
    assert "Every prediction comes with" not in card and '"interactions"' not in card
    assert "Stage 3 fine-tuning method" not in card and "stage3_component_weight" not in card
    # The head's own docstring says what the baseline is.
    assert {"joint": "The joint-fusion baseline", "ensemble": "The ensemble baseline"}[paradigm] in card


def test_a_dmil_card_keeps_its_interaction_wording(tmp_path):
    card = card_of(tmp_path, "dmil").content
    assert "Every prediction comes with its *interaction composition*" in card and '"interactions"' in card
    assert "Task: single-label classification over 3 classes." in card


def test_card_names_local_backbones_without_machine_paths_and_loads_the_saved_folder(tmp_path):
    card = card_of(tmp_path, "dmil")
    assert str(tmp_path) not in card.content  # neither the backbone's nor the output folder's absolute path
    assert "| text | text | my-text-encoder (a local folder) | bert |" in card.content
    assert card.data.base_model == ["google/vit-base-patch16-224"]  # only the Hub backbone is a base model
    # Not pushed: the usage line loads a folder, not the output folder's bare name (which is no Hub repo).
    assert 'AutoModel.from_pretrained("path/to/dmil-x/final")' in card.content
    assert 'from_pretrained("dmil-x")' not in card.content
    relative = card_of(tmp_path, "dmil", output_dir="outputs/dmil-x").content
    assert 'AutoModel.from_pretrained("outputs/dmil-x/final")' in relative
    pushed = card_of(tmp_path, "dmil", hub_model_id="someone/dmil-x").content
    assert 'AutoModel.from_pretrained("someone/dmil-x")' in pushed and "pin `revision=`" in pushed


@pytest.mark.parametrize("name, shown", [
    ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased"),
    ("/home/me/models/minilm", "minilm (a local folder)"),
    ("./backbones/text", "text (a local folder)"),
    (None, "(built from config)"),
])
def test_backbone_display_name(name, shown):
    assert backbone_display_name(name) == shown


@pytest.mark.parametrize("logs, line", [
    ({"loss": 1.23456, "grad_norm": 0.5, "learning_rate": 5e-4, "epoch": 1.5, "stage": 2, "stage_step": 3, "step": 9,
      "ce_final": 0.7},
     "stage 2 | step 9 | epoch 1.5 | loss 1.235, learning_rate 0.0005, grad_norm 0.5"),
    ({"eval_loss": 2.0, "eval_accuracy": 0.9, "eval_f1_macro": 0.8, "eval_accuracy_R": 1.0, "eval_gate_synergy_S": 0.1,
      "eval_runtime": 0.3, "epoch": 2.0, "stage": 1},
     "stage 1 | epoch 2 | eval: loss 2, accuracy 0.9, f1_macro 0.8 (+3 more in the log history)"),
    ({"train_runtime": 12.34, "train_loss": 2.5, "epoch": 10.0, "stage": 3},
     "stage 3 | epoch 10 | done: train_loss 2.5, 12.3 s"),
])
def test_console_line_is_short_and_keeps_the_headline(logs, line):
    assert console_line(logs) == line


@pytest.mark.parametrize("disable_tqdm, ours, theirs", [
    (False, DMILProgressCallback, ProgressCallback), (True, DMILPrinterCallback, PrinterCallback),
])
def test_trainer_swaps_the_console_callbacks(tmp_path, disable_tqdm, ours, theirs):
    args = DMILTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=disable_tqdm)
    trainer = DMILTrainer(model=DMILForMultimodalClassification(make_config(("text", "vision"))), args=args)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert ours in kinds and theirs not in kinds


def test_progress_has_no_nested_evaluation_bar_while_a_stage_trains():
    from transformers import TrainerControl, TrainerState

    callback, state = DMILProgressCallback(), TrainerState(max_steps=4)
    callback.stage = 2
    callback.on_train_begin(None, state, TrainerControl())
    assert callback.training_bar.desc.startswith("stage 2")
    callback.on_prediction_step(None, state, TrainerControl(), eval_dataloader=[0, 1, 2])
    assert callback.prediction_bar is None  # the Trainer's would open a second bar (the stray `[A` lines)
    callback.on_train_end(None, state, TrainerControl())
    callback.on_prediction_step(None, state, TrainerControl(), eval_dataloader=[0, 1, 2])
    assert callback.prediction_bar is not None  # a standalone evaluate() keeps its bar
    callback.on_evaluate(None, state, TrainerControl())


@pytest.mark.parametrize("paradigm", ["dmil", "joint"])
def test_cli_report_names_the_paradigm_and_its_columns(paradigm, capsys):
    from types import SimpleNamespace

    from dmil_hf.testing_utils import import_cli

    run = import_cli()
    config = make_config(("text", "vision"), paradigm=paradigm)
    metrics = {"eval_accuracy": 0.5, "eval_accuracy_R": 0.75, "eval_gate_redundancy_R": 0.4}
    run.print_stage_table(config, {1: {"eval_accuracy": 0.5}})
    run.print_results(config, metrics, "eval", 4)
    out = capsys.readouterr().out
    if paradigm == "dmil":
        assert "== DMIL run: per-stage results ==" in out
        assert "| type | accuracy | gate redundancy | gate uniqueness_text | gate uniqueness_vision | gate synergy |" in out
        assert "| R | 0.7500 | 0.400 | - | - | - |" in out
    else:
        assert "== joint baseline run: per-stage results ==" in out and "DMIL run" not in out
        assert "== final model, eval split: accuracy per interaction type ==" in out
        assert "| type | accuracy |\n|---|---|\n| R | 0.7500 |\n" in out


def test_weight_bars_are_off_while_a_stage_trains_and_back_afterwards(tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.utils import logging as transformers_logging

    seen = []

    class Look(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(transformers_logging.is_progress_bar_enabled())

    config = make_config(("text", "vision"))
    data = Dataset.from_dict({"input_ids": torch.randint(3, 99, (4, 6)).tolist(),
                              "pixel_values": torch.randn(4, 3, 16, 16).tolist(), "labels": [0, 1, 2, 0]})
    args = DMILTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, stages="1",
                                 save_strategy="no", per_device_train_batch_size=4, dataloader_num_workers=0,
                                 disable_tqdm=False)
    trainer = DMILTrainer(model=DMILForMultimodalClassification(config), args=args, train_dataset=data,
                          callbacks=[Look()])
    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()
    try:
        trainer.train(stage=1)
        assert seen == [False] and transformers_logging.is_progress_bar_enabled()
    finally:
        if not was_on:
            transformers_logging.disable_progress_bar()
