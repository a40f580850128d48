# Copyright 2026 The dmil_hf authors. Licensed under the Apache License, Version 2.0.
"""Interaction metrics for multimodal classification: accuracy, macro-F1, the synergy indicator, accuracy per
interaction type, mean gate weights per type, and per-component / per-modality accuracies.

Loaded offline from its local folder with `evaluate.load` (see `dmil_hf.metrics.load_metric`). evaluate scans this
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
    >>> import dmil_hf.metrics
    >>> metric = dmil_hf.metrics.load_metric("interaction_metrics")
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


def _in_order(types):
    # Types in order of first appearance: reports then list them as the data presents them, deterministically.
    seen = {}
    for t in types:
        seen.setdefault(str(t), None)
    return list(seen)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class InteractionMetrics(evaluate.Metric):
    """Accuracy, macro-F1, synergy indicator, per-type accuracy and gate weights in one `evaluate` module.

    `predictions` and `references` stream through `add_batch`; the per-sample extras (unimodal predictions, types,
    gate weights, component predictions) are passed to `compute`, aligned with the streamed samples.
    """

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://arxiv.org/abs/2606.11614"],
        )

    def _compute(
        self,
        predictions,
        references,
        unimodal_predictions=None,
        modality_predictions=None,
        modality_names=None,
        interaction_types=None,
        gate_weights=None,
        component_predictions=None,
        component_names=None,
        labels=None,
    ):
        predictions, references = np.asarray(predictions), np.asarray(references)
        results = {"accuracy": accuracy(predictions, references), "f1_macro": f1_macro(predictions, references, labels)}
        if unimodal_predictions is not None:
            results["synergy_indicator"] = synergy_indicator(predictions, references, unimodal_predictions)
        if modality_predictions is not None:
            if modality_names is None:
                raise ValueError("modality_predictions need modality_names")
            results.update(per_column_accuracy(modality_predictions, references, modality_names, "modality_accuracy"))
        if interaction_types is not None:
            results.update(accuracy_per_type(predictions, references, interaction_types))
        if (gate_weights is not None or component_predictions is not None) and component_names is None:
            raise ValueError("gate_weights and component_predictions need component_names")
        if gate_weights is not None:
            results.update(gate_means(gate_weights, component_names, interaction_types))
        if component_predictions is not None:
            results.update(
                per_column_accuracy(component_predictions, references, component_names, "component_accuracy")
            )
        return results
