"""A diverging run is not saved as fine (issue 23, class 2): a non-finite training loss stops training with an error
naming the stage, the steps and the non-finite terms, with the last good checkpoint kept and no stage marker, final/,
card or upload; and the publisher refuses weights that hold NaN or infinite values.

The loss is checked where it is already read on the host (each log) and before each save (one read per save): a
step's loss is not synchronised on its own.
"""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from dmil_hf import DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments
from dmil_hf.training.run_folder import STAGE_MARKER
from dmil_hf.training.trainer import DMILDivergenceError
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as make_model


@pytest.fixture
def diverge_at(monkeypatch):
    """From the given training step of a stage on, the loss is NaN (as a learning rate too high makes it): its
    gradients, and so the weights after the step, are NaN too."""
    state = {}

    def arm(stage, step):
        real = DMILForMultimodalClassification.forward
        calls = {"n": 0}

        def forward(self, *args, **kwargs):
            outputs = real(self, *args, **kwargs)
            if self.training and kwargs.get("stage") == stage:
                calls["n"] += 1
                if calls["n"] >= step:
                    outputs.loss = outputs.loss * float("nan")
            return outputs

        monkeypatch.setattr(DMILForMultimodalClassification, "forward", forward)
        state["armed"] = (stage, step)

    return arm


@pytest.mark.parametrize("logging_steps", [1, 100], ids=["caught_at_a_log", "caught_at_a_save"])
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, diverge_at, logging_steps):
    diverge_at(stage=2, step=3)
    args = DMILTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="steps", save_steps=2, logging_steps=logging_steps, disable_tqdm=True, seed=0,
        dataloader_num_workers=0, finetune_method="full", stage2_learning_rate=1e-2,
    )
    trainer = DMILTrainer(model=make_model(), args=args, train_dataset=make_data())
    with pytest.raises(DMILDivergenceError) as info:
        trainer.train()
    message = str(info.value)
    assert "training diverged in stage 2" in message and "non-finite: loss" in message
    assert "between steps 3 and" in message
    assert "--stage2_learning_rate, now 0.01" in message and "--max_grad_norm" in message
    run = tmp_path / "run"
    assert "stage-2/checkpoint-2, is kept" in message
    # The last good checkpoint is there and finite; nothing after it, no marker, no final model.
    good = load_file(run / "stage-2" / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in good.values())
    assert not (run / "stage-2" / "checkpoint-4").exists()
    assert not (run / "stage-2" / STAGE_MARKER).exists() and (run / "stage-1" / STAGE_MARKER).exists()
    assert not (run / "final").exists() and not (run / "stage-3").exists()


def test_a_non_finite_loss_after_the_last_log_and_save_is_caught_at_the_end_of_the_stage(tmp_path, diverge_at):
    diverge_at(stage=1, step=2)
    args = DMILTrainingArguments(
        output_dir=str(tmp_path / "run"), stages="1", max_steps=2, per_device_train_batch_size=4, use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=100, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = DMILTrainer(model=make_model(), args=args, train_dataset=make_data())
    with pytest.raises(DMILDivergenceError, match="stage 1.*no checkpoint of this stage was saved"):
        trainer.train()
    assert not os.path.exists(tmp_path / "run" / "stage-1" / STAGE_MARKER)
    assert not os.path.exists(tmp_path / "run" / "stage-1" / "model.safetensors")


def test_the_publisher_refuses_weights_that_are_not_finite(tmp_path, monkeypatch):
    import huggingface_hub

    from dmil_hf.hub.publisher import DMILHubPublisher, NonFiniteWeightsError, nonfinite_weights, push_output_dir
    from dmil_hf.training.run_folder import RunFolder

    class NoHub:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the Hub must not be touched")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoHub)
    run = RunFolder(tmp_path / "run")
    model = make_model()
    model.save_pretrained(run.final_dir)
    assert nonfinite_weights(run.final_dir) == []
    weights = load_file(os.path.join(run.final_dir, "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, os.path.join(run.final_dir, "model.safetensors"), metadata={"format": "pt"})
    # An adapter is checked as well (final/adapter travels with the model).
    os.makedirs(os.path.join(run.final_dir, "adapter"))
    save_file({"lora_A": torch.tensor([float("inf")])}, os.path.join(run.final_dir, "adapter",
                                                                      "adapter_model.safetensors"))
    assert nonfinite_weights(run.final_dir) == [f"adapter/adapter_model.safetensors:lora_A",
                                                f"model.safetensors:{name}"]
    with pytest.raises(NonFiniteWeightsError, match="is not published: 2 of its weight tensors hold NaN"):
        DMILHubPublisher(repo_id="user/diverged").upload(run.final_dir)
    with pytest.raises(NonFiniteWeightsError, match=name):
        push_output_dir(run.path, "user/diverged", check=False)
