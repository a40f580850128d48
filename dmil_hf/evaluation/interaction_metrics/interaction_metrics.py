# Copyright 2026 The dmil_hf authors. Licensed under the Apache License, Version 2.0.
"""Interaction metrics for multimodal classification and regression: accuracy, macro-F1, the synergy indicator,
accuracy per interaction type, mean gate weights per type, and per-component / per-modality accuracies; for a
multi-label task micro/macro-F1 and exact-match accuracy, for a regression MAE, MSE and Pearson's r (one config per
problem type: ``evaluate.load(path, config_name="regression")``).

Loaded offline from its local folder with `evaluate.load` (see `dmil_hf.evaluation.load_metric`). evaluate scans this
file's imports with a regular expression, so every import stands on its own line and the file imports nothing it does
not need (no `__future__`, no sklearn: numpy only).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Metrics for multimodal classifiers that report how a prediction rests on redundant, unique and synergistic
information (DMIL, Yang et al., CVPR 2026).

- accuracy: share of correct predictions.
- f1_macro: unweighted mean over classes of the per-class F1 = 2 TP / (2 TP + FP + FN). The classes are `labels` if
  given, else every class that occurs in the references or the predictions (scikit-learn's default); a class with no
  true, predicted or missed sample scores 0.
- synergy_indicator: share of samples that the multimodal prediction gets right while EVERY unimodal prediction is
  wrong, Syn = mean(1[y_hat = y and y_hat_m != y for all m]). Needs `unimodal_predictions`.
- accuracy_<type>: accuracy over the samples of each interaction type. Needs `interaction_types`.
- gate_<component> and gate_<component>_<type>: the mean gate weight of each component, overall and per type.
  Needs `gate_weights` and `component_names`.
- component_accuracy_<name>: accuracy of each component head. Needs `component_predictions` and `component_names`.
- modality_accuracy_<name>: accuracy of each of the model's unimodal heads. Needs `modality_predictions` and
  `modality_names`. (Kept apart from `unimodal_predictions` so that the synergy indicator can use an outside
  reference, e.g. separately trained unimodal models, while the model's own heads are still scored.)

Config "multi_label_classification" (predictions and references: multi-hot 0/1 rows of length L):
- accuracy: exact-match (subset) accuracy, the share of samples with every label right.
- f1_micro: F1 = 2 TP / (2 TP + FP + FN) over every (sample, label) pair; f1_macro: the mean over the L labels of
  each label's F1 (0 for a label never true nor predicted).
- synergy_indicator, accuracy_<type>, f1_micro_<type>, gate_*: as above, "right" meaning exact match.
- component_f1_micro_<name>, modality_f1_micro_<name>: micro-F1 of each component / unimodal head
  (`component_predictions` and `modality_predictions` of shape (N, M, L)).

Config "regression" (predictions and references: rows of T real targets):
- mae, mse: mean absolute and squared error over every (sample, target) pair.
- pearson: Pearson's r between predictions and references, averaged over the targets (NaN for a constant column).
- mae_<type>, gate_*: per interaction type. (No synergy indicator: "every unimodal prediction wrong" has no
  threshold-free meaning for real targets.)
- component_mae_<name>, modality_mae_<name>: MAE of each component / unimodal head (shape (N, M, T)).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids, shape (N,).
    references (`list` of `int`): true class ids, shape (N,).
    unimodal_predictions (array-like of `int`, *optional*): shape (N, K), the unimodal reference predictions the
        synergy indicator compares with.
    modality_predictions (array-like of `int`, *optional*): shape (N, K), the model's own unimodal heads.
    modality_names (`list` of `str`, *optional*): names of the K columns of `modality_predictions`.
    interaction_types (`list` of `str`, *optional*): the interaction type of each sample, shape (N,).
    gate_weights (array-like of `float`, *optional*): shape (N, M), per-sample weights of M components.
    component_predictions (array-like of `int`, *optional*): shape (N, M), each component head's prediction.
    component_names (`list` of `str`, *optional*): names of the M components.
    labels (`list` of `int`, *optional*): the classes macro-F1 averages over.
Returns:
    `dict` of `float`: see the description for every key.
Examples:
    >>> import dmil_hf.evaluation
    >>> metric = dmil_hf.evaluation.load_metric("interaction_metrics")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], unimodal_predictions=[[1, 1], [0, 1], [1, 1]])
    {'accuracy': 0.6666666666666666, 'f1_macro': 0.6666666666666666, 'synergy_indicator': 0.3333333333333333}
"""

