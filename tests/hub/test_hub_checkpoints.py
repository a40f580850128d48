"""Checkpoints on the Hub (`hub_strategy`, transformers' four) in the layout of docs/hub.md, beside the stage folders, and
a run resumed from one after its machine went away: downloaded with the finished stages before it, under the run
identity rule, to the weights of an uninterrupted run. Everything against tests/fake_hub.py."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from dmil_hf import DMILTrainer, DMILTrainingArguments
from dmil_hf.hub.checkpoints import HubCheckpoint, checkpoint_uploads, hub_checkpoint
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as make_model
from dmil_hf.training.run_folder import RunMismatchError

REPO = "someone/dmil-ckpt"


def make_trainer(out, data=None, **kwargs):
    args = DMILTrainingArguments(
        output_dir=str(out), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="steps", save_steps=1, logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0,
        stage2_learning_rate=1e-2, stage3_learning_rate=1e-2, finetune_method="lora", **kwargs,
    )
    return DMILTrainer(model=make_model(), args=args, train_dataset=data if data is not None else make_data(8))


def pushing(out, strategy, **kwargs):
    # hub_always_push: every save is pushed, whatever the timing (by default, as in transformers, a save whose
    # predecessor's push still runs is not pushed: see test_a_push_still_running_skips_the_next_save).
    return make_trainer(out, push_to_hub=True, hub_model_id=REPO, hub_token="hf_fake", hub_strategy=strategy,
                        hub_always_push=True, **kwargs)


def files(hub, folder):
    base = hub.root / REPO / folder
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint", "all_checkpoints"])
def test_each_hub_strategy_pushes_its_checkpoints_beside_the_stage_folders(tmp_path, hub, strategy):
    pushing(tmp_path / "run", strategy).train()
    summaries = [commit["summary"] for commit in hub.commits]
    in_progress = [s for s in summaries if s.startswith("Training in progress")]
    stage_uploads = [f"DMIL stage {k}" for k in (1, 2, 3)]
    assert [s for s in summaries if not s.startswith("Training in progress")] == [*stage_uploads, "End of training"]
    if strategy == "end":
        assert in_progress == []
    else:
        # Every save pushes its model: stage-k/ (a LoRA stage's adapter to stage-k/adapter/), two saves a stage.
        models = [f"Training in progress, stage {k}, step {n}" for k in (1, 2, 3) for n in (1, 2)]
        assert [s for s in in_progress if not s.endswith(", checkpoint")] == models
        model_pushes = [c for c in hub.commits if c["summary"] in models]
        assert all(path.startswith(f"stage-{c['summary'].split(', ')[1][-1]}/") for c in model_pushes
                   for path in c["added"])
        assert all(path.startswith("stage-3/adapter/") for c in model_pushes[4:] for path in c["added"])
        assert not any(name.endswith((".pt", ".pth", "trainer_state.json", "dmil_run.json"))
                       for c in model_pushes for name in c["added"])
    last, every = files(hub, "last-checkpoint"), files(hub, "checkpoints")
    if strategy == "checkpoint":
        # The run's newest checkpoint, whole: stage 3's adapter at step 2; stage 2's weights went with it.
        assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                "trainer_state.json", "dmil_run.json"} <= set(last)
        assert "model.safetensors" not in last
        assert json.loads((hub.root / REPO / "last-checkpoint" / "dmil_run.json").read_text())["stage"] == 3
        assert json.loads((hub.root / REPO / "last-checkpoint" / "trainer_state.json").read_text())["global_step"] == 2
        config = json.loads((hub.root / REPO / "last-checkpoint" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == REPO  # no folder of this machine
    else:
        assert last == []
    if strategy == "all_checkpoints":
        assert sorted({path.rsplit("/", 1)[0] for path in every}) == [
            f"stage-{k}/checkpoint-{n}" for k in (1, 2, 3) for n in (1, 2)]
        assert "stage-1/checkpoint-1/optimizer.pt" in every and "stage-3/checkpoint-2/adapter_model.safetensors" in every
    else:
        assert every == []
    # The stage folders and the root are the finished results, as without checkpoints.
    assert {"config.json", "model.safetensors", "dmil_stage.json"} <= set(files(hub, "stage-2"))
    assert not any("checkpoint-" in path for path in files(hub, "stage-1"))


class KillAfterSave(TrainerCallback):
    """Stand in for a preempted machine: stop the run once stage 3's first checkpoint is saved (and pushed)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.stage == 3 and state.global_step == 1:
            raise KeyboardInterrupt


def weights(out):
    names = [f"stage-{k}/model.safetensors" for k in (1, 2, 3)] + ["stage-3/adapter/adapter_model.safetensors"]
    return {name: load_file(out / name) for name in names}


