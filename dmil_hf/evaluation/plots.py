"""Pictures of a run and of a model's view of a dataset: training curves over the stages, accuracy per interaction
type, and the signature view, the distribution of the gate's interaction weights over a dataset ("what kinds of
interaction does my data hold, per sample").

`save_plots` draws a run's pictures from the one `Trainer.predict` pass that also feeds the metrics and
predictions.csv (it runs no model of its own), and the training curves from the trainer's log history.
`interaction_weights` runs any trained DMIL model over any dataset, outside a run, and returns the gate's weights per
sample (`gate_of_predictions` reads the same from a `Trainer.predict` output); `plot_interaction_weights` draws their
distribution per component (per interaction type when the data has types). matplotlib is imported only when a plot
is drawn (`pip install matplotlib`, part of the `bench` extra).

Example:

```python
>>> import torch
>>> from datasets import Dataset
>>> from dmil_hf import DMILForMultimodalClassification
>>> from dmil_hf.data import SyntheticInteractionSpec, make_interaction_dataset, tiny_config_for
>>> from dmil_hf.evaluation.plots import interaction_weights
>>> spec = SyntheticInteractionSpec(modalities=("text", "vision"), num_labels=2)
>>> data = make_interaction_dataset(8, seed=0, spec=spec)
>>> gate = interaction_weights(DMILForMultimodalClassification(tiny_config_for(spec)), data, batch_size=4)
>>> gate["weights"].shape, gate["components"][0]
((8, 4), 'redundancy')
```
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..models.dmil.problem_types_dmil import PROBLEM_TYPES, resolve_problem_type
from .metrics import decide, per_type_summary, problem_type_of_predictions, split_predictions

logger = logging.getLogger(__name__)

# Colours of the three training stages and of the interaction components (R, U_1..U_K, S), for every plot.
_STAGE_COLOURS = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}


def _stack_model_inputs(model: torch.nn.Module, examples: list[dict], start: int, names: set[str]) -> dict:
    """interaction_weights' default collator: the rows' model inputs (and labels) stacked as tensors. Every row must
    hold every input the batch has (a row without one cannot be stacked, and a key read from the first row alone
    would drop the later rows' modalities), and every modality's main input must be there unless a `modality_mask`
    says which samples lack it (a modality silently missing from the whole dataset would weigh the others only)."""
    keys = sorted({k for e in examples for k in e if k in names})
    mains = [route.names.main for route in getattr(model, "routes", {}).values()]
    if not keys:
        raise ValueError(
            f"the dataset has none of the model's inputs ({', '.join(mains or sorted(names))}); its rows hold "
            f"{sorted(examples[0])}: pass data_collator=DMILDataCollator(processor) to turn raw columns into inputs"
        )
    absent = [name for name in mains if name not in keys]
    if absent and "modality_mask" not in keys:
        raise ValueError(
            f"dataset rows {start}..{start + len(examples) - 1} have no {absent} input(s) of the model and no "
            "modality_mask: give the missing modality's input with a modality_mask column that marks it False, or "
            "pass data_collator=DMILDataCollator(processor)"
        )
    batch = {}
    for key in keys + [k for k in ("labels", "label") if any(k in e for e in examples)][:1]:
        lacking = next((start + i for i, e in enumerate(examples) if e.get(key) is None), None)
        if lacking is not None:
            raise ValueError(
                f"dataset row {lacking} has no {key!r}, which other rows have: the default collator stacks the rows' "
                "model inputs as they are; give every row every input (a modality_mask column marks a missing "
                "modality), or pass data_collator=DMILDataCollator(processor) for rows with missing modalities"
            )
        try:
            values = np.asarray([e[key] for e in examples])
        except ValueError as err:  # ragged: rows of different lengths
            raise ValueError(
                f"dataset rows {start}..{start + len(examples) - 1}: {key!r} has different shapes across rows, which "
                f"the default collator cannot stack ({err}); pad them to one shape, or pass a data_collator"
            ) from err
        batch["labels" if key == "label" else key] = torch.as_tensor(values)
    return batch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or assumed
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike | None) -> Any:
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return figure


@torch.no_grad()
def interaction_weights(
    model: torch.nn.Module,
    dataset: Any,
    data_collator: Callable[[list[dict]], Mapping[str, torch.Tensor]] | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    type_column: str = "interaction_type",
) -> dict[str, Any]:
    """The gate's interaction weights of a trained DMIL model on every sample of `dataset`.

    Args:
        model: a `DMILForMultimodalClassification` with `paradigm="dmil"` (the baselines have no gate).
        dataset: a `datasets.Dataset` (or any sequence of example dicts) holding the model's input columns, or raw
            columns for `data_collator` (a `DMILDataCollator`) to process.
        data_collator: turns a list of examples into a model batch; default: the examples' model-input columns
            stacked as tensors, which every row must have (a `modality_mask` column marks a modality a sample
            lacks, or the whole dataset lacks). A `DMILDataCollator` without `label2id` maps string labels through
            `model.config.label2id`.
        batch_size, device: how to run it (default device: the model's).
        type_column: a column of known interaction types to return with the weights, if the dataset has it.

    Returns:
        A dict: `weights` `(N, K + 2)` array over `components` (`model.config.interaction_components`),
        `predictions` the problem type's decisions (`ProblemType.decide`: `(N,)` class ids, `(N, C)` multi-hot rows
        or predicted values), `labels` when the data has them, and `types` (list of str) when it has `type_column`.
    """
    if getattr(model.config, "paradigm", None) != "dmil":
        raise ValueError(
            f"interaction_weights needs a DMIL model (paradigm='dmil'); this one is {getattr(model.config, 'paradigm', None)!r}"
        )
    if len(dataset) == 0:
        raise ValueError("interaction_weights got an empty dataset: there is no sample to weigh")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    names = set(model.input_names) | {"modality_mask"}
    if data_collator is not None and hasattr(data_collator, "with_labels_of"):
        data_collator = data_collator.with_labels_of(model.config)  # string labels through the model's classes
    was_training = model.training
    model.eval()
    weights, predictions, labels = [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start : start + batch_size]
            examples = [dict(zip(rows, values)) for values in zip(*rows.values())] if isinstance(rows, Mapping) else rows
            if data_collator is not None:
                batch = dict(data_collator(examples))
            else:
                batch = _stack_model_inputs(model, examples, start, names)
            batch_labels = batch.pop("labels", None)
            inputs = {k: v.to(device) for k, v in batch.items() if k in names and isinstance(v, torch.Tensor)}
            out = model(**inputs)
            weights.append(out.interaction_weights.float().cpu().numpy())
            known = None if batch_labels is None else torch.as_tensor(np.asarray(batch_labels))
            problem = PROBLEM_TYPES[resolve_problem_type(model.config, known)]
            predictions.append(problem.decide(out.logits.float().cpu()).numpy())
            if batch_labels is not None:
                labels.append(np.asarray(batch_labels))
    finally:
        model.train(was_training)
    result: dict[str, Any] = {
        "weights": np.concatenate(weights), "predictions": np.concatenate(predictions),
        "components": list(model.config.interaction_components),
    }
    if labels:
        result["labels"] = np.concatenate(labels)
    columns = getattr(dataset, "column_names", None) or []
    if type_column in columns:
        result["types"] = [str(t) for t in dataset[type_column]]
    return result


def gate_of_predictions(
    prediction_output: Any, config: Any, interaction_types: Sequence[str] | None = None
) -> dict[str, Any]:
    """`interaction_weights`' dict read from a `Trainer.predict` output (`PredictionOutput` of a DMIL model) instead of
    running the model again: `weights`, `predictions` (the problem type's decisions), `components`, `labels` when the
    output has them, and `types` when `interaction_types` (one per sample, in order) are given."""
    outputs = split_predictions(prediction_output.predictions, config)
    if "interaction_weights" not in outputs:
        raise ValueError(
            f"the predictions hold no interaction_weights (outputs: {sorted(outputs)}): only a DMIL model "
            "(paradigm='dmil') after its first stage has a gate"
        )
    labels = getattr(prediction_output, "label_ids", None)
    problem = PROBLEM_TYPES[problem_type_of_predictions(config, labels)]
    gate: dict[str, Any] = {
        "weights": outputs["interaction_weights"], "predictions": decide(problem, outputs["logits"]),
        "components": list(config.interaction_components),
    }
    if labels is not None:
        gate["labels"] = np.asarray(labels)
    if interaction_types is not None:
        if len(interaction_types) != len(gate["weights"]):
            raise ValueError(
                f"interaction_types has {len(interaction_types)} entries for {len(gate['weights'])} predictions"
            )
        gate["types"] = [str(t) for t in interaction_types]
    return gate


def _metric_prefix(metrics: Mapping[str, Any]) -> str:
    # Trainer.predict / evaluate name every metric `<metric_key_prefix>_<name>` and always report the runtime.
    runtime = next((key for key in metrics if key.endswith("_runtime")), None)
    return runtime[: -len("runtime")] if runtime is not None else ""


def save_plots(
    prediction_output: Any,
    config: Any,
    folder: str | os.PathLike,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    interaction_types: Sequence[str] | None = None,
) -> list[str]:
    """Save a run's pictures to `folder` from one `Trainer.predict` output of its evaluation set (a
    `PredictionOutput`: the model's outputs, `label_ids` and `metrics`); returns the paths saved:

    * ``training_curves.png`` from `log_history` (the trainer's run-wide log history), when it logged a loss;
    * ``accuracy_per_type.png`` when its metrics hold accuracy per interaction type (``<prefix>_accuracy_<type>``, what
      `make_compute_metrics(config, interaction_types=...)` reports);
    * ``interaction_weights.png`` (DMIL) the distribution of the gate's weights over the set, per type when
      `interaction_types` (one per sample, in order) are given.

    Needs matplotlib; without it nothing is drawn (and the model card has no plots section). A picture an earlier
    call left in `folder` is removed: it would not be this model's.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.info("matplotlib is not installed: no plots saved (pip install matplotlib)")
        return []
    folder = os.fspath(folder)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    saved = []
    if log_history and any("loss" in entry for entry in log_history):
        saved.append(os.path.join(folder, "training_curves.png"))
        plot_training_curves(log_history, saved[-1])
    elif log_history:
        logger.warning("No training loss was logged (logging_steps is more steps than a stage ran): no training "
                       "curves drawn. A smaller logging_steps, or a fraction like 0.05, logs them.")
    if prediction_output is not None:
        metrics = getattr(prediction_output, "metrics", None) or {}
        per_type = {kind: value for kind, value, _ in per_type_summary(metrics, [], prefix=_metric_prefix(metrics))}
        if per_type:
            saved.append(os.path.join(folder, "accuracy_per_type.png"))
            plot_accuracy_per_type({config.paradigm: per_type}, saved[-1])
        if "interaction_weights" in split_predictions(prediction_output.predictions, config):
            saved.append(os.path.join(folder, "interaction_weights.png"))
            plot_interaction_weights(gate_of_predictions(prediction_output, config, interaction_types), saved[-1])
    _pyplot().close("all")
    return saved


def plot_interaction_weights(
    gate: Mapping[str, Any], path: str | os.PathLike | None = None, title: str | None = None
) -> Any:
    """The distribution of each component's gate weight over a dataset (box plots; one group per interaction type
    when `gate["types"]` is known), from `interaction_weights`. Saved to `path` when given; returns the figure."""
    plt = _pyplot()
    weights, components = np.asarray(gate["weights"]), list(gate["components"])
    types = gate.get("types")
    groups = sorted(set(types)) if types else ["all samples"]
    columns = min(len(groups), 2)
    rows_of_panels = -(-len(groups) // columns)
    figure, axes = plt.subplots(rows_of_panels, columns, figsize=(1.2 + 1.1 * len(components) * columns,
                                                                  0.6 + 3.0 * rows_of_panels), sharey=True, squeeze=False)
    for axis in axes.flat[len(groups):]:
        axis.set_visible(False)
    for axis, group in zip(axes.flat, groups):
        rows = weights if not types else weights[[t == group for t in types]]
        axis.boxplot([rows[:, c] for c in range(len(components))], showfliers=False)
        axis.set_xticks(range(1, len(components) + 1), [_short(c) for c in components], rotation=45, ha="right")
        axis.set_title(f"{group} (n={len(rows)})", fontsize=9)
        axis.set_ylim(0, 1)
    for row in axes:
        row[0].set_ylabel("gate weight")
    figure.suptitle(title or "Interaction weights per sample: what each prediction rests on", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_training_curves(log_history: Sequence[Mapping[str, Any]], path: str | os.PathLike | None = None) -> Any:
    """Training loss, and the final prediction's CE and evaluation accuracy where logged, against the run's global
    step, one colour per stage (a `DMILTrainer` run's `log_history.json`). Returns the figure."""
    plt = _pyplot()
    panels = [("loss", "training loss (every term of the stage)"), ("ce_final", "final prediction's CE (train)"),
              ("eval_accuracy", "evaluation accuracy")]
    panels = [(key, label) for key, label in panels if any(key in entry for entry in log_history)]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.2), squeeze=False)
    for axis, (key, label) in zip(axes[0], panels):
        for stage in sorted({entry.get("stage") for entry in log_history if key in entry} - {None}):
            points = [(e["step"], e[key]) for e in log_history if key in e and e.get("stage") == stage]
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 4 else None, markersize=3,
                      color=_STAGE_COLOURS.get(stage), label=f"stage {stage}")
        axis.set_xlabel("global step")
        axis.set_title(label, fontsize=9)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def plot_accuracy_per_type(
    accuracy: Mapping[str, Mapping[str, float]], path: str | os.PathLike | None = None, title: str | None = None
) -> Any:
    """Grouped bars: accuracy per interaction type (x) for each method (`{method: {type: accuracy}}`)."""
    plt = _pyplot()
    methods = list(accuracy)
    types = sorted({t for per_type in accuracy.values() for t in per_type})
    figure, axis = plt.subplots(figsize=(1.5 + 0.9 * len(types) * max(len(methods), 1), 3.4))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(types))]
        axis.bar(xs, [accuracy[method].get(t, np.nan) for t in types], width=width, label=method)
    axis.set_xticks(range(len(types)), types)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("accuracy")
    axis.set_title(title or "Accuracy per interaction type", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _short(component: str) -> str:
    return component.replace("uniqueness_", "U_").replace("redundancy", "R").replace("synergy", "S")


__all__ = [
    "gate_of_predictions",
    "interaction_weights",
    "plot_accuracy_per_type",
    "plot_interaction_weights",
    "plot_training_curves",
    "save_plots",
]