_CITATION = """
@inproceedings{yang2026dmil,
  title={Information-Theoretic Decomposition for Multimodal Interaction Learning},
  author={Yang, Zequn and Wei, Yake and Ni, Haotian and Xu, Zhihao and Hu, Di},
  booktitle={CVPR},
  year={2026}
}
"""


def accuracy(predictions, references):
    predictions, references = np.asarray(predictions), np.asarray(references)
    return float((predictions == references).mean()) if len(references) else float("nan")


def f1_macro(predictions, references, labels=None):
    predictions, references = np.asarray(predictions), np.asarray(references)
    classes = np.unique(np.concatenate([predictions, references])) if labels is None else np.asarray(labels)
    if len(classes) == 0:
        return float("nan")
    scores = []
    for c in classes:
        tp = np.sum((predictions == c) & (references == c))
        fp = np.sum((predictions == c) & (references != c))
        fn = np.sum((predictions != c) & (references == c))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def synergy_indicator(predictions, references, unimodal_predictions):
    predictions, references = np.asarray(predictions), np.asarray(references)
    unimodal = np.asarray(unimodal_predictions)
    if unimodal.ndim != 2 or unimodal.shape[0] != len(references):
        raise ValueError(
            f"unimodal_predictions must have shape (N, K) = ({len(references)}, K), got {unimodal.shape}"
        )
    every_unimodal_wrong = (unimodal != references[:, None]).all(axis=1)
    return float(((predictions == references) & every_unimodal_wrong).mean()) if len(references) else float("nan")


def accuracy_per_type(predictions, references, interaction_types):
    predictions, references = np.asarray(predictions), np.asarray(references)
    types = np.asarray(interaction_types, dtype=str)
    if types.shape != references.shape:
        raise ValueError(f"interaction_types must have one entry per sample ({len(references)}), got {types.shape}")
    return {f"accuracy_{t}": accuracy(predictions[types == t], references[types == t]) for t in _in_order(types)}


def gate_means(gate_weights, component_names, interaction_types=None):
    weights = np.asarray(gate_weights, dtype=np.float64)
    names = list(component_names)
    if weights.ndim != 2 or weights.shape[1] != len(names):
        raise ValueError(f"gate_weights must have shape (N, {len(names)}) for components {names}, got {weights.shape}")
    out = {f"gate_{name}": float(weights[:, j].mean()) for j, name in enumerate(names)}
    if interaction_types is not None:
        types = np.asarray(interaction_types, dtype=str)
        if len(types) != len(weights):
            raise ValueError(f"interaction_types has {len(types)} entries for {len(weights)} gate rows")
        for t in _in_order(types):
            rows = weights[types == t]
            out.update({f"gate_{name}_{t}": float(rows[:, j].mean()) for j, name in enumerate(names)})
    return out


def per_column_accuracy(column_predictions, references, names, prefix):
    columns = np.asarray(column_predictions)
    references = np.asarray(references)
    names = list(names)
    if columns.ndim != 2 or columns.shape != (len(references), len(names)):
        raise ValueError(f"{prefix} predictions must have shape ({len(references)}, {len(names)}), got {columns.shape}")
    return {f"{prefix}_{name}": accuracy(columns[:, j], references) for j, name in enumerate(names)}


