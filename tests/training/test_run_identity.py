"""A run folder belongs to one run (issue 23, class 1), its folders are checked before anything trains, and a failed
write names the folder (class 4); a damaged stage marker says what to do (class 3).

The run identity (`output_dir/dmil_run.json`: model config, training data, the arguments that change the weights) is
written when a run starts and checked by every resume, and by a `--resume_from_checkpoint PATH` wherever it lies.
As root a folder cannot be made read-only and a disk cannot be filled for real: the OS error is injected at the write
where it would occur.
"""

import builtins
import errno
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from dmil_hf import DMILTrainer, DMILTrainingArguments
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as make_model
from dmil_hf.training.run_folder import (
    RESULT_NAMES,
    RUN_IDENTITY_NAME,
    STAGE_MARKER,
    OutputFolderError,
    RunFolder,
    RunMismatchError,
)

REPO = Path(__file__).resolve().parents[2]


def make_args(out, **kwargs):
    settings = dict(
        output_dir=str(out), stages="1", max_steps=4, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="steps", save_steps=2, disable_tqdm=True, logging_steps=1, seed=0, dataloader_num_workers=0,
        finetune_method="full",
    )
    settings.update(kwargs)
    return DMILTrainingArguments(**settings)


class Stop(Exception):
    pass


class StopAt(TrainerCallback):
    """Stop training (as a kill would) at the end of `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Stop


def train(out, data=None, model=None, resume=None, stop_at=None, **kwargs):
    trainer = DMILTrainer(model=model or make_model(), args=make_args(out, **kwargs),
                          train_dataset=data if data is not None else make_data())
    if stop_at is not None:
        trainer.add_callback(StopAt(stop_at))
        with pytest.raises(Stop):
            trainer.train(resume_from_checkpoint=resume)
        return trainer
    trainer.train(resume_from_checkpoint=resume)
    return trainer


# ------------------------------------------------------------------ 1. a run folder belongs to one run


def test_the_run_identity_is_written_when_the_run_starts_and_copied_into_each_checkpoint(tmp_path):
    train(tmp_path / "run", stop_at=3)
    identity = json.loads((tmp_path / "run" / RUN_IDENTITY_NAME).read_text())
    assert set(identity) == {"config", "data", "arguments", "about"}
    assert len(identity["config"]["id2label"]) == 3 and identity["config"]["paradigm"] == "dmil"
    assert identity["arguments"]["stage1_learning_rate"] == 5e-5 and identity["arguments"]["seed"] == 0
    assert identity["data"]["train"]["rows"] == 16
    copy = json.loads((tmp_path / "run" / "stage-1" / "checkpoint-2" / RUN_IDENTITY_NAME).read_text())
    assert copy.pop("stage") == 1 and copy == identity


@pytest.mark.parametrize("change, item", [
    (dict(data=make_data(seed=1)), "data.train"),
    (dict(model=make_model(id2label={0: "dog", 1: "cat", 2: "cow"})), "config.id2label"),
    (dict(learning_rate=1e-3), "arguments.stage1_learning_rate"),
    (dict(seed=1), "arguments.seed"),
])
def test_resuming_into_another_runs_folder_is_refused_naming_what_differs(tmp_path, change, item):
    train(tmp_path / "run")
    marker = (tmp_path / "run" / "stage-1" / STAGE_MARKER).read_text()
    with pytest.raises(RunMismatchError, match=item) as info:
        train(tmp_path / "run", resume=True, **change)
    message = str(info.value)
    assert "belongs to another run" in message and "--overwrite_output_dir" in message
    assert "--resume_from_checkpoint true" in message and "there," in message and "now" in message
    # Nothing of the other run was taken or changed.
    assert (tmp_path / "run" / "stage-1" / STAGE_MARKER).read_text() == marker
    # The same run resumes.
    train(tmp_path / "run", resume=True)


def test_data_files_are_recorded_by_content_and_another_file_is_refused(tmp_path):
    # training/run.py gives the trainer its --train_file: a copy elsewhere is the same data, an edited file is not.
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\n")
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "train.csv", tmp_path / "copy" / "train.csv")
    (tmp_path / "edited.csv").write_text("text,label\na,1\nb,1\n")

    def run(data_file, resume=None):
        trainer = DMILTrainer(model=make_model(), args=make_args(tmp_path / "run", max_steps=1, save_strategy="no"),
                              train_dataset=make_data(), data_files={"train": str(data_file)})
        trainer.train(resume_from_checkpoint=resume)

    run(tmp_path / "train.csv")
    recorded = json.loads((tmp_path / "run" / RUN_IDENTITY_NAME).read_text())
    assert set(recorded["data"]["train"]) == {"bytes", "sha256"}
    assert recorded["about"]["data_files"] == {"train": str(tmp_path / "train.csv")}
    run(tmp_path / "copy" / "train.csv", resume=True)
    with pytest.raises(RunMismatchError, match="data.train: .*sha256"):
        run(tmp_path / "edited.csv", resume=True)


def test_a_run_that_continues_from_earlier_stages_must_be_of_the_same_model_and_data(tmp_path):
    train(tmp_path / "run", stages="1,2")
    # stages="3" starts from stage-2: another data set is refused, another stage-3 schedule is this run's choice.
    with pytest.raises(RunMismatchError, match="data.train"):
        train(tmp_path / "run", stages="3", data=make_data(seed=1))
    train(tmp_path / "run", stages="3", stage3_learning_rate=1e-3)
    assert (tmp_path / "run" / "stage-3" / STAGE_MARKER).is_file()


def test_a_checkpoint_path_anywhere_is_accepted_when_its_run_is_this_one_and_refused_when_not(tmp_path):
    straight = train(tmp_path / "straight")
    train(tmp_path / "a", stop_at=3)
    # A checkpoint copied out of its run folder (as a Hub download is): it says whose it is itself.
    elsewhere = tmp_path / "download" / "checkpoint-2"
    shutil.copytree(tmp_path / "a" / "stage-1" / "checkpoint-2", elsewhere)
    resumed = train(tmp_path / "b", resume=str(elsewhere))
    assert resumed.stage_results
    expected = load_file(tmp_path / "straight" / "stage-1" / "model.safetensors")
    actual = load_file(tmp_path / "b" / "stage-1" / "model.safetensors")
    assert all(torch.equal(actual[k], expected[k]) for k in expected), "resumed weights differ"
    del straight
    # Another run (other data) is refused the same checkpoint, wherever it lies.
    for path in (elsewhere, tmp_path / "a" / "stage-1" / "checkpoint-2"):
        with pytest.raises(RunMismatchError, match=r"the checkpoint .*checkpoint-2 belongs to another run(.|\n)*"
                                                   r"data\.train"):
            train(tmp_path / "c", resume=str(path), data=make_data(seed=1))


def test_a_fresh_run_removes_or_refuses_the_results_an_earlier_run_left(tmp_path):
    out = tmp_path / "run"
    train(out, save_strategy="no")
    for name in RESULT_NAMES:
        (out / name).write_text("{}")
    with pytest.raises(ValueError, match="already holds a run .*predict_results.json"):
        train(out, save_strategy="no")
    train(out, save_strategy="no", overwrite_output_dir=True)
    assert not any((out / name).exists() for name in RESULT_NAMES)
    # A folder holding only another run's results is another run's folder too.
    (tmp_path / "eval_only").mkdir()
    (tmp_path / "eval_only" / "predict_results.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a run \\(predict_results.json\\)"):
        train(tmp_path / "eval_only", save_strategy="no")


def load_cli():
    spec = importlib.util.spec_from_file_location("dmil_run_cli_for_identity_tests", REPO / "training" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cli_overwrite_without_training_removes_every_earlier_result_file(tmp_path):
    cli = load_cli()
    for name in RESULT_NAMES:
        (tmp_path / name).write_text("{}")
    args = DMILTrainingArguments(output_dir=str(tmp_path), do_predict=True, overwrite_output_dir=True, use_cpu=True,
                                 report_to=[])
    cli.claim_result_files(args)
    # predictions.csv without labels writes no predict_results.json: the old one must not stay beside it.
    assert not any((tmp_path / name).exists() for name in RESULT_NAMES)


def test_cli_resume_of_another_runs_folder_exits_naming_what_differs(tmp_path, capsys):
    cli = load_cli()
    argv = [
        "--do_train", "--synthetic_train_size", "32", "--synthetic_eval_size", "16", "--synthetic_modalities",
        "text,vision", "--max_steps", "1", "--per_device_train_batch_size", "16", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "out"),
    ]
    assert cli.cli(argv) == 0
    other = [*argv, "--synthetic_train_size", "48", "--resume_from_checkpoint", "true"]
    assert cli.cli(other) == 2
    error = capsys.readouterr().err
    assert "belongs to another run" in error and "data.train" in error and "--overwrite_output_dir true" in error


# ------------------------------------------------------------------ 3. a damaged stage marker


@pytest.mark.parametrize("damage", ["", '{"stage": 1, "metrics": {"train_lo'])
def test_a_cut_or_empty_stage_marker_names_the_file_and_what_to_do(tmp_path, damage):
    train(tmp_path / "run", stages="1,2", max_steps=2, save_strategy="no")
    marker = tmp_path / "run" / "stage-1" / STAGE_MARKER
    marker.write_text(damage)
    with pytest.raises(ValueError, match=f"stage marker {marker} is damaged(.|\n)*Delete that file"):
        train(tmp_path / "run", stages="1,2", max_steps=2, save_strategy="no", resume=True)
    # Doing what it says works: stage 1 trains again, stage 2 follows.
    marker.unlink()
    train(tmp_path / "run", stages="1,2", max_steps=2, save_strategy="no", resume=True)
    assert json.loads(marker.read_text())["stage"] == 1


def test_a_stage_marker_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    os.makedirs(run.stage_dir(1))
    run.mark_stage_finished(1, {"train_loss": 1.0}, adapter=False, global_step=2, log_history=[])
    before = (tmp_path / "stage-1" / STAGE_MARKER).read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of json.dump

    monkeypatch.setattr(json, "dump", killed)
    with pytest.raises(KeyboardInterrupt):
        run.mark_stage_finished(1, {"train_loss": 2.0}, adapter=False, global_step=4, log_history=[])
    assert (tmp_path / "stage-1" / STAGE_MARKER).read_text() == before
    assert sorted(os.listdir(tmp_path / "stage-1")) == [STAGE_MARKER]


# ------------------------------------------------------------------ 4. folders that cannot be written


@pytest.fixture
def unwritable(monkeypatch):
    """Make every write under a folder fail with EACCES, as a read-only folder would (root ignores permissions)."""
    folders = []

    def inside(path) -> bool:
        path = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else ""
        return any(path == f or path.startswith(f + os.sep) for f in folders)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    real_open, real_os_open, real_makedirs, real_mkdir = builtins.open, os.open, os.makedirs, os.mkdir

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_makedirs(name, *args, **kwargs):
        if inside(name) and not os.path.isdir(name):
            raise denied(name)
        return real_makedirs(name, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "makedirs", fake_makedirs)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: folders.append(os.path.abspath(folder))


class CountSteps(TrainerCallback):
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        CountSteps.steps += 1


def test_a_read_only_output_dir_fails_before_anything_trains(tmp_path, unwritable):
    out = tmp_path / "read_only"
    out.mkdir()
    unwritable(out)
    trainer = DMILTrainer(model=make_model(), args=make_args(out, stages="1,2", max_steps=2, save_strategy="no"),
                          train_dataset=make_data())
    CountSteps.steps = 0
    trainer.add_callback(CountSteps())
    with pytest.raises(OutputFolderError, match=f"cannot write the run's files to {out}: Permission denied"):
        trainer.train()
    assert CountSteps.steps == 0


@pytest.mark.parametrize("failure", ["torch_zip_writer", "enospc"])
def test_a_full_disk_at_a_checkpoint_names_the_folder_and_its_free_space(tmp_path, monkeypatch, failure):
    import transformers.modeling_utils

    out = tmp_path / "run"
    if failure == "torch_zip_writer":
        # What torch.save raises when the disk fills under it (its zip writer's RuntimeError, not an OSError).
        real_save = torch.save

        def full(obj, f, *args, **kwargs):
            if "checkpoint-4" in os.fspath(f):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2496 vs 2392")
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", full)
    else:
        real_save_file = transformers.modeling_utils.safe_save_file

        def full(tensors, filename, *args, **kwargs):
            if "checkpoint-4" in os.fspath(filename):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save_file(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    with pytest.raises(OutputFolderError, match=f"the checkpoint of step 4 to {out / 'stage-1'}.* free there") as info:
        train(out)
    assert "--resume_from_checkpoint true" in str(info.value)
    # The cut checkpoint is skipped and the run continues from the last complete one once there is room.
    monkeypatch.undo()
    train(out, resume=True)
    assert (out / "stage-1" / STAGE_MARKER).is_file()
