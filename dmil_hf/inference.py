"""Batch inference over a 🤗 `datasets.Dataset`: the model's prediction, score and interaction composition of every
row, added as new columns by `Dataset.map(batched=True)` on the model's device.

The rows go through the "multimodal-classification" pipeline's own input checks and processor
(`MultimodalClassificationPipeline.model_inputs`), and the prediction and score come from the problem type
(`problem_types_dmil.PROBLEM_TYPES[...].decide` / `.scores`), so a row's columns say what the pipeline and
predictions.csv say of the same input, with the input columns, ids and labels kept beside them.

Example:

```python
>>> from datasets import Dataset
>>> from dmil_hf.inference import add_predictions
>>> ds = Dataset.from_dict({"id": ["a", "b"], "text": ["a dog barks", "a cat"], "image_path": ["dog.png", "cat.png"]})
>>> ds = add_predictions(ds, model, processor, columns={"vision": "image_path"})  # doctest: +SKIP
>>> ds.column_names  # doctest: +SKIP
['id', 'text', 'image_path', 'prediction', 'score', 'interaction_redundancy', 'interaction_uniqueness_text', ...]
```
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import torch
from datasets import Features, List, Value

from .models.dmil.pipeline_dmil import TASK, MultimodalClassificationPipeline, dataset_columns, is_hf_dataset
from .models.dmil.problem_types_dmil import MULTI_LABEL, PROBLEM_TYPES, REGRESSION, resolve_problem_type


def prediction_column_names(config: Any) -> list[str]:
    """The columns `add_predictions` adds for `config`, named as predictions.csv names them
    (`evaluation.predictions.prediction_columns`):

    - single-label: `prediction` (the label's name) and `score` (its softmax probability);
    - multi-label: `prediction` (the list of labels whose sigmoid probability is above 1/2) and `score_<label>`
      (each label's own probability);
    - regression: `prediction` (the value), or `prediction_<target>` for each of several targets;
    - and, for DMIL, `interaction_<component>`: the sample's gate weight of each component (they sum to 1).
    """
    problem_type = resolve_problem_type(config)
    names = _label_names(config)
    if problem_type == REGRESSION:
        header = ["prediction"] if len(names) == 1 else [f"prediction_{name}" for name in names]
    elif problem_type == MULTI_LABEL:
        header = ["prediction", *(f"score_{name}" for name in names)]
    else:
        header = ["prediction", "score"]
    if getattr(config, "paradigm", "dmil") == "dmil":
        header += [f"interaction_{component}" for component in config.interaction_components]
    return header


def prediction_features(config: Any) -> dict[str, Any]:
    """The 🤗 `datasets` feature of each column of `prediction_column_names`, given to `Dataset.map` so that a batch
    whose multi-label predictions are all empty cannot fix the column's type before the first label arrives."""
    problem_type = resolve_problem_type(config)
    return {
        name: List(Value("string")) if name == "prediction" and problem_type == MULTI_LABEL
        else Value("string") if name == "prediction" and problem_type != REGRESSION
        else Value("float64")
        for name in prediction_column_names(config)
    }


def _label_names(config: Any) -> list[str]:
    return [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def prediction_values(logits: torch.Tensor, interaction_weights: torch.Tensor | None, config: Any) -> dict[str, list]:
    """The columns of `prediction_column_names` for a batch of model outputs: the problem type's decision
    (`ProblemType.decide`) and scores (`ProblemType.scores`), in plain Python values (str, float, list of str)."""
    problem_type = resolve_problem_type(config)
    problem = PROBLEM_TYPES[problem_type]
    logits = logits.float()
    decisions, scores = problem.decide(logits), problem.scores(logits)
    names = _label_names(config)
    columns: dict[str, list] = {}
    if problem_type == REGRESSION:
        header = ["prediction"] if len(names) == 1 else [f"prediction_{name}" for name in names]
        for k, column in enumerate(header):
            columns[column] = decisions[:, k].tolist()
    elif problem_type == MULTI_LABEL:
        columns["prediction"] = [[name for name, on in zip(names, row) if on] for row in decisions.tolist()]
        for k, name in enumerate(names):
            columns[f"score_{name}"] = scores[:, k].tolist()
    else:
        columns["prediction"] = [names[k] for k in decisions.tolist()]
        columns["score"] = scores.gather(1, decisions.unsqueeze(1)).squeeze(1).tolist()
    if interaction_weights is not None:
        for k, component in enumerate(config.interaction_components):
            columns[f"interaction_{component}"] = interaction_weights[:, k].float().tolist()
    return columns


def add_predictions(
    dataset: Any,
    model: Any,
    processor: Any,
    columns: Mapping[str, str] | None = None,
    batch_size: int = 32,
    prefix: str = "",
    **map_kwargs: Any,
) -> Any:
    """Add the model's prediction, score and interaction columns (`prediction_column_names`) to every row of a 🤗
    `datasets.Dataset` (or a streaming `IterableDataset`, lazily), through `Dataset.map(batched=True)`.

    Args:
        dataset: the rows. Columns named like the model's inputs (`text`, `image`, `audio`, or a modality's name)
            are read as those modalities; `columns` maps the others. Every other column (ids, labels) is kept as
            it is, so the answers need no joining back by row order. A None cell is a missing modality.
        model: a DMIL model (or a baseline); it runs in eval mode on its own device (or device map).
        processor: the model's `DMILProcessor`.
        columns: input key or modality -> column name, for columns named otherwise (`{"vision": "image_path"}`).
        batch_size: rows per forward pass.
        prefix: put before every new column's name (`prefix="dmil_"` gives `dmil_prediction`, ...), for a dataset
            that has a `prediction` column already, or to compare models side by side.
        map_kwargs: passed on to `Dataset.map` (`desc`, `keep_in_memory`, `cache_file_name`, `new_fingerprint`, ...).
            By default every call is fingerprinted anew, so a changed model is never answered from a cache, and the
            model's weights are never hashed.

    Returns:
        The dataset with the new columns (a new `Dataset`, as `Dataset.map` returns).
    """
    if not is_hf_dataset(dataset):
        raise TypeError(f"add_predictions takes a datasets.Dataset or IterableDataset, got {type(dataset).__name__}")
    # Where the model already is (a device-mapped model must not be given a device at all).
    placement = {} if getattr(model, "hf_device_map", None) is not None else {"device": model.device}
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK, **placement)
    read = dataset_columns(pipe._input_keys, list(dataset.column_names or []), columns)
    new_columns = [prefix + name for name in prediction_column_names(model.config)]
    clashes = sorted(set(new_columns) & set(dataset.column_names or []))
    if clashes:
        raise ValueError(f"the dataset has the column(s) {clashes} already; give a prefix= for the new columns")
    keys, input_columns = list(read), list(dict.fromkeys(read.values()))

    def predict(*batch: list) -> dict[str, list]:
        cells = dict(zip(input_columns, batch))
        rows = [{key: cells[read[key]][i] for key in keys} for i in range(len(batch[0]))]
        outputs = pipe.forward(pipe.model_inputs(rows))
        values = prediction_values(outputs["logits"], outputs.get("interaction_weights"), model.config)
        return {prefix + name: value for name, value in values.items()}

    map_kwargs = {"batched": True, "batch_size": batch_size, "input_columns": input_columns, **map_kwargs}
    if dataset.features is not None:
        new = {prefix + name: feature for name, feature in prediction_features(model.config).items()}
        map_kwargs.setdefault("features", Features({**dataset.features, **new}))
    if hasattr(dataset, "_fingerprint"):  # a Dataset, not a streaming one (which has no cache)
        map_kwargs.setdefault("new_fingerprint", uuid.uuid4().hex)
    return dataset.map(predict, **map_kwargs)


__all__ = ["add_predictions", "prediction_column_names", "prediction_features", "prediction_values"]
