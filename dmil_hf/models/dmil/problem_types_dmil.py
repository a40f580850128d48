"""Problem types: what a label is, and how each head's loss, DMIL's per-sample information estimate and the gate's
view of a prediction read it.

`PROBLEM_TYPES` maps `config.problem_type` to a `ProblemType`, the three of transformers'
`*ForSequenceClassification` models:

* ``"single_label_classification"``: labels `(batch,)` class ids; cross-entropy; the information a prediction holds
  about the label is ``log C + log p(y | x)`` nats (its gain over the uniform guess; at most ``log C``).
* ``"multi_label_classification"``: labels `(batch, num_labels)` multi-hot (0/1, or soft targets in [0, 1]);
  binary cross-entropy per label, averaged over the labels; information ``sum_l [log 2 + log p(y_l | x)]`` (the gain
  of each label's Bernoulli over the fair coin, summed; at most ``num_labels * log 2``).
* ``"regression"``: labels `(batch,)` or `(batch, num_labels)` real targets; squared error averaged over the
  targets (transformers' `MSELoss`); information ``sum_t [(y_t - mean_t)^2 - (y_t - y_hat_t)^2] / (2 var_t)``: the
  log-likelihood ratio of a Gaussian of fixed variance ``var_t`` centred on the prediction against the same Gaussian
  centred on the label mean (the best guess without inputs), with the mean and variance of the batch's labels. A
  perfect prediction scores ``(y - mean)^2 / (2 var)``, 1/2 nat on average, so the ceiling is ``num_labels / 2``;
  averaged over samples the estimate is R^2 / 2.

`infer_problem_type` is transformers' rule for a config without one (`num_labels == 1`: regression; integer labels:
single-label; otherwise multi-label); the model applies it on its first forward with labels and stores the result in
`config.problem_type`, as transformers' models do.

Every other place that needs one of these facts asks this registry: the collator (`read_labels`, and
`problem_type_of_label_values` when nobody named the type), the model (`check_labels`, `loss`, ...), the metrics and
predictions.csv (`decide`, `scores`, `decide_labels`, `final_loss_metric`) and the pipeline (`score_function`,
`scores`).

This module is copied next to ``modeling_dmil.py`` when a model is saved with remote code, so it imports only torch,
numpy and transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .inputs_dmil import check_tensor

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"


def infer_problem_type(num_labels: int, labels: torch.Tensor | None = None) -> str:
    """transformers' rule (`*ForSequenceClassification.forward`): one output is a regression; integer labels are class
    ids; anything else (float or bool labels) is multi-label. Any integer dtype counts as class ids (transformers
    names only int64 and int32), so that uint8 ids from a collator do not turn a task into a multi-label one."""
    if num_labels == 1:
        return REGRESSION
    if labels is None or (not labels.is_floating_point() and labels.dtype != torch.bool):
        return SINGLE_LABEL
    return MULTI_LABEL


def resolve_problem_type(config, labels: torch.Tensor | None = None) -> str:
    """`config.problem_type`, else the type `infer_problem_type` gives for `labels`."""
    return config.problem_type or infer_problem_type(config.num_labels, labels)


# ---------------------------------------------------------------------------------------------------- label checks


def _single_label_labels(labels: torch.Tensor, batch_size: int, num_labels: int, check_values: bool) -> torch.Tensor:
    labels = check_tensor("labels", labels, floating=False)
    if labels.dtype == torch.bool:
        raise TypeError("labels must be integer class ids (single_label_classification), got dtype torch.bool")
    if labels.shape != (batch_size,):
        hint = (
            "; multi-hot labels need problem_type='multi_label_classification'"
            if labels.shape == (batch_size, num_labels) else ""
        )
        raise ValueError(
            f"labels must have shape (batch,) = ({batch_size},) of class ids (single_label_classification), got "
            f"{tuple(labels.shape)}{hint}"
        )
    if check_values and bool(((labels < 0) | (labels >= num_labels)).any()):
        raise ValueError(f"labels must be class ids in [0, {num_labels}), got values outside that range")
    # cross_entropy takes only int64 targets; int32/uint8 ids from a collator are valid class ids too.
    return labels.long()


def _multi_label_labels(labels: torch.Tensor, batch_size: int, num_labels: int, check_values: bool) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_complex():
        raise TypeError(f"labels must be a real or boolean tensor, got dtype {labels.dtype}")
    if labels.shape != (batch_size, num_labels):
        raise ValueError(
            f"labels must have shape (batch, num_labels) = ({batch_size}, {num_labels}), multi-hot "
            f"(multi_label_classification), got {tuple(labels.shape)}"
            + ("; class ids need an integer tensor" if labels.shape == (batch_size,) else "")
        )
    labels = labels.float()
    if check_values and not bool(((labels >= 0) & (labels <= 1)).all()):
        raise ValueError("labels must be multi-hot targets in [0, 1] (multi_label_classification), got other values")
    return labels


def _regression_labels(labels: torch.Tensor, batch_size: int, num_labels: int, check_values: bool) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be real-valued targets (regression), got dtype {labels.dtype}")
    shapes = [(batch_size, num_labels)] + ([(batch_size,)] if num_labels == 1 else [])
    if tuple(labels.shape) not in shapes:
        raise ValueError(
            f"labels must have shape {' or '.join(str(s) for s in shapes)} (regression with {num_labels} "
            f"target{'s' if num_labels > 1 else ''}), got {tuple(labels.shape)}"
        )
    labels = labels.float().reshape(batch_size, num_labels)
    if check_values and not bool(torch.isfinite(labels).all()):
        raise ValueError("labels contain NaN or infinite values")
    return labels


# ------------------------------------------------------------------------------------ raw labels -> label tensors
# What a label is, as a user writes it in a dataset row: `values[i]` is example i's label (errors name it
# `examples[i]`), `label2id` the model's class names (string labels), or None.


def _label_id(label: Any, index: int, label2id: Mapping[str, int] | None) -> int:
    if label is None:
        raise ValueError(f"examples[{index}] has no label while other examples of the batch have one")
    if isinstance(label, str):
        if label2id is None or label not in label2id:
            raise ValueError(
                f"examples[{index}] has the label {label!r}, which is not in label2id "
                f"({'none given: pass label2id=model.config.label2id' if label2id is None else sorted(label2id)})"
            )
        return int(label2id[label])
    if isinstance(label, torch.Tensor):
        label = label.item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise TypeError(
            f"examples[{index}] label must be an int class id or a str label, got {type(label).__name__}"
        )
    return int(label)


def _read_class_ids(values: Sequence[Any], label2id: Mapping[str, int] | None) -> torch.Tensor:
    return torch.tensor([_label_id(label, i, label2id) for i, label in enumerate(values)], dtype=torch.long)


def _read_multi_hot(values: Sequence[Any], label2id: Mapping[str, int] | None) -> torch.Tensor:
    rows = []
    for i, label in enumerate(values):
        if not isinstance(label, (list, tuple)):
            raise TypeError(
                f"examples[{i}] label must be a multi-hot list or a list of class names for a multi-label task, "
                f"got {type(label).__name__}"
            )
        if label and all(isinstance(v, str) for v in label):
            if label2id is None:
                raise ValueError(f"examples[{i}] names its labels {label!r}, but the collator has no label2id")
            row = [0.0] * len(label2id)
            for name in label:
                row[_label_id(name, i, label2id)] = 1.0
        elif not label and label2id is not None:
            row = [0.0] * len(label2id)  # no label on
        elif label and not any(isinstance(v, (str, bool)) for v in label):
            row = [float(v) for v in label]
        else:
            raise TypeError(
                f"examples[{i}] label must be a multi-hot list of numbers or a list of class names, got {label!r}"
            )
        rows.append(row)
    if len({len(r) for r in rows}) > 1:
        raise ValueError(f"the multi-hot labels of a batch have different lengths: {[len(r) for r in rows]}")
    return torch.tensor(rows, dtype=torch.float32)


def _read_targets(values: Sequence[Any], label2id: Mapping[str, int] | None = None) -> torch.Tensor:
    rows = []
    for i, label in enumerate(values):
        flat = label if isinstance(label, (list, tuple)) else [label]
        if not flat or any(isinstance(v, (bool, np.bool_, str)) or not isinstance(v, (int, float, np.number))
                           for v in flat):
            raise TypeError(
                f"examples[{i}] label must be a number (or a list of numbers, one per target) for a regression, "
                f"got {label!r}"
            )
        rows.append([float(v) for v in flat])
    if len({len(v) for v in rows}) > 1:
        raise ValueError(f"the regression labels of a batch have different numbers of targets: {list(values)}")
    targets = torch.tensor(rows, dtype=torch.float32)
    return targets.squeeze(1) if all(not isinstance(label, (list, tuple)) for label in values) else targets


# ------------------------------------------------------------------------------------------------ per-sample losses


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="none")


def _binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(-1)


def _squared_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.float() - labels.float()).pow(2).mean(-1)


# ------------------------------------------------------------------------------ per-sample information (in nats)


def _align(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """`(B, C)` labels broadcast against `(B, ..., C)` predictions."""
    return labels.float().view(labels.shape[0], *([1] * (logits.dim() - 2)), labels.shape[-1])


def _categorical_information(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits.detach().float(), dim=-1)
    index = labels.view(-1, *([1] * (logits.dim() - 1))).expand(*logits.shape[:-1], 1)
    return math.log(logits.shape[-1]) + log_p.gather(-1, index).squeeze(-1)


def _bernoulli_information(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.detach().float()
    targets = _align(labels, logits).expand_as(logits)
    log_p = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (math.log(2.0) + log_p).sum(-1)


def _gaussian_information(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = labels.float()
    # The baseline predictor knows the label distribution, not the sample: the batch's label mean and variance
    # (a floor keeps a batch of equal labels finite; every gain is then <= 0 and clipped).
    mean, var = targets.mean(0), targets.var(0, unbiased=False).clamp(min=1e-12)
    y = _align(targets, logits)
    shape = (1,) * (logits.dim() - 1) + (-1,)
    gain = (y - mean.view(shape)).pow(2) - (y - logits.detach().float()).pow(2)
    return (gain / (2 * var.view(shape))).sum(-1)


# ------------------------------------------------------------------------------------------- the gate's view


def _log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


def _label_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(logits.float())


def _values(logits: torch.Tensor) -> torch.Tensor:
    return logits.float()


# ------------------------------------------------------------------------------------ predictions and scores
# What a user is told: the scores transformers' text-classification pipeline gives for the problem type
# (`function_to_apply`), and the decision the metrics, predictions.csv and the pipeline's top label agree on.


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=-1)


def _sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.float())


def _class_ids(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


def _labels_on(logits: torch.Tensor) -> torch.Tensor:
    # sigmoid(x) > 1/2 exactly when x > 0; comparing logits avoids a rounding tie at float32's 0.5.
    return (logits > 0).to(torch.int64)


def _class_id_labels(labels: torch.Tensor) -> torch.Tensor:
    return labels.to(torch.int64)


def _labels_held(labels: torch.Tensor) -> torch.Tensor:
    # A soft target counts as on from 1/2, the threshold a prediction is held to.
    return (labels >= 0.5).to(torch.int64)


# ------------------------------------------------------------------------------- products of experts (I2M2)


def _weights(expert_logits: torch.Tensor, dim: int, available: torch.Tensor | None) -> torch.Tensor | None:
    # An unavailable expert's factor is 1: it is left out of the product (`available` is (B, E) along `dim`).
    if available is None:
        return None
    return available.to(torch.float32).reshape(*available.shape, *([1] * (expert_logits.dim() - available.dim())))


def _sum_of_log_probabilities(expert_logits: torch.Tensor, dim: int, available: torch.Tensor | None = None) -> torch.Tensor:
    log_probs = F.log_softmax(expert_logits.float(), dim=-1)
    weights = _weights(expert_logits, dim, available)
    return (log_probs if weights is None else log_probs * weights).sum(dim)


def _sum_of_logits(expert_logits: torch.Tensor, dim: int, available: torch.Tensor | None = None) -> torch.Tensor:
    # A product of Bernoulli experts, renormalised over {0, 1}: its log-odds are the sum of the experts' log-odds.
    weights = _weights(expert_logits, dim, available)
    logits = expert_logits.float()
    return (logits if weights is None else logits * weights).sum(dim)


def _mean_of_predictions(expert_logits: torch.Tensor, dim: int, available: torch.Tensor | None = None) -> torch.Tensor:
    # A product of Gaussian experts of one fixed variance is the Gaussian at the mean of their means.
    weights = _weights(expert_logits, dim, available)
    values = expert_logits.float()
    if weights is None:
        return values.mean(dim)
    return (values * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


@dataclass(frozen=True)
class ProblemType:
    """How one problem type reads labels and predictions.

    Attributes:
        check_labels: `(labels, batch_size, num_labels, check_values)` -> the labels in the form the losses take
            (class ids `(B,)` int64; multi-hot `(B, C)` float32; targets `(B, T)` float32), with a clear error for
            a wrong dtype, shape or value.
        loss: per-sample loss `(B,)` of `(B, C)` predictions against those labels.
        information: per-sample information `(B, ...)` in nats of `(B, ..., C)` predictions about the label (not
            clipped; see the module docstring), the quantity `interaction_composition` splits into R, U and S.
        ceiling: the most information a prediction can hold, in nats, given `num_labels` (a perfect one; for
            regression its average over samples). Normalises a sample's total into its routing weight.
        gate_features: what the gate reads of a head's output (`gate_reads_predictions`).
        combine: `(expert_logits, dim, available=None)` -> the product of the experts stacked along `dim` (those
            `available` marks, `(B, E)` bool), as logits of this problem
            type (see `combine_experts`).
        loss_name: the loss the `ce_*` terms hold under this problem type.
        score_function: the name of `scores` as transformers' pipelines spell `function_to_apply`
            (`"softmax"`, `"sigmoid"`, `"none"`).
        scores: `(..., C)` logits -> `(..., C)` scores: softmax probabilities, each label's sigmoid probability, or
            the predicted values.
        decide: `(..., C)` logits -> the prediction: class ids `(...)`, multi-hot rows `(..., C)` (sigmoid > 1/2),
            or the values `(..., C)`.
        read_labels: `(values, label2id)` -> the labels tensor of a batch from its examples' raw labels (`values[i]`
            is example i's): class ids or names (`label2id`) -> int64 `(B,)`; multi-hot lists or lists of class
            names -> float32 `(B, C)`; numbers -> float32 `(B,)`, lists of numbers (several targets) `(B, T)`. What
            the collator turns a dataset's label column into.
        decide_labels: labels (as `check_labels` gives them) -> the decision a prediction is held to: the class
            ids, multi-hot rows (a soft target is on from 1/2), or the targets.
        final_loss_metric: the name `compute_metrics` reports the final prediction's `loss` under (`"ce_final"`,
            `"bce_final"`), or None where a metric already is that loss (a regression's `mse`).
    """

    check_labels: Callable[[torch.Tensor, int, int, bool], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    information: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ceiling: Callable[[int], float]
    gate_features: Callable[[torch.Tensor], torch.Tensor]
    combine: Callable[..., torch.Tensor]
    loss_name: str
    score_function: str
    scores: Callable[[torch.Tensor], torch.Tensor]
    decide: Callable[[torch.Tensor], torch.Tensor]
    read_labels: Callable[[Sequence[Any], Mapping[str, int] | None], torch.Tensor]
    decide_labels: Callable[[torch.Tensor], torch.Tensor]
    final_loss_metric: str | None


PROBLEM_TYPES: dict[str, ProblemType] = {
    SINGLE_LABEL: ProblemType(
        check_labels=_single_label_labels, loss=_cross_entropy, information=_categorical_information,
        ceiling=math.log, gate_features=_log_probabilities, combine=_sum_of_log_probabilities,
        loss_name="cross-entropy", score_function="softmax", scores=_softmax, decide=_class_ids,
        read_labels=_read_class_ids, decide_labels=_class_id_labels, final_loss_metric="ce_final",
    ),
    MULTI_LABEL: ProblemType(
        check_labels=_multi_label_labels, loss=_binary_cross_entropy, information=_bernoulli_information,
        ceiling=lambda c: c * math.log(2.0), gate_features=_label_log_probabilities, combine=_sum_of_logits,
        loss_name="binary cross-entropy per label, averaged over the labels", score_function="sigmoid",
        scores=_sigmoid, decide=_labels_on, read_labels=_read_multi_hot, decide_labels=_labels_held,
        final_loss_metric="bce_final",
    ),
    REGRESSION: ProblemType(
        check_labels=_regression_labels, loss=_squared_error, information=_gaussian_information,
        ceiling=lambda c: c / 2.0, gate_features=_values, combine=_mean_of_predictions,
        loss_name="squared error, averaged over the targets", score_function="none", scores=_values,
        decide=_values, read_labels=_read_targets, decide_labels=_values, final_loss_metric=None,
    ),
}


def problem_type_of_label_values(values: Sequence[Any]) -> str:
    """What a label column's values make of a task, whatever file or dataset they came from: lists (multi-hot rows
    or lists of class names) are a multi-label task, floats a regression, integers or strings (class ids or names) a
    single-label task (a regression with several targets, lists of numbers too, must be named). None entries
    (unlabelled rows) say nothing. The one rule the CLI, the collator and the
    metrics apply to a column whose problem type nobody named.

    Example:

    ```python
    >>> from dmil_hf.models.dmil.problem_types_dmil import problem_type_of_label_values
    >>> problem_type_of_label_values([["odd", "big"], ["even"]]), problem_type_of_label_values([0.5, 2.0])
    ('multi_label_classification', 'regression')
    ```
    """
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (list, tuple)) or (hasattr(v, "ndim") and v.ndim == 1) for v in present):
        return MULTI_LABEL
    if present and all(isinstance(v, (int, float)) or hasattr(v, "dtype") for v in present) and any(
        isinstance(v, float) or (hasattr(v, "dtype") and str(v.dtype).startswith("float")) for v in present
    ):
        return REGRESSION
    return SINGLE_LABEL


def problem_type_of(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> ProblemType:
    """The `ProblemType` named `problem_type`, else the one transformers' rule infers from the number of outputs
    (the predictions' last dimension) and the labels' dtype."""
    name = problem_type or infer_problem_type(logits.shape[-1], labels)
    if name not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {sorted(PROBLEM_TYPES)}, got {name!r}")
    return PROBLEM_TYPES[name]


def combine_experts(
    expert_logits: torch.Tensor, problem_type: str, dim: int = 1, available: torch.Tensor | None = None
) -> torch.Tensor:
    """The product of experts (I2M2's sum of log-probabilities) of predictions stacked along `dim`, as logits of
    `problem_type`: single-label, the sum of the experts' log-softmax; multi-label, the sum of their logits (the
    product of each label's Bernoullis, renormalised); regression, the mean of their predictions (the product of
    Gaussians of one fixed variance: a precision-weighted mean with equal precisions). `available` (`(B, E)` bool)
    leaves an expert out of a sample's product (a missing modality's). Computed in float32.

    Example:

    ```python
    >>> import torch
    >>> from dmil_hf.models.dmil.problem_types_dmil import combine_experts
    >>> combine_experts(torch.tensor([[[1.0], [3.0]]]), "regression").tolist()
    [[2.0]]
    ```
    """
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {sorted(PROBLEM_TYPES)}, got {problem_type!r}")
    return PROBLEM_TYPES[problem_type].combine(expert_logits, dim, available)


__all__ = [
    "combine_experts",
    "MULTI_LABEL",
    "PROBLEM_TYPES",
    "REGRESSION",
    "SINGLE_LABEL",
    "ProblemType",
    "infer_problem_type",
    "problem_type_of",
    "problem_type_of_label_values",
    "resolve_problem_type",
]
