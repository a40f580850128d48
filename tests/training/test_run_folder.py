"""The run folder (`dmil_hf.training.run_folder`): the one module that knows what output_dir holds. The trainer and
the Hub publisher ask it; these tests build folders by hand, without training."""

import json
import os

import pytest

from dmil_hf.training.run_folder import (
    STAGE_MARKER,
    TRAINER_STATE_NAME,
    RunFolder,
    checkpoint_is_complete,
    holds_finished_model,
    is_stage_folder,
    last_complete_checkpoint,
    missing_optimizer_files,
)


def write_checkpoint(folder, complete=True, optimizer=True):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "model.safetensors"), "wb").close()
    if optimizer:
        open(os.path.join(folder, "optimizer.pt"), "wb").close()
        open(os.path.join(folder, "scheduler.pt"), "wb").close()
    with open(os.path.join(folder, TRAINER_STATE_NAME), "w") as f:
        f.write("{}" if complete else "{")  # a kill during the write leaves unreadable json


def finish(run, stage, **marker):
    os.makedirs(run.stage_dir(stage), exist_ok=True)
    run.mark_stage_finished(stage, {"eval_loss": 0.5}, adapter=marker.get("adapter", False), global_step=4,
                            log_history=[{"loss": 1.0, "stage": stage}])


def test_where_each_part_of_a_run_goes(tmp_path):
    run = RunFolder(tmp_path)
    assert run.stage_dir(2) == str(tmp_path / "stage-2")
    assert run.stage_adapter_dir(3) == str(tmp_path / "stage-3" / "adapter")
    assert run.final_dir == str(tmp_path / "final")
    assert run.run_log == str(tmp_path / "log_history.json")


def test_a_stage_is_finished_when_its_marker_is_there_and_resume_reads_it_back(tmp_path):
    run = RunFolder(tmp_path)
    os.makedirs(run.stage_dir(1))  # started, not finished
    finish(run, 2, adapter=True)
    assert run.stage_folders() == {1: run.stage_dir(1), 2: run.stage_dir(2)}
    assert run.finished_stages() == {2: run.stage_dir(2)}
    assert is_stage_folder(run.stage_dir(2)) and not is_stage_folder(run.stage_dir(1))
    finished = run.read_stage(2)
    assert (finished.metrics, finished.global_step, finished.adapter_dir) == (
        {"eval_loss": 0.5}, 4, run.stage_adapter_dir(2))
    assert finished.log_history == [{"loss": 1.0, "stage": 2}]
    with pytest.raises(ValueError, match=f"cannot skip stage 1: .* holds no finished stage \\({STAGE_MARKER} missing"):
        run.read_stage(1)


def test_a_marker_of_an_earlier_version_counts_as_adapter_less(tmp_path):
    # Copying an adapter of unknown origin into the final model is the worse mistake.
    run = RunFolder(tmp_path)
    os.makedirs(run.stage_adapter_dir(3))
    with open(os.path.join(run.stage_dir(3), STAGE_MARKER), "w") as f:
        json.dump({"stage": 3, "metrics": {}}, f)
    finished = run.read_stage(3)
    assert finished.adapter_dir is None and finished.global_step == 0 and finished.log_history == []


def test_checkpoints_resume_from_the_newest_complete_one(tmp_path, caplog):
    run = RunFolder(tmp_path)
    write_checkpoint(os.path.join(run.stage_dir(1), "checkpoint-2"))
    write_checkpoint(os.path.join(run.stage_dir(1), "checkpoint-10"), optimizer=False)
    write_checkpoint(os.path.join(run.stage_dir(1), "checkpoint-12"), complete=False)
    assert not checkpoint_is_complete(os.path.join(run.stage_dir(1), "checkpoint-12"))
    assert run.last_complete_checkpoint(1) == os.path.join(run.stage_dir(1), "checkpoint-10")  # 10 > 2, numerically
    assert "Skipping the incomplete checkpoint" in caplog.text and "checkpoint-12" in caplog.text
    assert last_complete_checkpoint(run.stage_dir(2)) is None
    assert missing_optimizer_files(os.path.join(run.stage_dir(1), "checkpoint-10")) == ["optimizer.pt", "scheduler.pt"]
    assert missing_optimizer_files(os.path.join(run.stage_dir(1), "checkpoint-2")) == []


def test_a_checkpoint_path_resumes_the_stage_it_is_in(tmp_path):
    run = RunFolder(tmp_path)
    write_checkpoint(os.path.join(run.stage_dir(2), "checkpoint-3"))
    write_checkpoint(os.path.join(run.stage_dir(3), "checkpoint-1"), complete=False)
    # No identity anywhere (a folder of an earlier version): placed by its stage-k folder, identity unknown.
    assert run.checkpoint_stage(os.path.join(run.stage_dir(2), "checkpoint-3"), [1, 2, 3]) == (2, None)
    with pytest.raises(ValueError, match="is a checkpoint of stage 2; this run trains the stages \\[3\\]"):
        run.checkpoint_stage(os.path.join(run.stage_dir(2), "checkpoint-3"), [3])
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        run.checkpoint_stage(os.path.join(run.stage_dir(3), "checkpoint-1"), [3])


def test_another_run_in_the_folder_is_refused_or_deleted_but_earlier_stages_are_kept(tmp_path):
    run = RunFolder(tmp_path)
    for stage in (1, 2, 3):
        finish(run, stage)
    os.makedirs(run.final_dir)
    run.write_run_log([{"loss": 1.0}])
    # Continuing from stage-2 (stages=[3]): stage-3 and final/ would be mixed with this run's, stage-1/2 are its start.
    assert run.earlier_run([3]) == [run.stage_dir(3), run.final_dir]
    with pytest.raises(ValueError, match=r"already holds a run \(stage-3, final\)\. Pass resume_from_checkpoint=True"):
        run.refuse_earlier_run([3], overwrite=False)
    stale = run.refuse_earlier_run([3], overwrite=True)
    run.delete(stale, [3])
    assert sorted(os.listdir(tmp_path)) == ["log_history.json", "stage-1", "stage-2"]  # its log is continued
    run.delete(run.refuse_earlier_run([1, 2, 3], overwrite=True), [1, 2, 3])
    assert os.listdir(tmp_path) == []
    assert run.refuse_earlier_run([1, 2, 3], overwrite=False) == []


def test_a_finished_model_needs_its_config_and_weights(tmp_path):
    assert not holds_finished_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert not holds_finished_model(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    assert holds_finished_model(tmp_path)


def test_the_hub_publisher_reads_the_run_folder_it_is_given(tmp_path):
    # python -m dmil_hf.hub.publisher push asks the run folder which stages are finished: a stage folder without
    # its marker is skipped, and a stage folder itself is not a run.
    from dmil_hf.hub.publisher import NoFinishedModelError, locate_finished_run

    run = RunFolder(tmp_path / "run")
    finish(run, 1)
    os.makedirs(run.final_dir)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    (tmp_path / "run" / "final" / "model.safetensors").write_bytes(b"")
    assert locate_finished_run(tmp_path / "run") == (tmp_path / "run", tmp_path / "run" / "final")
    assert locate_finished_run(tmp_path / "run" / "final") == (tmp_path / "run", tmp_path / "run" / "final")
    with pytest.raises(NoFinishedModelError, match="is the folder of one stage"):
        locate_finished_run(run.stage_dir(1))
