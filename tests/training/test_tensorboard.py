"""report_to="tensorboard": a tiny three-stage run writes TensorBoard event files to output_dir/runs, and reading them
back (tensorboard's own EventAccumulator) finds each stage's losses one after the other on the run-wide step, and the
gate's mean composition per component, in training and in each stage's evaluation. Offline: nothing leaves the
machine."""

import json
import os

import pytest

pytest.importorskip("tensorboard", reason="report_to='tensorboard' needs the tensorboard package (the test extra)")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from dmil_hf import DMILTrainer  # noqa: E402
from dmil_hf.evaluation import make_compute_metrics  # noqa: E402
from dmil_hf.testing_utils import tiny_training_arguments as make_args  # noqa: E402
from dmil_hf.testing_utils import tiny_training_dataset as make_data  # noqa: E402
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model  # noqa: E402

STEPS = 3  # per stage


def _train(tmp_path, paradigm="dmil"):
    data = make_data(16).add_column("interaction_type", ["R", "U_text"] * 8)
    model = two_modality_model(paradigm=paradigm)
    trainer = DMILTrainer(
        model=model, args=make_args(tmp_path, max_steps=STEPS, finetune_method="full", report_to=["tensorboard"]),
        train_dataset=data, eval_dataset=data,
        compute_metrics=make_compute_metrics(model.config, interaction_types=data["interaction_type"]),
    )
    trainer.train()
    return trainer


def _scalars(run_dir):
    """Every scalar tag of the run's event files: tag -> [(step, value)] in the order written."""
    (logdir,) = [os.path.join(run_dir, "runs", name) for name in os.listdir(os.path.join(run_dir, "runs"))]
    events = EventAccumulator(logdir, size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_every_stages_losses_and_the_gate_composition(tmp_path):
    trainer = _train(tmp_path)
    run = tmp_path / "run"
    # One folder for the whole run at the top of output_dir, not in stage 1's folder.
    assert not (run / "stage-1" / "runs").exists()
    scalars = _scalars(run)
    # The stages' training losses follow each other on one run-wide step: 1..3, 4..6, 7..9.
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 3 * STEPS + 1))
    stage_at = dict(scalars["train/stage"])  # every log carries its stage
    assert [stage_at[step] for step, _ in scalars["train/loss"]] == [s for s in (1, 2, 3) for _ in range(STEPS)]
    # Every figure of every training log (the loss terms each stage counts, the gate means) is a curve, point for
    # point: stage 1's decomposition terms at its steps (and stage 3's, which counts every term), the final
    # prediction's CE from stage 2 on, where the gate is built.
    history = json.loads((run / "log_history.json").read_text())
    train_logs = [e for e in history if "loss" in e]
    for name in {k for e in train_logs for k in e} - {"step", "stage", "stage_step", "epoch"}:  # also in other logs
        assert scalars[f"train/{name}"] == [(e["step"], pytest.approx(e[name])) for e in train_logs if name in e]
    assert [step for step, _ in scalars["train/kl_M_text"]] == [1, 2, 3, 7, 8, 9]
    assert [step for step, _ in scalars["train/ce_final"]] == [4, 5, 6, 7, 8, 9]
    # The gate's mean weight per component (`gate_<component>`; `gate_composition` is a loss term): with each
    # training log from stage 2 on, and over each of those stages' evaluation set.
    components = trainer.model.config.interaction_components
    assert components == ["redundancy", "uniqueness_text", "uniqueness_vision", "synergy"]
    for component in components:
        train = scalars[f"train/gate_{component}"]
        assert [step for step, _ in train] == [4, 5, 6, 7, 8, 9]
        assert all(0.0 <= value <= 1.0 for _, value in train)
        assert [step for step, _ in scalars[f"eval/gate_{component}"]] == [2 * STEPS, 3 * STEPS]
    # A composition: at each step the components' mean weights add up to 1.
    for k in range(2 * STEPS):
        assert sum(scalars[f"train/gate_{c}"][k][1] for c in components) == pytest.approx(1.0, abs=1e-5)


def test_a_baseline_logs_its_losses_and_no_gate(tmp_path):
    _train(tmp_path, paradigm="joint")
    scalars = _scalars(tmp_path / "run")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, STEPS + 1))
    assert not [tag for tag in scalars if "gate_" in tag]


def test_starting_over_removes_the_earlier_runs_events(tmp_path):
    _train(tmp_path)
    trainer = DMILTrainer(model=two_modality_model(), train_dataset=make_data(16), args=make_args(
        tmp_path, max_steps=1, finetune_method="full", report_to=["tensorboard"], overwrite_output_dir=True))
    trainer.train()
    scalars = _scalars(tmp_path / "run")  # one run folder: the earlier run's was deleted with its stages
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
