"""The shipped evaluate metric (loaded offline from its local path) and `make_compute_metrics`, against values worked
out by hand on small fixed arrays."""

import os
import re

import numpy as np
import pytest
from transformers import EvalPrediction

from dmil_hf.evaluation import METRICS_DIR, available_metrics, load_metric, metric_path
from dmil_hf.evaluation import make_compute_metrics, split_predictions

# 6 samples, 3 classes, 2 modalities.
Y = np.array([0, 1, 2, 0, 1, 2])
PRED = np.array([0, 1, 1, 0, 2, 2])  # right on samples 0, 1, 3, 5
UNI = np.array([[1, 2], [1, 0], [0, 0], [0, 2], [2, 2], [0, 0]])  # every unimodal wrong on samples 0, 2, 4, 5
TYPES = ["R", "S", "S", "R", "U_text", "S"]
GATE = np.array(
    [[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.2, 0.2, 0.2, 0.4], [0.5, 0.3, 0.1, 0.1], [0.1, 0.8, 0.05, 0.05], [0, 0, 0, 1]]
)
COMPONENTS = ["redundancy", "uniqueness_text", "uniqueness_vision", "synergy"]


@pytest.fixture(scope="module")
def metric():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: the load below must not need the Hub
    return load_metric("interaction_metrics", keep_in_memory=True)  # on-disk caching costs ~1 s per compute


def test_metric_is_shipped_and_loads_offline(metric):
    assert "interaction_metrics" in available_metrics()
    assert metric_path("interaction_metrics") == str(METRICS_DIR / "interaction_metrics")
    assert type(metric).__name__ == "InteractionMetrics"
    with pytest.raises(ValueError, match="available"):
        metric_path("accuracy")
    # The default (on-disk, multi-process capable) route works offline too.
    assert load_metric("interaction_metrics").compute(predictions=[1, 0], references=[1, 1])["accuracy"] == 0.5


def test_one_public_home_for_metrics():
    # The evaluate loader and the compute_metrics helpers are both public names of dmil_hf.evaluation.
    import dmil_hf.evaluation as metrics

    names = {"METRICS_DIR", "available_metrics", "load_metric", "metric_path", "PREDICTION_KEYS",
             "make_compute_metrics", "per_type_summary", "split_predictions"}
    assert names <= set(metrics.__all__) and all(hasattr(metrics, name) for name in names)


def test_metric_scripts_have_one_import_per_line():
    # evaluate scans imports with a regex: `import a, b` makes it demand a package called "a,".
    for script in METRICS_DIR.glob("*/*.py"):
        for line in script.read_text().splitlines():
            assert not re.match(r"^\s*import\s+\S+\s*,", line), f"{script}: {line}"
            assert not line.startswith("from __future__"), script
            # evaluate copies the script and imports it alone: it cannot reach the package it ships in.
            assert not re.match(r"^\s*(from|import)\s+(dmil_hf|\.)", line), f"{script}: {line}"


