"""predictions.csv: one row per sample with the model's prediction, its score, the true label and the interaction
weights, from a `Trainer.predict` output. The prediction and the score are the problem type's (`ProblemType.decide`
and `ProblemType.scores`, `problem_types_dmil.PROBLEM_TYPES`), the same the pipeline and the metrics use, so a row
says what `pipeline("multimodal-classification")` says of the same input."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..models.dmil.problem_types_dmil import MULTI_LABEL, PROBLEM_TYPES, REGRESSION
from .metrics import problem_type_of_predictions, split_predictions


def prediction_columns(logits, labels, config) -> tuple[list[str], list[list]]:
    """The header and rows of predictions.csv (without index and interaction weights) for `config.problem_type`, read
    as transformers' text-classification pipeline (and ours) reads each type:

    - single-label: `prediction` (the class), `score` (its softmax probability), `label` (the true class);
    - multi-label: `prediction` (a JSON list of the classes whose sigmoid probability is above 1/2, the threshold the
      metrics use), `score_<class>` (each class's own probability), `label` (a JSON list of the true classes);
    - regression: `prediction` (the predicted value) and `label` (the target), or `prediction_<target>` and
      `label_<target>` for several targets: a value has no probability.
    """
    logits = torch.as_tensor(np.asarray(logits))
    names = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(logits.shape[-1])]
    problem_type = problem_type_of_predictions(config, labels)
    problem = PROBLEM_TYPES[problem_type]
    decisions, scores = problem.decide(logits).numpy(), problem.scores(logits).numpy()
    truth = None
    if labels is not None:
        labels = problem.check_labels(torch.as_tensor(np.asarray(labels)), len(logits), logits.shape[-1], False)
        truth = problem.decide_labels(labels).numpy()
    if problem_type == REGRESSION:
        suffixes = [""] if len(names) == 1 else [f"_{name}" for name in names]
        header = [f"prediction{s}" for s in suffixes]
        rows = [[f"{v:.6g}" for v in row] for row in decisions]
        if truth is not None:
            header += [f"label{s}" for s in suffixes]
            rows = [row + [f"{v:.6g}" for v in target] for row, target in zip(rows, truth)]
        return header, rows
    if problem_type == MULTI_LABEL:
        header = ["prediction", *(f"score_{name}" for name in names)]
        rows = [[_names_on(names, on), *(f"{p:.6f}" for p in row)] for on, row in zip(decisions, scores)]
        if truth is not None:
            header.append("label")
            rows = [row + [_names_on(names, on)] for row, on in zip(rows, truth)]
        return header, rows
    header = ["prediction", "score"]
    rows = [[names[k], f"{scores[i, k]:.6f}"] for i, k in enumerate(decisions)]
    if truth is not None:
        header.append("label")
        rows = [row + [names[int(label)]] for row, label in zip(rows, truth)]
    return header, rows


def _names_on(names: list[str], on: np.ndarray) -> str:
    return json.dumps([name for name, value in zip(names, on) if value])


def write_predictions(
    prediction_output: Any, config, path: str | os.PathLike, ids: Sequence[Any] | None = None, id_name: str = "id"
) -> None:
    """predictions.csv of a `Trainer.predict` output (`PredictionOutput`: `predictions`, a dict or a tuple of the
    model's outputs, and `label_ids`): one row per sample with its index, or its id from `ids` (one per row, in a
    first column named `id_name`), the prediction in the columns of its problem type (`prediction_columns`: for a
    classification, the predicted label and its probability), the true label when the data has one, and (DMIL) the
    sample's interaction weights, one column per component (`interaction_redundancy`, ...): the per-sample
    interaction view as data."""
    outputs = split_predictions(prediction_output.predictions, config)
    logits = outputs["logits"]
    weights = outputs.get("interaction_weights")
    components = config.interaction_components if weights is not None else []
    if ids is not None and len(ids) != len(logits):
        raise ValueError(f"ids has {len(ids)} entries for {len(logits)} predictions")
    header, rows = prediction_columns(logits, prediction_output.label_ids, config)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index" if ids is None else id_name, *header, *(f"interaction_{c}" for c in components)])
        for i, row in enumerate(rows):
            key = i if ids is None else ids[i]
            writer.writerow([key, *row, *(f"{w:.6f}" for w in (weights[i] if weights is not None else []))])


__all__ = ["prediction_columns", "write_predictions"]
