"""`compute_metrics` for `Trainer` / `DMILTrainer`: accuracy, macro-F1, synergy indicator, accuracy per interaction
type, mean gate weights per type, and per-component / per-modality accuracy, computed by the shipped
``interaction_metrics`` evaluate module (``dmil_hf/metrics/interaction_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ..configuration_dmil import DMILConfig
from .loading import load_metric

PREDICTION_KEYS = ("logits", "interaction_weights", "component_logits", "modality_logits")


@lru_cache(maxsize=None)
def _interaction_metric():
    # One loaded module per process: evaluate.load copies and imports the script, and compute() resets the module's
    # state each call, so every compute_metrics function can share it. In memory: the Trainer has already gathered
    # the predictions of every process, and evaluate's on-disk cache costs ~1 s of file locking per compute().
    return load_metric("interaction_metrics", keep_in_memory=True)


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


def _unimodal_array(unimodal_predictions: Any, config: DMILConfig) -> np.ndarray:
    if isinstance(unimodal_predictions, Mapping):
        missing = [m for m in config.modalities if m not in unimodal_predictions]
        if missing:
            raise ValueError(f"unimodal_predictions lacks modalities {missing} (has {sorted(unimodal_predictions)})")
        columns = [_numpy(unimodal_predictions[m]) for m in config.modalities]
        # A (N, C) logit array per modality is reduced to class ids; a (N,) array is taken as ids already.
        return np.stack([c.argmax(-1) if c.ndim == 2 else c for c in columns], axis=1)
    array = _numpy(unimodal_predictions)
    return array.argmax(-1) if array.ndim == 3 else array


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
            class ids, an `(N, K, C)` logit array, or a dict modality -> ids `(N,)` or logits `(N, C)`. When given it
            takes precedence over the model's `modality_logits`.

    Returns:
        A function of an `EvalPrediction` (or a `(predictions, label_ids)` pair) returning flat float metrics:
        ``accuracy``, ``f1_macro``, ``ce_final`` (the final prediction's cross-entropy), ``synergy_indicator`` (when
        unimodal predictions exist), ``accuracy_<type>``,
        ``gate_<component>`` and ``gate_<component>_<type>``, ``component_accuracy_<name>``,
        ``modality_accuracy_<modality>`` (always of the model's own unimodal heads, never of the reference).

    Example:

    ```python
    >>> import numpy as np
    >>> from transformers import EvalPrediction
    >>> from dmil_hf.metrics import make_compute_metrics
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
    metric = _interaction_metric()
    types = None if interaction_types is None else [str(t) for t in interaction_types]
    reference_unimodal = None if unimodal_predictions is None else _unimodal_array(unimodal_predictions, config)
    components = list(config.interaction_components)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        if hasattr(eval_pred, "predictions"):
            predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        else:
            predictions, label_ids = eval_pred
        outputs = split_predictions(predictions, config)
        labels = _numpy(label_ids).reshape(-1).astype(np.int64)
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
        unimodal = reference_unimodal
        if unimodal is None and "modality_logits" in outputs:
            unimodal = outputs["modality_logits"].argmax(-1)
        if unimodal is not None:
            if unimodal.shape != (n, len(config.modalities)):
                raise ValueError(
                    f"unimodal predictions must have shape ({n}, {len(config.modalities)}), got {unimodal.shape}"
                )
            kwargs["unimodal_predictions"] = unimodal
        if "modality_logits" in outputs:
            kwargs.update(modality_predictions=outputs["modality_logits"].argmax(-1), modality_names=config.modalities)
        if "interaction_weights" in outputs:
            kwargs.update(gate_weights=outputs["interaction_weights"], component_names=components)
        if "component_logits" in outputs:
            kwargs.update(component_predictions=outputs["component_logits"].argmax(-1), component_names=components)
        results = metric.compute(predictions=outputs["logits"].argmax(-1), references=labels, **kwargs)
        # The final prediction's own cross-entropy: comparable across stages and paradigms, unlike the loss, which sums
        # every term a stage counts (stage 3 the most).
        logits = outputs["logits"].astype(np.float64)
        log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        results["ce_final"] = float(np.mean(log_z - logits[np.arange(n), labels]))
        return {k: float(v) for k, v in results.items()}

    return compute_metrics


def per_type_summary(
    metrics: Mapping[str, float], components: Sequence[str], prefix: str = "eval_"
) -> list[tuple[str, float, list[float | None]]]:
    """Read `compute_metrics`' per-type figures back out of a metrics dict: one `(type, accuracy, gates)` row per
    interaction type, `gates` holding the mean gate weight of each component (None where it was not reported)."""
    head = f"{prefix}accuracy_"
    kinds = sorted(k[len(head):] for k in metrics if k.startswith(head))
    return [
        (kind, metrics[head + kind], [metrics.get(f"{prefix}gate_{c}_{kind}") for c in components]) for kind in kinds
    ]


__all__ = ["PREDICTION_KEYS", "make_compute_metrics", "per_type_summary", "split_predictions"]