def test_accuracy_f1_and_synergy_by_hand(metric):
    out = metric.compute(predictions=PRED, references=Y, unimodal_predictions=UNI)
    assert out["accuracy"] == pytest.approx(4 / 6)
    # F1 = 2tp / (2tp + fp + fn). class 0: tp 2, fp 0, fn 0 -> 1. class 1: tp 1 (sample 1), fp 1 (sample 2),
    # fn 1 (sample 4) -> 1/2. class 2: tp 1 (sample 5), fp 1 (sample 4), fn 1 (sample 2) -> 1/2.
    assert out["f1_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    # right and every unimodal wrong: samples 0 and 5 (2 and 4 are wrong multimodally).
    assert out["synergy_indicator"] == pytest.approx(2 / 6)


def test_f1_counts_classes_seen_in_predictions_or_given(metric):
    # class 3 only predicted (F1 0), class 2 never seen unless `labels` names it.
    out = metric.compute(predictions=[0, 3, 1], references=[0, 1, 1])
    assert out["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    out = metric.compute(predictions=[0, 3, 1], references=[0, 1, 1], labels=[0, 1, 2, 3])
    assert out["f1_macro"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)


def test_per_type_gate_and_component_metrics_by_hand(metric):
    component_predictions = np.array([[0, 0, 0, 0], [1, 1, 0, 1], [2, 1, 1, 1], [0, 0, 2, 0], [1, 1, 1, 1], [2, 2, 2, 2]])
    out = metric.compute(
        predictions=PRED, references=Y, interaction_types=TYPES, gate_weights=GATE, component_names=COMPONENTS,
        component_predictions=component_predictions, modality_predictions=UNI, modality_names=["text", "vision"],
    )
    assert out["accuracy_R"] == 1.0  # samples 0, 3
    assert out["accuracy_S"] == pytest.approx(2 / 3)  # samples 1 (right), 2 (wrong), 5 (right)
    assert out["accuracy_U_text"] == 0.0  # sample 4
    assert out["gate_redundancy_R"] == pytest.approx(0.6)
    assert out["gate_synergy_S"] == pytest.approx((0.7 + 0.4 + 1.0) / 3)
    assert out["gate_uniqueness_text_U_text"] == pytest.approx(0.8)
    assert out["gate_redundancy"] == pytest.approx(GATE[:, 0].mean())
    assert out["component_accuracy_redundancy"] == pytest.approx(6 / 6)
    assert out["component_accuracy_uniqueness_text"] == pytest.approx(5 / 6)  # wrong on sample 2 only
    assert out["component_accuracy_uniqueness_vision"] == pytest.approx(3 / 6)  # right on 0, 4 and 5
    assert out["component_accuracy_synergy"] == pytest.approx(5 / 6)
    assert out["modality_accuracy_text"] == pytest.approx(2 / 6)  # samples 1, 3
    assert out["modality_accuracy_vision"] == pytest.approx(0 / 6)
    assert "synergy_indicator" not in out  # no unimodal reference was given


def test_metric_streams_batches_and_checks_shapes(metric):
    for start in range(0, 6, 2):
        metric.add_batch(predictions=PRED[start : start + 2], references=Y[start : start + 2])
    out = metric.compute(unimodal_predictions=UNI, interaction_types=TYPES)
    assert out["accuracy"] == pytest.approx(4 / 6) and out["synergy_indicator"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="unimodal_predictions"):
        metric.compute(predictions=PRED, references=Y, unimodal_predictions=UNI[:3])
    with pytest.raises(ValueError, match="component_names"):
        metric.compute(predictions=PRED, references=Y, gate_weights=GATE)
    with pytest.raises(ValueError, match="gate_weights"):
        metric.compute(predictions=PRED, references=Y, gate_weights=GATE[:, :3], component_names=COMPONENTS)


def _one_hot_logits(ids, num_classes=3):
    return np.eye(num_classes)[np.asarray(ids)] * 4.0 - 1.0


def test_compute_metrics_on_a_prediction_dict(config_factory):
    config = config_factory(modalities=("text", "vision"), num_labels=3)
    predictions = {
        "logits": _one_hot_logits(PRED),
        "interaction_weights": GATE,
        "component_logits": _one_hot_logits(np.tile(Y[:, None], (1, 4))),
        "modality_logits": _one_hot_logits(UNI),
    }
    compute = make_compute_metrics(config, interaction_types=TYPES)
    out = compute(EvalPrediction(predictions=predictions, label_ids=Y))
    assert all(isinstance(v, float) for v in out.values())
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["f1_macro"] == pytest.approx(2 / 3)
    assert out["synergy_indicator"] == pytest.approx(2 / 6)
    assert out["accuracy_S"] == pytest.approx(2 / 3)
    assert out["gate_redundancy_R"] == pytest.approx(0.6)
    assert out["component_accuracy_synergy"] == 1.0
    assert out["modality_accuracy_text"] == pytest.approx(2 / 6)
    # An outside unimodal reference (here: always right) replaces the model's own heads for the synergy indicator
    # only; the model's heads are still scored.
    out = make_compute_metrics(config, unimodal_predictions={"text": Y, "vision": _one_hot_logits(Y)})(
        EvalPrediction(predictions=predictions, label_ids=Y)
    )
    assert out["synergy_indicator"] == 0.0 and out["modality_accuracy_text"] == pytest.approx(2 / 6)


def test_compute_metrics_on_plain_logits_and_tuples(config_factory):
    joint = config_factory(modalities=("text", "vision"), paradigm="joint", num_labels=3)
    out = make_compute_metrics(joint, interaction_types=TYPES)((_one_hot_logits(PRED), Y))
    assert out["accuracy"] == pytest.approx(4 / 6) and out["accuracy_R"] == 1.0
    assert "synergy_indicator" not in out and not any(k.startswith("gate_") for k in out)
    # The joint model has no unimodal heads: the synergy indicator needs a reference.
    out = make_compute_metrics(joint, unimodal_predictions=UNI)(EvalPrediction(_one_hot_logits(PRED), Y))
    assert out["synergy_indicator"] == pytest.approx(2 / 6)
    # A plain Trainer's tuple: extras are recognised by shape.
    ensemble = config_factory(modalities=("text", "vision"), paradigm="ensemble", num_labels=3)
    out = make_compute_metrics(ensemble)(EvalPrediction((_one_hot_logits(PRED), _one_hot_logits(UNI)), Y))
    assert out["synergy_indicator"] == pytest.approx(2 / 6)
    named = split_predictions((_one_hot_logits(PRED), GATE, _one_hot_logits(np.zeros((6, 4), int)), _one_hot_logits(UNI)), joint)
    assert sorted(named) == ["component_logits", "interaction_weights", "logits", "modality_logits"]


def test_compute_metrics_rejects_misaligned_types(config_factory):
    config = config_factory(modalities=("text", "vision"), num_labels=3)
    with pytest.raises(ValueError, match="interaction_types has 2 entries"):
        make_compute_metrics(config, interaction_types=["R", "S"])((_one_hot_logits(PRED), Y))
    with pytest.raises(ValueError, match="logits"):
        make_compute_metrics(config)(({"modality_logits": _one_hot_logits(UNI)}, Y))
