"""predictions.csv and the pipeline give the same answer: for one model and the same raw inputs, the rows that
`write_predictions` writes from a `DMILTrainer.predict` pass hold the label (or labels, or value) and the score that
`pipeline("multimodal-classification")` returns, for each problem type. The plots draw from the same predict output,
and `split_predictions` names a predict output's arrays by key, never by shape."""

import csv
import json

import numpy as np
import pytest
import torch

from dmil_hf import DMILForMultimodalClassification, DMILTrainer
from dmil_hf.data import SyntheticInteractionSpec, synthetic_processor, tiny_config_for
from dmil_hf.evaluation.predictions import write_predictions
from dmil_hf.models.dmil.pipeline_dmil import TASK, MultimodalClassificationPipeline
from dmil_hf.models.dmil.problem_types_dmil import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from dmil_hf.training.data_collator import DMILDataCollator
from dmil_hf import DMILTrainingArguments

NAMES = {0: "cat", 1: "dog", 2: "bird"}
N = 6


def _samples(problem_type, seed=0):
    """Raw inputs (text and an image) with a label of the problem type, as a user's rows hold them."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N):
        words = [f"a{rng.integers(3)}", *(f"w{rng.integers(4)}" for _ in range(i % 3)), f"b{rng.integers(3)}"]
        label = {SINGLE_LABEL: int(rng.integers(3)), MULTI_LABEL: rng.integers(0, 2, 3).tolist(),
                 REGRESSION: float(rng.normal())}[problem_type]
        rows.append({"text": " ".join(words), "image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                     "label": label})
    return rows


def _model_and_processor(problem_type):
    spec = SyntheticInteractionSpec(modalities=("text", "vision"), num_labels=3)
    if problem_type == REGRESSION:
        spec = spec.replace(task="regression")
        labels = {}
    else:
        labels = {"id2label": NAMES, "label2id": {v: k for k, v in NAMES.items()}}
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(tiny_config_for(spec, latent_dim=8, problem_type=problem_type, **labels))
    return model.eval(), synthetic_processor(spec)


def _csv_rows(model, processor, samples, tmp_path):
    args = DMILTrainingArguments(
        output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], per_device_eval_batch_size=4,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = DMILTrainer(model=model, args=args, data_collator=DMILDataCollator(processor))
    output = trainer.predict(samples)
    path = tmp_path / "predictions.csv"
    write_predictions(output, model.config, path, ids=[f"s{i}" for i in range(N)], id_name="sample")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("problem_type", [SINGLE_LABEL, MULTI_LABEL, REGRESSION])
def test_predictions_csv_and_the_pipeline_agree(problem_type, tmp_path):
    model, processor = _model_and_processor(problem_type)
    samples = _samples(problem_type)
    rows = _csv_rows(model, processor, samples, tmp_path)
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)
    answers = pipe([{"text": s["text"], "image": s["image"]} for s in samples], top_k=None)
    assert [row["sample"] for row in rows] == [f"s{i}" for i in range(N)]
    components = model.config.interaction_components
    for sample, row, answer in zip(samples, rows, answers):
        scores = {entry["label"]: entry["score"] for entry in answer}
        if problem_type == SINGLE_LABEL:
            # The pipeline's best label and its softmax probability.
            assert row["prediction"] == answer[0]["label"]
            assert float(row["score"]) == pytest.approx(answer[0]["score"], abs=2e-6)
            assert row["label"] == NAMES[sample["label"]]
        elif problem_type == MULTI_LABEL:
            # Each label's sigmoid probability, and the labels above 1/2 as the prediction.
            for name in NAMES.values():
                assert float(row[f"score_{name}"]) == pytest.approx(scores[name], abs=2e-6)
            assert json.loads(row["prediction"]) == [n for n in NAMES.values() if scores[n] > 0.5]
            assert json.loads(row["label"]) == [n for k, n in NAMES.items() if sample["label"][k]]
        else:
            # The predicted value itself, never an argmax.
            assert list(scores) == ["target"]
            assert float(row["prediction"]) == pytest.approx(scores["target"], rel=1e-5, abs=1e-6)
            assert float(row["label"]) == pytest.approx(sample["label"], rel=1e-5)
        # The gate: the same weights in both.
        for component in components:
            weight = answer[0]["interactions"][component]
            assert float(row[f"interaction_{component}"]) == pytest.approx(weight, abs=2e-6)
    if problem_type == MULTI_LABEL:
        # The samples are not all decided alike (the comparison above would hold for a constant model too).
        assert len({row["prediction"] for row in rows}) > 1 or len({row["score_cat"] for row in rows}) > 1


def test_the_plots_come_from_the_same_predict_output(tmp_path):
    pytest.importorskip("matplotlib")
    from dmil_hf.evaluation import make_compute_metrics
    from dmil_hf.evaluation.plots import gate_of_predictions, save_plots

    types = ["R", "S"] * (N // 2)
    for problem_type in (SINGLE_LABEL, REGRESSION):
        model, processor = _model_and_processor(problem_type)
        args = DMILTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[],
                                     per_device_eval_batch_size=4, remove_unused_columns=False, disable_tqdm=True)
        trainer = DMILTrainer(model=model, args=args, data_collator=DMILDataCollator(processor),
                              compute_metrics=make_compute_metrics(model.config, interaction_types=types))
        output = trainer.predict(_samples(problem_type))
        gate = gate_of_predictions(output, model.config, types)
        np.testing.assert_array_equal(gate["weights"], output.predictions["interaction_weights"])
        assert gate["types"] == types
        logits = output.predictions["logits"]
        if problem_type == REGRESSION:
            np.testing.assert_allclose(gate["predictions"], logits)  # the value, never an argmax
        else:
            np.testing.assert_array_equal(gate["predictions"], logits.argmax(-1))
        history = [{"loss": 1.0, "step": 1, "stage": 1}, {"loss": 0.5, "step": 2, "stage": 2}]
        folder = tmp_path / problem_type / "plots"
        folder.mkdir(parents=True)
        (folder / "stale.png").write_bytes(b"")  # an earlier save's picture is not this model's
        saved = save_plots(output, model.config, folder, log_history=history, interaction_types=types)
        expected = ["training_curves.png", "interaction_weights.png"]
        if problem_type == SINGLE_LABEL:  # the metrics' accuracy per type (a regression has none)
            expected.insert(1, "accuracy_per_type.png")
        assert [p.rsplit("/", 1)[-1] for p in saved] == expected
        assert sorted(p.name for p in folder.iterdir()) == sorted(expected)


def test_split_predictions_names_outputs_by_key_never_by_shape():
    from dmil_hf.evaluation import PREDICTION_KEYS, make_compute_metrics, split_predictions

    spec = SyntheticInteractionSpec(modalities=("text", "vision"), num_labels=4)  # 4 labels = K + 2 components
    config = tiny_config_for(spec, latent_dim=8)
    rng = np.random.default_rng(0)
    logits, weights = rng.normal(size=(5, 4)), rng.dirichlet(np.ones(4), size=5)
    components, modalities = rng.normal(size=(5, 4, 4)), rng.normal(size=(5, 2, 4))
    # logits and interaction_weights have one shape here: the names come from the keys (or DMILOutput's order).
    named = split_predictions((logits, weights, components, modalities), config)
    assert named["logits"] is logits and named["interaction_weights"] is weights
    named = split_predictions((weights, logits), config, keys=("interaction_weights", "logits"))
    assert named["logits"] is logits and named["interaction_weights"] is weights
    assert split_predictions({"logits": logits, "interaction_weights": weights}, config)["logits"] is logits
    # A plain Trainer's tuple after a labelled pass ends with the loss_terms dict: no prediction.
    assert list(split_predictions((logits, modalities, {"ce_final": 0.3}), config)) == ["logits", "modality_logits"]
    with pytest.raises(ValueError, match="keys="):
        split_predictions((logits, weights, components), config)
    with pytest.raises(ValueError, match="interaction_weights has shape"):
        split_predictions((logits, modalities), config, keys=("logits", "interaction_weights"))
    labels = logits.argmax(-1)
    metrics = make_compute_metrics(config, prediction_keys=PREDICTION_KEYS[:2])(((logits, weights), labels))
    assert metrics["accuracy"] == 1.0 and metrics["gate_redundancy"] == pytest.approx(weights[:, 0].mean())
