"""What a run leaves to look at: one run-wide step across the stages in every log and reporting integration, one log
history at the top of output_dir, the plots in final/ linked from the model card, and the final prediction's CE."""

import json

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, TrainerCallback

from dmil_hf import DMILTrainer
from dmil_hf.evaluation import make_compute_metrics
from dmil_hf.evaluation.plots import interaction_weights, plot_accuracy_per_type, plot_interaction_weights
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model


class _Steps(TrainerCallback):
    """What a reporting integration (tensorboard, wandb) sees: the step of each on_log call."""

    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in (logs or {}):
            self.seen.append((logs["stage"], state.global_step, logs["stage_step"]))


def _run(tmp_path, **kwargs):
    data = make_data(16)
    data = data.add_column("interaction_type", ["R", "U_text"] * 8)
    model = two_modality_model()
    trainer = DMILTrainer(
        model=model, args=make_args(tmp_path, max_steps=3, finetune_method="full", **kwargs), train_dataset=data,
        eval_dataset=data, compute_metrics=make_compute_metrics(model.config, interaction_types=data["interaction_type"]),
    )
    steps = _Steps()
    trainer.add_callback(steps)
    trainer.train()
    return trainer, steps


def test_logs_carry_one_run_wide_step_and_the_run_keeps_one_log(tmp_path):
    trainer, steps = _run(tmp_path)
    # Three stages of three steps each: integrations see steps 1..9, not 1..3 three times.
    assert steps.seen == [(s, 3 * (s - 1) + k, k) for s in (1, 2, 3) for k in (1, 2, 3)]
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    losses = [(e["stage"], e["step"]) for e in history if "loss" in e]
    assert losses == [(s, 3 * (s - 1) + k) for s in (1, 2, 3) for k in (1, 2, 3)]
    assert {e["stage"] for e in history if "eval_accuracy" in e} == {1, 2, 3}
    # The Trainer's own per-stage state keeps counting its stage's steps (checkpoints and schedules read it).
    assert trainer.state.global_step == 3


def test_a_resumed_run_continues_the_run_wide_step_and_log(tmp_path):
    _run(tmp_path)
    model = two_modality_model()
    # The same run (same data, interaction_type column included: a resume of another run's folder is refused).
    data = make_data(16).add_column("interaction_type", ["R", "U_text"] * 8)
    resumed = DMILTrainer(model=model, args=make_args(tmp_path, max_steps=3, finetune_method="full"),
                          train_dataset=data)
    steps = _Steps()
    resumed.add_callback(steps)
    (tmp_path / "run" / "stage-3" / "dmil_stage.json").unlink()  # stage 3 was interrupted: it runs again
    resumed.train(resume_from_checkpoint=True)
    assert steps.seen == [(3, 6 + k, k) for k in (1, 2, 3)]
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert [(e["stage"], e["step"]) for e in history if "loss" in e] == [(s, 3 * (s - 1) + k) for s in (1, 2, 3) for k in (1, 2, 3)]


def test_the_card_links_the_plots_in_final(tmp_path):
    # The trainer draws no plots: training/run.py draws them into final/plots from its one Trainer.predict pass
    # (dmil_hf.evaluation.plots.save_plots; its test is the evaluation area's) and has the card rewritten to link them.
    trainer, _ = _run(tmp_path)
    final = tmp_path / "run" / "final"
    assert not (final / "plots").exists() and "](plots/" not in (final / "README.md").read_text()
    (final / "plots").mkdir()
    names = ["accuracy_per_type.png", "interaction_weights.png", "training_curves.png"]
    for name in names:
        (final / "plots" / name).write_bytes(b"")
    trainer.write_model_card(str(final))
    card = (final / "README.md").read_text()
    for name in names:
        assert f"](plots/{name})" in card


def test_interaction_weights_of_any_model_and_dataset_and_its_plot(tmp_path):
    pytest.importorskip("matplotlib")
    model = two_modality_model()
    data = make_data(10).add_column("interaction_type", ["R"] * 5 + ["S"] * 5)
    gate = interaction_weights(model, data, batch_size=4)
    assert gate["weights"].shape == (10, 4) and gate["types"] == ["R"] * 5 + ["S"] * 5
    np.testing.assert_allclose(gate["weights"].sum(1), 1.0, rtol=1e-5)
    with torch.no_grad():
        direct = model.eval()(input_ids=torch.tensor(data["input_ids"][:4]), pixel_values=torch.tensor(data["pixel_values"][:4]))
    np.testing.assert_allclose(gate["weights"][:4], direct.interaction_weights.numpy(), rtol=1e-5, atol=1e-6)
    plot_interaction_weights(gate, tmp_path / "gate.png")
    plot_accuracy_per_type({"dmil": {"R": 0.9, "S": 0.5}, "joint": {"R": 0.95, "S": 0.7}}, tmp_path / "types.png")
    assert (tmp_path / "gate.png").stat().st_size > 0 and (tmp_path / "types.png").stat().st_size > 0
    with pytest.raises(ValueError, match="needs a DMIL model"):
        interaction_weights(two_modality_model(paradigm="joint"), data)


def test_metrics_report_the_final_predictions_cross_entropy():
    model = two_modality_model()
    compute = make_compute_metrics(model.config)
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = compute(EvalPrediction({"logits": logits}, label_ids=np.array([0, 1])))
    expected = np.mean([np.log(np.exp(2) + 2) - 2, np.log(3)])
    assert out["ce_final"] == pytest.approx(expected)