def f1_scores(predictions, references):
    """(micro, macro) F1 of multi-hot (N, L) predictions against references."""
    predictions, references = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
    tp = (predictions & references).sum(0)
    fp = (predictions & ~references).sum(0)
    fn = (~predictions & references).sum(0)
    denominator = 2 * tp + fp + fn
    micro = 2 * tp.sum() / denominator.sum() if denominator.sum() else 0.0
    per_label = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return float(micro), float(per_label.mean()) if per_label.size else float("nan")


def exact_match(predictions, references):
    predictions, references = np.asarray(predictions), np.asarray(references)
    return float((predictions == references).all(-1).mean()) if len(references) else float("nan")


def mean_absolute_error(predictions, references):
    predictions, references = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    return float(np.abs(predictions - references).mean()) if references.size else float("nan")


def pearson(predictions, references):
    """Pearson's r per target column, averaged (NaN where a column is constant)."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    denominator = np.sqrt((x**2).sum(0) * (y**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denominator > 0, (x * y).sum(0) / np.where(denominator > 0, denominator, 1.0), np.nan)
    return float(np.mean(r))


def _per_type(metric, predictions, references, interaction_types, name):
    predictions, references = np.asarray(predictions), np.asarray(references)
    types = np.asarray(interaction_types, dtype=str)
    if types.shape != references.shape[:1]:
        raise ValueError(f"interaction_types must have one entry per sample ({len(references)}), got {types.shape}")
    return {f"{name}_{t}": metric(predictions[types == t], references[types == t]) for t in _in_order(types)}


def _per_column(metric, column_predictions, references, names, prefix):
    columns, references, names = np.asarray(column_predictions), np.asarray(references), list(names)
    expected = (len(references), len(names), *references.shape[1:])
    if columns.shape != expected:
        raise ValueError(f"{prefix} predictions must have shape {expected}, got {columns.shape}")
    return {f"{prefix}_{name}": metric(columns[:, j], references) for j, name in enumerate(names)}


def _in_order(types):
    # Types in order of first appearance: reports then list them as the data presents them, deterministically.
    seen = {}
    for t in types:
        seen.setdefault(str(t), None)
    return list(seen)


def _common(results, gate_weights, component_names, interaction_types):
    if gate_weights is not None:
        if component_names is None:
            raise ValueError("gate_weights need component_names")
        results.update(gate_means(gate_weights, component_names, interaction_types))
    return results


def _check_names(predictions, names, what):
    if predictions is not None and names is None:
        raise ValueError(f"{what}_predictions need {what}_names")


def _single_label(predictions, references, unimodal_predictions=None, modality_predictions=None, modality_names=None,
                  interaction_types=None, gate_weights=None, component_predictions=None, component_names=None,
                  labels=None):
    predictions, references = np.asarray(predictions), np.asarray(references)
    results = {"accuracy": accuracy(predictions, references), "f1_macro": f1_macro(predictions, references, labels)}
    if unimodal_predictions is not None:
        results["synergy_indicator"] = synergy_indicator(predictions, references, unimodal_predictions)
    _check_names(modality_predictions, modality_names, "modality")
    if modality_predictions is not None:
        results.update(per_column_accuracy(modality_predictions, references, modality_names, "modality_accuracy"))
    if interaction_types is not None:
        results.update(accuracy_per_type(predictions, references, interaction_types))
    if (gate_weights is not None or component_predictions is not None) and component_names is None:
        raise ValueError("gate_weights and component_predictions need component_names")
    _common(results, gate_weights, component_names, interaction_types)
    if component_predictions is not None:
        results.update(per_column_accuracy(component_predictions, references, component_names, "component_accuracy"))
    return results


def _with_heads_and_types(results, predictions, references, score, score_name, per_type_scores, modality_predictions,
                          modality_names, interaction_types, gate_weights, component_predictions, component_names):
    """`results` with what every problem type adds the same way, under its own scores: `score` of each unimodal head
    (`modality_<score_name>_<m>`) and each component (`component_<score_name>_<c>`), `per_type_scores` (name ->
    function) per interaction type, and the gate's mean weights per type."""
    _check_names(modality_predictions, modality_names, "modality")
    if modality_predictions is not None:
        results.update(_per_column(score, modality_predictions, references, modality_names, f"modality_{score_name}"))
    if interaction_types is not None:
        for name, function in per_type_scores.items():
            results.update(_per_type(function, predictions, references, interaction_types, name))
    _check_names(component_predictions, component_names, "component")
    _common(results, gate_weights, component_names, interaction_types)
    if component_predictions is not None:
        results.update(
            _per_column(score, component_predictions, references, component_names, f"component_{score_name}")
        )
    return results


