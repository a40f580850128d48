"""`compute_metrics` for `Trainer` / `DMILTrainer`: accuracy, macro-F1, synergy indicator, accuracy per interaction
type, mean gate weights per type, and per-component / per-modality accuracy (multi-label: exact-match accuracy and
micro/macro-F1; regression: MAE, MSE and Pearson's r), computed by the shipped ``interaction_metrics`` evaluate
module (``dmil_hf/evaluation/interaction_metrics``, one config per problem type).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..models.dmil.configuration_dmil import DMILConfig
from .metric_modules import load_metric

PREDICTION_KEYS = ("logits", "interaction_weights", "component_logits", "modality_logits")


@lru_cache(maxsize=None)
def _interaction_metric(problem_type: str = "single_label_classification"):
    # One loaded module per process and problem type: evaluate.load copies and imports the script, and compute()
    # resets the module's state each call, so every compute_metrics function can share it. In memory: the Trainer has
    # already gathered the predictions of every process, and evaluate's on-disk cache costs ~1 s of file locking per
    # compute().
    return load_metric("interaction_metrics", config_name=problem_type, keep_in_memory=True)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


def _binary_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    return float(-np.mean(targets * _log_sigmoid(logits) + (1 - targets) * _log_sigmoid(-logits)))


@dataclass(frozen=True)
class _Reading:
    """How the metrics read one problem type: the labels as the metric module takes them, a head's output as a
    decision (class ids, multi-hot rows, predicted values), and the final prediction's own loss (the comparable
    figure across stages and paradigms; the loss sums every term a stage counts)."""

    labels: Callable[[np.ndarray, int], np.ndarray]
    decide: Callable[[np.ndarray], np.ndarray]
    final_loss: tuple[str, Callable[[np.ndarray, np.ndarray], float]] | None


_READINGS = {
    "single_label_classification": _Reading(
        labels=lambda y, c: y.reshape(-1).astype(np.int64),
        decide=lambda logits: logits.argmax(-1),
        final_loss=("ce_final", _cross_entropy),
    ),
    "multi_label_classification": _Reading(
        labels=lambda y, c: y.reshape(len(y), c).astype(np.float64),
        decide=lambda logits: (logits > 0).astype(np.int64),
        final_loss=("bce_final", _binary_cross_entropy),
    ),
    "regression": _Reading(
        labels=lambda y, c: y.reshape(len(y), c).astype(np.float64),
        decide=lambda values: values.astype(np.float64),
        final_loss=None,
    ),
}


def _problem_type(config: DMILConfig, label_ids: np.ndarray) -> str:
    """The config's problem type (the model sets it on its first forward with labels), else transformers' rule on
    the number of labels and the labels' dtype."""
    if config.problem_type:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    integer = np.issubdtype(label_ids.dtype, np.integer)
    return "single_label_classification" if integer else "multi_label_classification"


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value)


def split_predictions(predictions: Any, config: DMILConfig) -> dict[str, np.ndarray]:
    """Name the model outputs in `EvalPrediction.predictions`, whatever form the trainer gave them.

    `DMILTrainer.prediction_step` gives a dict keyed by output name. A plain `Trainer` gives the output tuple with the
    `None` fields dropped, so position alone is ambiguous (ensemble: logits, modality_logits; DMIL stage 1: the same;
    DMIL: four arrays): the extras are recognised by shape instead, which is unambiguous because the gate and the
    component heads have K + 2 columns and the unimodal heads K.
    """
    if isinstance(predictions, Mapping):
        unknown = set(predictions) - set(PREDICTION_KEYS)
        named = {k: _numpy(v) for k, v in predictions.items() if k in PREDICTION_KEYS and v is not None}
        if "logits" not in named:
            raise ValueError(
                f"predictions dict has no 'logits' (keys: {sorted(predictions)}; not model outputs: {sorted(unknown)})"
            )
        return named
    items = list(predictions) if isinstance(predictions, (tuple, list)) else [predictions]
    if not items:
        raise ValueError("predictions are empty")
    named = {"logits": _numpy(items[0])}
    k = len(config.modalities)
    for item in items[1:]:
        array = _numpy(item)
        if array.ndim == 3 and array.shape[1] == k:
            named["modality_logits"] = array
        elif array.ndim == 3 and array.shape[1] == k + 2:
            named["component_logits"] = array
        elif array.ndim == 2 and array.shape[1] == k + 2:
            named["interaction_weights"] = array
    return named


