"""predictions.csv: one row per sample with the model's prediction, its score, the true label and the interaction
weights, read as transformers' text-classification pipeline (and ours) reads each problem type."""

from __future__ import annotations

import json


def prediction_columns(logits, labels, config) -> tuple[list[str], list[list]]:
    """The header and rows of predictions.csv (without index and interaction weights) for `config.problem_type`, read
    as transformers' text-classification pipeline (and ours) reads each type:

    - single-label: `prediction` (the class), `score` (its softmax probability), `label` (the true class);
    - multi-label: `prediction` (a JSON list of the classes whose sigmoid probability is above 1/2, the threshold the
      metrics use), `score_<class>` (each class's own probability), `label` (a JSON list of the true classes);
    - regression: `prediction` (the predicted value) and `label` (the target), or `prediction_<target>` and
      `label_<target>` for several targets: a value has no probability.
    """
    import numpy as np

    names = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(logits.shape[-1])]
    problem_type = config.problem_type or (
        "regression" if config.num_labels == 1 else "single_label_classification"
    )
    if problem_type == "regression":
        suffixes = [""] if len(names) == 1 else [f"_{name}" for name in names]
        header = [f"prediction{s}" for s in suffixes]
        rows = [[f"{v:.6g}" for v in row] for row in logits]
        if labels is not None:
            targets = np.asarray(labels, dtype=np.float64).reshape(len(logits), -1)
            header += [f"label{s}" for s in suffixes]
            rows = [row + [f"{v:.6g}" for v in target] for row, target in zip(rows, targets)]
        return header, rows
    if problem_type == "multi_label_classification":
        probabilities = 1 / (1 + np.exp(-logits))
        header = ["prediction", *(f"score_{name}" for name in names)]
        rows = [[json.dumps([n for n, on in zip(names, logit > 0) if on]), *(f"{p:.6f}" for p in row)]
                for logit, row in zip(logits, probabilities)]
        if labels is not None:
            header.append("label")
            rows = [row + [json.dumps([n for n, on in zip(names, np.asarray(target) >= 0.5) if on])]
                    for row, target in zip(rows, labels)]
        return header, rows
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    predicted = probabilities.argmax(-1)
    header = ["prediction", "score"]
    rows = [[names[k], f"{probabilities[i, k]:.6f}"] for i, k in enumerate(predicted)]
    if labels is not None:
        header.append("label")
        rows = [row + [names[int(label)]] for row, label in zip(rows, labels)]
    return header, rows


def write_predictions(prediction, config, path: str) -> None:
    """`--do_predict`'s predictions.csv: one row per test sample with its index, the prediction in the columns of its
    problem type (`prediction_columns`: for a classification, the predicted label and its probability), the true
    label when the data has one, and (DMIL) the sample's interaction weights, one column per component
    (`interaction_redundancy`, ...): the per-sample interaction view as data."""
    import csv

    import numpy as np

    outputs = prediction.predictions
    logits = np.asarray(outputs["logits"] if isinstance(outputs, dict) else outputs, dtype=np.float64)
    weights = outputs.get("interaction_weights") if isinstance(outputs, dict) else None
    components = config.interaction_components if weights is not None else []
    header, rows = prediction_columns(logits, prediction.label_ids, config)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *header, *(f"interaction_{c}" for c in components)])
        for i, row in enumerate(rows):
            writer.writerow([i, *row, *(f"{w:.6f}" for w in (weights[i] if weights is not None else []))])


__all__ = ["prediction_columns", "write_predictions"]