def test_a_run_resumes_from_its_last_checkpoint_on_the_hub_on_another_machine(tmp_path, hub):
    preempted = pushing(tmp_path / "machine-1", "checkpoint")
    preempted.add_callback(KillAfterSave(preempted))
    with pytest.raises(KeyboardInterrupt):
        preempted.train()
    preempted.publisher.wait_for_checkpoint_pushes()
    assert json.loads((hub.root / REPO / "last-checkpoint" / "dmil_run.json").read_text())["stage"] == 3

    # Another machine, an empty output_dir: transformers' resume_from_checkpoint="last-checkpoint", from the run's repo.
    fresh = tmp_path / "machine-2"
    resumed = make_trainer(fresh, hub_model_id=REPO, hub_token="hf_fake")
    resumed.train(resume_from_checkpoint="last-checkpoint")
    assert (fresh / "last-checkpoint" / "adapter_model.safetensors").is_file()  # fetched, with stages 1 and 2
    straight = make_trainer(tmp_path / "straight")
    straight.train()
    expected, got = weights(tmp_path / "straight"), weights(fresh)
    for name, tensors in expected.items():
        assert got[name].keys() == tensors.keys(), name
        assert all(torch.equal(got[name][k], tensors[k]) for k in tensors), name

    # The identity rule holds for a checkpoint from the Hub: another run's data is refused before anything trains.
    other = make_trainer(tmp_path / "machine-3", data=make_data(8, seed=5), hub_token="hf_fake")
    with pytest.raises(RunMismatchError, match="belongs to another run"):
        other.train(resume_from_checkpoint=f"hf://{REPO}/last-checkpoint")
    assert not (tmp_path / "machine-3" / "stage-3" / "dmil_stage.json").exists()


def test_hub_references_and_what_each_strategy_uploads(tmp_path):
    assert hub_checkpoint("hf://someone/dmil/last-checkpoint") == HubCheckpoint("someone/dmil", "last-checkpoint")
    assert hub_checkpoint("hf://someone/dmil@dev/checkpoints/stage-2/checkpoint-4") == HubCheckpoint(
        "someone/dmil", "checkpoints/stage-2/checkpoint-4", "dev")
    assert hub_checkpoint("last-checkpoint", "someone/dmil", "dev") == HubCheckpoint("someone/dmil", "last-checkpoint", "dev")
    assert hub_checkpoint("last-checkpoint") is None  # no repo named: a local path (that does not exist)
    assert hub_checkpoint("outputs/run/stage-2/checkpoint-4", "someone/dmil") is None
    with pytest.raises(ValueError, match="names no owner"):
        hub_checkpoint("last-checkpoint", "dmil")
    with pytest.raises(ValueError, match="hf://USER/NAME"):
        hub_checkpoint("hf://someone/dmil")
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    assert [u.path_in_repo for u in checkpoint_uploads(checkpoint, 2, 4, "all_checkpoints")] == [
        "stage-2", "checkpoints/stage-2/checkpoint-4"]
    (checkpoint / "adapter_config.json").write_text("{}")
    last = checkpoint_uploads(checkpoint, 3, 4, "checkpoint")
    assert [(u.path_in_repo, u.delete_patterns) for u in last] == [("stage-3/adapter", None), ("last-checkpoint", ("*",))]
    assert checkpoint_uploads(checkpoint, 3, 4, "end") == []


def test_a_push_still_running_skips_the_next_save_unless_hub_always_push(tmp_path, monkeypatch):
    from concurrent.futures import Future

    from dmil_hf.hub import checkpoints
    from dmil_hf.hub.publisher import DMILHubPublisher
    from dmil_hf.hub.run_publisher import DMILRunPublisher

    started = []
    monkeypatch.setattr(checkpoints, "push_checkpoint", lambda api, repo, checkpoint, *a, **k: started.append(checkpoint)
                        or [Future()])  # a push that never finishes
    publisher = DMILRunPublisher(DMILHubPublisher(REPO, token="hf_fake"), tmp_path)
    args = make_trainer(tmp_path / "run", hub_strategy="checkpoint").args
    for step in (1, 2):
        publisher.push_checkpoint(tmp_path / f"checkpoint-{step}", 1, step, args)
    assert started == [tmp_path / "checkpoint-1"]  # checkpoint-2's save came while checkpoint-1's push ran
    args.hub_always_push = True
    publisher.push_checkpoint(tmp_path / "checkpoint-3", 1, 3, args)
    assert started[-1] == tmp_path / "checkpoint-3"
    args.hub_strategy = "end"
    publisher.push_checkpoint(tmp_path / "checkpoint-4", 1, 4, args)
    assert len(started) == 2