def _unimodal_array(unimodal_predictions: Any, config: DMILConfig) -> np.ndarray | list[np.ndarray]:
    """The unimodal reference as given: an `(N, K)` (class ids) or `(N, K, C)` (logits, or multi-hot rows) array, or
    one array per modality in `config.modalities` order; each evaluation reduces it to decisions for its problem type
    (`_unimodal_decisions`)."""
    if isinstance(unimodal_predictions, Mapping):
        missing = [m for m in config.modalities if m not in unimodal_predictions]
        if missing:
            raise ValueError(f"unimodal_predictions lacks modalities {missing} (has {sorted(unimodal_predictions)})")
        return [_numpy(unimodal_predictions[m]) for m in config.modalities]
    return _numpy(unimodal_predictions)


def _decisions(array: np.ndarray, problem_type: str, id_rank: int) -> np.ndarray:
    """Class ids (single-label: logits of rank `id_rank + 1` are reduced by argmax) or multi-hot rows (multi-label:
    float logits are thresholded at 0, probability 1/2; integer rows are taken as they are)."""
    if problem_type == "single_label_classification":
        return array.argmax(-1) if array.ndim == id_rank + 1 else array
    if problem_type == "multi_label_classification":
        return (array > 0).astype(np.int64) if np.issubdtype(array.dtype, np.floating) else array
    raise ValueError(
        "unimodal_predictions serve the synergy indicator, which a regression does not have (every unimodal "
        "prediction 'wrong' has no threshold-free meaning for real targets)"
    )


def _unimodal_decisions(reference: np.ndarray | list[np.ndarray], problem_type: str) -> np.ndarray:
    if isinstance(reference, list):  # one column per modality: ids (N,) or logits (N, C) each
        return np.stack([_decisions(column, problem_type, 1) for column in reference], axis=1)
    return _decisions(reference, problem_type, 2)


