"""`compute_metrics` for `Trainer` / `DMILTrainer`: accuracy, macro-F1, synergy indicator, accuracy per interaction
type, mean gate weights per type, and per-component / per-modality accuracy (multi-label: exact-match accuracy and
micro/macro-F1; regression: MAE, MSE and Pearson's r), computed by the shipped ``interaction_metrics`` evaluate
module (``dmil_hf/evaluation/interaction_metrics``, one config per problem type).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..models.dmil.configuration_dmil import DMILConfig
from ..models.dmil.problem_types_dmil import (
    PROBLEM_TYPES,
    REGRESSION,
    SINGLE_LABEL,
    ProblemType,
    resolve_problem_type,
)
from .metric_modules import load_metric

# The model's prediction outputs, in the order of `DMILOutput`'s fields (the order a plain Trainer's tuple keeps).
PREDICTION_KEYS = ("logits", "interaction_weights", "component_logits", "modality_logits")
# What a plain `Trainer`'s prediction tuple holds: the model's output fields that are not None, in `DMILOutput`'s
# order (the loss left out; a `loss_terms` dict is no array). Each paradigm returns one of these sets, so the number
# of arrays names them: joint (and any logits-only model) the logits; ensemble, two-stage, I2M2 and DMIL's first
# stage the unimodal heads too; DMIL every output.
_TUPLE_KEYS = {
    1: ("logits",),
    2: ("logits", "modality_logits"),
    4: PREDICTION_KEYS,
}


@lru_cache(maxsize=None)
def _interaction_metric(problem_type: str = SINGLE_LABEL):
    # One loaded module per process and problem type: evaluate.load copies and imports the script, and compute()
    # resets the module's state each call, so every compute_metrics function can share it. In memory: the Trainer has
    # already gathered the predictions of every process, and evaluate's on-disk cache costs ~1 s of file locking per
    # compute().
    return load_metric("interaction_metrics", config_name=problem_type, keep_in_memory=True)


def decide(problem: ProblemType, logits: np.ndarray) -> np.ndarray:
    """The problem type's prediction (`ProblemType.decide`) of a numpy array of logits: class ids, multi-hot rows or
    values."""
    return problem.decide(torch.as_tensor(np.asarray(logits))).numpy()


def problem_type_of_predictions(config: DMILConfig, label_ids: Any = None) -> str:
    """The config's problem type (the model sets it on its first forward with labels), else the one the model would
    take for these labels (`resolve_problem_type`: transformers' rule on the number of labels and their dtype)."""
    labels = None if label_ids is None else torch.as_tensor(np.asarray(label_ids))
    return resolve_problem_type(config, labels)


def _numpy(value: Any) -> np.ndarray:
    if not hasattr(value, "detach"):
        return np.asarray(value)
    value = value.detach().cpu()
    # bf16 has no numpy dtype; integer class ids stay integers (their dtype says the problem type).
    return (value.float() if value.is_floating_point() else value).numpy()


def split_predictions(
    predictions: Any, config: DMILConfig, keys: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Name the model outputs in `EvalPrediction.predictions` (or `PredictionOutput.predictions`) by key.

    `DMILTrainer.prediction_step` gives a dict keyed by output name, which is taken as it is. A tuple (a plain
    `Trainer`'s) is named by `keys`, the output names of its entries in order, when given; else by `DMILOutput`'s
    field order with the `None` fields dropped, which the number of arrays settles (`_TUPLE_KEYS`). Shapes are
    checked against the names, never used to find them, so `interaction_weights` cannot be mistaken for another
    output of the same shape.
    """
    if isinstance(predictions, Mapping):
        unknown = set(predictions) - set(PREDICTION_KEYS)
        named = {k: _numpy(v) for k, v in predictions.items() if k in PREDICTION_KEYS and v is not None}
        if "logits" not in named:
            raise ValueError(
                f"predictions dict has no 'logits' (keys: {sorted(predictions)}; not model outputs: {sorted(unknown)})"
            )
    else:
        items = list(predictions) if isinstance(predictions, (tuple, list)) else [predictions]
        if keys is not None:
            keys = list(keys)
            if len(keys) != len(items):
                raise ValueError(f"predictions have {len(items)} entries for the {len(keys)} keys {keys}")
            named = {k: _numpy(v) for k, v in zip(keys, items) if k in PREDICTION_KEYS and v is not None}
            if "logits" not in named:
                raise ValueError(f"keys {keys} name no 'logits'")
        else:
            # A plain Trainer's tuple also holds the loss_terms dict of a labelled pass: no prediction.
            arrays = [_numpy(v) for v in items if v is not None and not isinstance(v, Mapping)]
            if len(arrays) not in _TUPLE_KEYS:
                raise ValueError(
                    f"predictions are a tuple of {len(arrays)} arrays, which no DMIL model output gives (1: logits; 2: "
                    "logits, modality_logits; 4: every output): pass them as a dict, or name them with keys="
                )
            named = dict(zip(_TUPLE_KEYS[len(arrays)], arrays))
    _check_shapes(named, config)
    return named


def _check_shapes(named: Mapping[str, np.ndarray], config: DMILConfig) -> None:
    """Each named output has its own shape: a misnamed one is an error, not a silent metric of the wrong array."""
    k = len(config.modalities)
    expected = {"interaction_weights": (2, k + 2, "components"), "component_logits": (3, k + 2, "components"),
                "modality_logits": (3, k, "modalities")}
    for name, (ndim, width, what) in expected.items():
        if name in named and (named[name].ndim != ndim or named[name].shape[1] != width):
            raise ValueError(
                f"{name} has shape {named[name].shape}; it must have {ndim} dimensions, the second its {width} "
                f"{what} (this config has {k} modalities)"
            )


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
    """The problem type's decisions (`ProblemType.decide`) of logits; decisions given as such are taken as they are:
    single-label class ids (rank `id_rank`, where logits have one more), multi-label integer multi-hot rows (where
    logits are floats)."""
    if problem_type == REGRESSION:
        raise ValueError(
            "unimodal_predictions serve the synergy indicator, which a regression does not have (every unimodal "
            "prediction 'wrong' has no threshold-free meaning for real targets)"
        )
    logits = array.ndim == id_rank + 1 if problem_type == SINGLE_LABEL else (
        np.issubdtype(array.dtype, np.floating)
    )
    return decide(PROBLEM_TYPES[problem_type], array) if logits else array


def _unimodal_decisions(reference: np.ndarray | list[np.ndarray], problem_type: str) -> np.ndarray:
    if isinstance(reference, list):  # one column per modality: ids (N,) or logits (N, C) each
        return np.stack([_decisions(column, problem_type, 1) for column in reference], axis=1)
    return _decisions(reference, problem_type, 2)


def make_compute_metrics(
    config: DMILConfig,
    interaction_types: Sequence[str] | None = None,
    unimodal_predictions: Any = None,
    prediction_keys: Sequence[str] | None = None,
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
        prediction_keys: the output names of a prediction tuple's entries, in order (`split_predictions`); not
            needed for `DMILTrainer`, whose predictions are a dict.

    Returns:
        A function of an `EvalPrediction` (or a `(predictions, label_ids)` pair) returning flat float metrics, by
        `config.problem_type` (read at each call; without one, transformers' rule on `num_labels` and the labels'
        dtype), each prediction the problem type's decision (`ProblemType.decide`):

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
        outputs = split_predictions(predictions, config, keys=prediction_keys)
        label_ids = _numpy(label_ids)
        # Read at every evaluation: a config without a problem type gets one on the model's first forward.
        problem_type = problem_type_of_predictions(config, label_ids)
        problem = PROBLEM_TYPES[problem_type]
        n = len(label_ids)
        for name, array in outputs.items():
            if len(array) != n:
                raise ValueError(f"{name} has {len(array)} rows for {n} labels")
        # The labels as the model's loss takes them (class ids; (N, C) multi-hot rows or targets).
        labels = problem.check_labels(torch.as_tensor(label_ids), n, config.num_labels, False)
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
        elif "modality_logits" in outputs and problem_type != REGRESSION:
            unimodal = decide(problem, outputs["modality_logits"])
        if unimodal is not None:
            expected = (n, len(config.modalities), *labels.shape[1:])
            if unimodal.shape != expected:
                raise ValueError(f"unimodal predictions must have shape {expected}, got {unimodal.shape}")
            kwargs["unimodal_predictions"] = unimodal
        if "modality_logits" in outputs:
            kwargs.update(
                modality_predictions=decide(problem, outputs["modality_logits"]), modality_names=config.modalities
            )
        if "interaction_weights" in outputs:
            kwargs.update(gate_weights=outputs["interaction_weights"], component_names=components)
        if "component_logits" in outputs:
            kwargs.update(
                component_predictions=decide(problem, outputs["component_logits"]), component_names=components
            )
        references = problem.decide_labels(labels).numpy()
        metric = _interaction_metric(problem_type)
        results = metric.compute(predictions=decide(problem, outputs["logits"]), references=references, **kwargs)
        if problem.final_loss_metric is not None:
            # The final prediction's own loss: the figure comparable across stages and paradigms (the stage's loss
            # sums every term the stage counts).
            logits = torch.as_tensor(outputs["logits"], dtype=torch.float64)
            results[problem.final_loss_metric] = float(problem.loss(logits, labels).mean())
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


__all__ = [
    "PREDICTION_KEYS",
    "decide",
    "make_compute_metrics",
    "per_type_summary",
    "problem_type_of_predictions",
    "split_predictions",
]
