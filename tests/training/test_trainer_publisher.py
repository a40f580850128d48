"""The trainer publishes through the publisher it is given (`DMILTrainer(publisher=...)`): the pre-flight check
before anything trains, each finished stage, then the final model, whose card the publisher writes. No Hub here: the
publisher's Hub client is a recorder."""

import os

import pytest
import torch
from datasets import Dataset

from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments
from dmil_hf.hub.publisher import DMILHubUploadError
from dmil_hf.hub.run_publisher import DMILRunPublisher
from dmil_hf.testing_utils import tiny_text_config, tiny_vision_config


class RecordingHub:
    """`DMILHubPublisher` as far as the run publisher uses it, recording instead of uploading."""

    repo_id, private, revision = "someone/run", None, None

    def __init__(self, fail_stages=False):
        self.calls, self.fail_stages = [], fail_stages

    def check(self):
        self.calls.append("check")
        return self.repo_id

    def upload_stage(self, folder, stage):
        self.calls.append(("stage", stage, os.path.basename(folder)))
        if self.fail_stages:
            raise ConnectionError("the Hub went away")

    def upload_final(self, folder, message="End of training"):
        self.calls.append(("final", os.path.basename(folder), os.path.isfile(os.path.join(folder, "README.md"))))


def trainer_publishing_to(hub, tmp_path, paradigm="two_stage"):
    torch.manual_seed(0)
    config = DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), num_labels=2,
                        latent_dim=16, paradigm=paradigm)
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_ids": torch.randint(3, 99, (8, 6), generator=g).tolist(),
                              "pixel_values": torch.randn(8, 3, 16, 16, generator=g).tolist(), "labels": [0, 1] * 4})
    args = DMILTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4,
                                 use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, push_to_hub=True)
    publisher = DMILRunPublisher(hub, args.output_dir)
    trainer = DMILTrainer(model=DMILForMultimodalClassification(config), args=args, train_dataset=data,
                          publisher=publisher)
    assert trainer.publisher is publisher and hub.calls == []
    return trainer


def test_the_trainer_checks_then_uploads_each_stage_then_the_final_model_with_its_card(tmp_path):
    hub = RecordingHub()
    trainer_publishing_to(hub, tmp_path).train()
    assert hub.calls == ["check", ("stage", 1, "stage-1"), ("stage", 2, "stage-2"), ("final", "final", True)]


def test_failed_uploads_end_the_finished_run_with_the_push_command(tmp_path):
    hub = RecordingHub(fail_stages=True)
    trainer = trainer_publishing_to(hub, tmp_path)
    with pytest.raises(DMILHubUploadError, match="2 upload\\(s\\) to the Hub repo someone/run failed") as caught:
        trainer.train()
    assert hub.calls[-1] == ("final", "final", True)  # the run went on to the end
    assert caught.value.train_output.metrics["stages"].keys() == {"1", "2"}
    assert str(caught.value).endswith(
        f"python -m dmil_hf.hub.publisher push {tmp_path / 'run'} --repo_id someone/run --stages")