def _micro_f1(predictions, references):
    return f1_scores(predictions, references)[0]


def _multi_label(predictions, references, unimodal_predictions=None, modality_predictions=None, modality_names=None,
                 interaction_types=None, gate_weights=None, component_predictions=None, component_names=None,
                 labels=None):
    predictions, references = np.asarray(predictions), np.asarray(references)
    micro, macro = f1_scores(predictions, references)
    results = {"accuracy": exact_match(predictions, references), "f1_micro": micro, "f1_macro": macro}
    if unimodal_predictions is not None:
        unimodal = np.asarray(unimodal_predictions)
        if unimodal.ndim != 3 or len(unimodal) != len(references) or unimodal.shape[2:] != references.shape[1:]:
            raise ValueError(f"unimodal_predictions must have shape (N, K, L), got {unimodal.shape}")
        every_unimodal_wrong = ~(unimodal == references[:, None]).all(-1).any(1)
        right = (predictions == references).all(-1)
        results["synergy_indicator"] = float((right & every_unimodal_wrong).mean())
    return _with_heads_and_types(
        results, predictions, references, _micro_f1, "f1_micro", {"accuracy": exact_match, "f1_micro": _micro_f1},
        modality_predictions, modality_names, interaction_types, gate_weights, component_predictions, component_names,
    )


def _regression(predictions, references, unimodal_predictions=None, modality_predictions=None, modality_names=None,
                interaction_types=None, gate_weights=None, component_predictions=None, component_names=None,
                labels=None):
    predictions = np.asarray(predictions, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    results = {
        "mae": mean_absolute_error(predictions, references),
        "mse": float(((predictions - references) ** 2).mean()) if references.size else float("nan"),
        "pearson": pearson(predictions, references),
    }
    return _with_heads_and_types(
        results, predictions, references, mean_absolute_error, "mae", {"mae": mean_absolute_error},
        modality_predictions, modality_names, interaction_types, gate_weights, component_predictions, component_names,
    )


# Config name (the problem type) -> (features of predictions / references, the computation).
_CONFIGS = {
    "default": (datasets.Value("int64"), _single_label),
    "single_label_classification": (datasets.Value("int64"), _single_label),
    "multi_label_classification": (datasets.Sequence(datasets.Value("int64")), _multi_label),
    "regression": (datasets.Sequence(datasets.Value("float64")), _regression),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class InteractionMetrics(evaluate.Metric):
    """Accuracy, macro-F1, synergy indicator, per-type accuracy and gate weights in one `evaluate` module (the
    config names a problem type: `"single_label_classification"`, the default; `"multi_label_classification"`;
    `"regression"`).

    `predictions` and `references` stream through `add_batch`; the per-sample extras (unimodal predictions, types,
    gate weights, component predictions) are passed to `compute`, aligned with the streamed samples.
    """

    def _info(self):
        if self.config_name not in _CONFIGS:
            raise KeyError(f"unknown config {self.config_name!r} of interaction_metrics; choose from {sorted(_CONFIGS)}")
        feature = _CONFIGS[self.config_name][0]
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": feature, "references": feature}),
            reference_urls=["https://arxiv.org/abs/2606.11614"],
        )

    def _compute(self, predictions, references, **kwargs):
        return _CONFIGS[self.config_name][1](predictions, references, **kwargs)