def make_compute_metrics(
    config: DMILConfig,
    interaction_types: Sequence[str] | None = None,
    unimodal_predictions: Any = None,
) -> Callable[[Any], dict[str, float]]:
    """Build a `compute_metrics` function for `Trainer(compute_metrics=...)`.

    Args:
        config: the model's config (modality and component names).
        interaction_types: the interaction type of every evaluation sample, in evaluation order (e.g.
            `eval_dataset["interaction_type"]`); adds ``accuracy_<type>`` and ``gate_<component>_<type>``.
        unimodal_predictions: reference unimodal predictions for the synergy indicator when the model has none of
            its own (the joint baseline), or to score every paradigm against the same reference: an `(N, K)` array of
            class ids, an `(N, K, C)` logit array (multi-label: logits, or integer multi-hot rows), or a dict
            modality -> ids `(N,)` or logits `(N, C)`. When given it takes precedence over the model's
            `modality_logits`. Not for a regression (no synergy indicator).

    Returns:
        A function of an `EvalPrediction` (or a `(predictions, label_ids)` pair) returning flat float metrics, by
        `config.problem_type` (read at each call; without one, transformers' rule on `num_labels` and the labels'
        dtype):

        * single-label: ``accuracy``, ``f1_macro``, ``ce_final`` (the final prediction's cross-entropy),
          ``synergy_indicator`` (when unimodal predictions exist), ``accuracy_<type>``, ``gate_<component>`` and
          ``gate_<component>_<type>``, ``component_accuracy_<name>``, ``modality_accuracy_<modality>`` (always of
          the model's own unimodal heads, never of the reference);
        * multi-label (a label is on where its logit is > 0): ``accuracy`` (exact match), ``f1_micro``,
          ``f1_macro``, ``bce_final``, ``synergy_indicator``, ``accuracy_<type>`` and ``f1_micro_<type>``, the
          gates, ``component_f1_micro_<name>``, ``modality_f1_micro_<modality>``;
        * regression: ``mae``, ``mse``, ``pearson``, ``mae_<type>``, the gates, ``component_mae_<name>``,
          ``modality_mae_<modality>``.

    Example:

    ```python
    >>> import numpy as np
    >>> from transformers import EvalPrediction
    >>> from dmil_hf.evaluation import make_compute_metrics
    >>> from dmil_hf.data import SyntheticInteractionSpec, tiny_config_for
    >>> config = tiny_config_for(SyntheticInteractionSpec(modalities=("text", "vision"), num_labels=2), "ensemble")
    >>> compute_metrics = make_compute_metrics(config, interaction_types=["R", "S"])
    >>> logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> modality_logits = np.array([[[2.0, 0.0], [2.0, 0.0]], [[2.0, 0.0], [2.0, 0.0]]])
    >>> predictions = {"logits": logits, "modality_logits": modality_logits}
    >>> metrics = compute_metrics(EvalPrediction(predictions, label_ids=np.array([0, 1])))
    >>> metrics["accuracy"], metrics["synergy_indicator"], metrics["accuracy_S"]
    (1.0, 0.5, 1.0)
    ```
    """
    types = None if interaction_types is None else [str(t) for t in interaction_types]
    reference_unimodal = None if unimodal_predictions is None else _unimodal_array(unimodal_predictions, config)
    components = list(config.interaction_components)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        if hasattr(eval_pred, "predictions"):
            predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        else:
            predictions, label_ids = eval_pred
        outputs = split_predictions(predictions, config)
        label_ids = _numpy(label_ids)
        # Read at every evaluation: a config without a problem type gets one on the model's first forward.
        problem_type = _problem_type(config, label_ids)
        reading = _READINGS[problem_type]
        labels = reading.labels(label_ids, config.num_labels)
        n = len(labels)
        for name, array in outputs.items():
            if len(array) != n:
                raise ValueError(f"{name} has {len(array)} rows for {n} labels")
        kwargs: dict[str, Any] = {}
        if types is not None:
            if len(types) != n:
                raise ValueError(
                    f"interaction_types has {len(types)} entries but the evaluation has {n} samples: pass the "
                    "types of the evaluation dataset, in its order"
                )
            kwargs["interaction_types"] = types
        unimodal = None
        if reference_unimodal is not None:
            unimodal = _unimodal_decisions(reference_unimodal, problem_type)
        elif "modality_logits" in outputs and problem_type != "regression":
            unimodal = reading.decide(outputs["modality_logits"])
        if unimodal is not None:
            expected = (n, len(config.modalities), *labels.shape[1:])
            if unimodal.shape != expected:
                raise ValueError(f"unimodal predictions must have shape {expected}, got {unimodal.shape}")
            kwargs["unimodal_predictions"] = unimodal
        if "modality_logits" in outputs:
            kwargs.update(modality_predictions=reading.decide(outputs["modality_logits"]), modality_names=config.modalities)
        if "interaction_weights" in outputs:
            kwargs.update(gate_weights=outputs["interaction_weights"], component_names=components)
        if "component_logits" in outputs:
            kwargs.update(component_predictions=reading.decide(outputs["component_logits"]), component_names=components)
        references = (labels >= 0.5).astype(np.int64) if problem_type == "multi_label_classification" else labels
        metric = _interaction_metric(problem_type)
        results = metric.compute(predictions=reading.decide(outputs["logits"]), references=references, **kwargs)
        if reading.final_loss is not None:
            name, loss = reading.final_loss
            results[name] = loss(outputs["logits"], labels)
        return {k: float(v) for k, v in results.items()}

    return compute_metrics


def per_type_summary(
    metrics: Mapping[str, float], components: Sequence[str], prefix: str = "eval_", metric: str = "accuracy"
) -> list[tuple[str, float, list[float | None]]]:
    """Read `compute_metrics`' per-type figures back out of a metrics dict: one `(type, value, gates)` row per
    interaction type, `value` the type's `metric` (``"accuracy"``; ``"mae"`` for a regression, ``"f1_micro"``) and
    `gates` the mean gate weight of each component (None where it was not reported)."""
    head = f"{prefix}{metric}_"
    kinds = sorted(k[len(head):] for k in metrics if k.startswith(head))
    return [
        (kind, metrics[head + kind], [metrics.get(f"{prefix}gate_{c}_{kind}") for c in components]) for kind in kinds
    ]


__all__ = ["PREDICTION_KEYS", "make_compute_metrics", "per_type_summary", "split_predictions"]
