"""The "multimodal-classification" pipeline: a DMIL model and its processor, from raw text, images and audio to
labels, scores and each sample's interaction composition.

This module is copied into saved folders so that `pipeline(..., trust_remote_code=True)` works without dmil_hf
installed; it imports only the standard library, torch, transformers and the model unit's own modules. The scores
and their default (`function_to_apply`) come from the problem type (`problem_types_dmil.PROBLEM_TYPES`), as do
predictions.csv's and the metrics'.
"""

from __future__ import annotations

import collections.abc
import functools
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Pipeline
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .configuration_dmil import PIPELINE_TASK
from .modeling_dmil import nonfinite_parameters
from .problem_types_dmil import PROBLEM_TYPES, REGRESSION, resolve_problem_type

TASK = PIPELINE_TASK
# The three-slot modalities' input keys (the model's config.modalities call images "vision"); every modality is also
# its own key (`rgb`, `flow`, `facs`, `vision`).
INPUT_KEYS = {"text": "text", "image": "vision", "audio": "audio"}


def input_keys(config: Any) -> dict[str, str]:
    """Input key -> modality: every modality's name, and the three-slot key of each three-slot modality (`image` for
    an image row named `vision`) unless another modality has that key as its name: a modality's own name always wins
    over a three-slot alias (an `image` video row beside a `vision` image row takes `image`; `vision` takes
    `vision`)."""
    keys = {m: m for m in config.modalities}
    for row in config.modality_specs:
        alias = next(key for key, modality in INPUT_KEYS.items() if modality == row.name) if row.is_legacy_slot else None
        if alias is not None and alias not in keys:
            keys[alias] = row.name
    return keys


def is_hf_dataset(value: Any) -> bool:
    """Whether `value` is a 🤗 `datasets.Dataset` or `datasets.IterableDataset` (read without importing datasets,
    which this module, copied as remote code, cannot count on)."""
    return type(value).__module__.split(".")[0] == "datasets" and hasattr(value, "column_names")


def dataset_columns(
    keys: Mapping[str, str], column_names: list[str], columns: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Input key -> dataset column: the `columns` mapping (input key or modality name -> column, for columns named
    otherwise, e.g. `{"vision": "image_path"}`), and every column named like an input key whose modality `columns`
    does not map already. Other columns (labels, ids) are not read. `keys` is the pipeline's input key -> modality
    table (`input_keys`)."""
    columns = dict(columns or {})
    unknown = sorted(key for key in columns if key not in keys)
    if unknown:
        raise ValueError(f"columns maps {unknown}, which are not inputs of this model; its inputs: {list(keys)}")
    missing = sorted(column for column in columns.values() if column not in column_names)
    if missing:
        raise ValueError(f"columns names {missing}, which the dataset lacks; its columns: {column_names}")
    mapped = {keys[key] for key in columns}
    for key, modality in keys.items():
        if key in column_names and modality not in mapped and key not in columns:
            columns[key] = key
            mapped.add(modality)
    if not columns:
        raise ValueError(
            f"the dataset has none of the model's inputs as a column (inputs: {list(keys)}; columns: {column_names}): "
            "name them with columns={modality: column}, e.g. columns={'vision': 'image_path'}"
        )
    return columns


class ModalityColumns(Dataset):
    """The rows of a 🤗 dataset as pipeline inputs, `{input key: value}` for the columns `dataset_columns` picks: what
    transformers' `KeyDataset` is for single-input pipelines. Only those columns are read (and decoded)."""

    def __init__(self, dataset: Any, columns: Mapping[str, str]):
        self.dataset = dataset.select_columns(list(dict.fromkeys(columns.values())))
        self.columns = dict(columns)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.dataset[i]
        return {key: row[column] for key, column in self.columns.items()}

    def __iter__(self):
        # A streaming (iterable) dataset has rows but no index.
        for row in self.dataset:
            yield {key: row[column] for key, column in self.columns.items()}


# "Not given" for top_k, which None cannot mean since top_k=None asks for every label (as in text-classification).
_UNSET = object()
# The scores a user may ask for in place of the problem type's own (`function_to_apply`, as in transformers'
# text-classification pipeline): each problem type's `scores`, by the name it goes by.
SCORE_FUNCTIONS = {problem.score_function: problem.scores for problem in PROBLEM_TYPES.values()}


def default_score_function(config) -> str:
    """The name of the scores of `config`'s problem type (`ProblemType.score_function`): a single-label task's
    softmax, a multi-label task's sigmoid, a regression's values as they are. Without a problem type, the one the
    model takes on its first forward (transformers' rule: a single output is a regression)."""
    return PROBLEM_TYPES[resolve_problem_type(config)].score_function


class MultimodalClassificationPipeline(Pipeline):
    r"""Classify samples made of any of text, an image and an audio clip with a DMIL model (or its joint / ensemble /
    I2M2 baselines), and report how much each prediction rests on redundant, unique and synergistic information.

    Inputs: a dict with any of the keys `"text"` (str; "" or whitespace counts as missing), `"image"` (PIL image,
    numpy array, torch tensor or file path; uint8 arrays are 0..255, float arrays [0, 1]) and `"audio"` (1-D
    waveform at the feature extractor's rate, `(waveform, sampling_rate)` tuple, `{"array", "sampling_rate"}` dict
    or file path), and any modality of the model's table by its name (`"rgb"`: a video as a list of frames, an
    array (frames, H, W, C) or a video file path; `"facs"`: features (steps, dim)), or a list of such dicts, or a 🤗
    `datasets.Dataset` whose columns hold them (`pipe(ds, columns={"vision": "image_path"})`, see `__call__`).
    A modality left out of a sample (or given as None) is handled as
    missing: the model renormalises its gate over what the sample has. `batch_size > 1` batches samples with
    different modalities together; each modality is padded on its own.

    Output, per input: a list of the `top_k` best labels, best first, each
    `{"label": str, "score": float, "interactions": {component: weight}}`. `score` is, by `config.problem_type` as
    in transformers' text-classification pipeline, the softmax probability (single-label), each label's own sigmoid
    probability (multi-label), or the predicted value itself (regression: `[{"label": "LABEL_0", "score": 0.73}]`
    for one target); `interactions` is the sample's gate over `model.config.interaction_components` (the same dict on
    every label of a sample; it sums to 1) and is left out for the baselines (`"joint"`, `"ensemble"`, `"two_stage"`, `"i2m2"`), which
    have no gate.

    Args (call time):
        top_k (`int` or None): how many labels to return per input, best first; None returns every label. As in
            transformers' text-classification pipeline, a classifier's default is its single best label. A
            regression's default (and None) is every target, in the order of the model's outputs
            (`[{"label": "LABEL_0", "score": 0.73}, {"label": "LABEL_1", "score": -1.2}]` for two targets): its
            outputs are values of their own, not labels ranked against each other; an explicit `top_k=k` keeps the
            k highest values, as text-classification does.
        function_to_apply (`str`, *optional*): `"softmax"`, `"sigmoid"` or `"none"`, overriding the problem type's
            own scores (`default_score_function`).

    Example:

    ```python
    >>> from transformers import pipeline
    >>> import dmil_hf  # registers the task, the model and the processor
    >>> pipe = pipeline("multimodal-classification", model="path/to/saved/dmil")  # doctest: +SKIP
    >>> pipe({"text": "a dog barks", "image": "dog.png", "audio": "bark.wav"}, top_k=2)  # doctest: +SKIP
    [{'label': 'dog', 'score': 0.91, 'interactions': {'redundancy': 0.52, 'uniqueness_text': 0.08, ...}},
     {'label': 'cat', 'score': 0.05, 'interactions': {...}}]
    ```
    """

    # The processor owns the tokenizer, image processor and feature extractor; loading them one by one as well
    # would read the same files twice (and the image processor and feature extractor from one shared file).
    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        modalities = getattr(self.model.config, "modalities", None)
        if not modalities:
            raise TypeError(
                f"{type(self).__name__} needs a DMIL model (a config with `modalities`), "
                f"got {type(self.model).__name__}"
            )
        if self.processor is None or not hasattr(self.processor, "modalities"):
            raise ValueError(
                f"{type(self).__name__} needs a DMILProcessor: save one next to the model or pass processor=..."
            )
        lacking = [m for m in modalities if m not in self.processor.modalities]
        if lacking:
            raise ValueError(
                f"the model has the modalities {modalities}, but the processor has no sub-processor for {lacking}; "
                "build it for the model's modality table (DMILProcessor.for_model(model.config, ...))"
            )
        # Checked here, once: a processor with a modality the model lacks would add a modality_mask column the
        # model refuses on every call.
        if list(self.processor.modalities) != list(modalities):
            raise ValueError(
                f"the processor has the modalities {self.processor.modalities}, but the model only {modalities}: build "
                "the processor for the model's modality table (DMILProcessor.for_model(model.config, ...))"
            )
        # Input key -> modality: every modality's name, and the three-slot keys of the three-slot modalities.
        self._input_keys = input_keys(self.model.config)
        # The text backbone's own limit, so that a tokenizer saved without model_max_length cannot send it longer
        # texts than its position embeddings cover.
        text = next((m for m in self.model.config.modality_specs if m.kind == "text"), None)
        self._text_max_length = (
            self.processor.text_length_limit(self.processor.backbone_text_length(text.backbone)) if text else None
        )
        # A model whose weights hold NaN (a run that diverged) would answer every input with NaN scores.
        nonfinite = nonfinite_parameters(self.model)
        if nonfinite:
            source = getattr(self.model, "name_or_path", "") or "the model"
            raise ValueError(
                f"{source} has NaN or infinite values in {len(nonfinite)} weight tensors (e.g. "
                f"{', '.join(nonfinite[:3])}), so it would score every input NaN: the run that saved it diverged. "
                "Retrain it (a lower learning rate) or load an earlier checkpoint."
            )
        # A model built in this process may still be in train mode (dropout on); from_pretrained ones are in eval.
        self.model.eval()

    # ------------------------------------------------------------------ parameters

    def _sanitize_parameters(self, top_k: Any = _UNSET, function_to_apply: Any = None, **kwargs):
        if kwargs:
            raise TypeError(
                f"unexpected argument(s) for {TASK}: {', '.join(sorted(kwargs))}; only top_k and function_to_apply "
                "are accepted"
            )
        postprocess_params = {}
        if top_k is not _UNSET:
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k must be a positive int or None (every label), got {top_k!r}")
            postprocess_params["top_k"] = top_k
        if function_to_apply is not None:
            # transformers' ClassificationFunction enum is a str enum: its members pass as their names.
            name = str(getattr(function_to_apply, "value", function_to_apply)).lower()
            if name not in SCORE_FUNCTIONS:
                raise ValueError(f"function_to_apply must be one of {sorted(SCORE_FUNCTIONS)}, got {function_to_apply!r}")
            postprocess_params["function_to_apply"] = name
        return {}, {}, postprocess_params

    def __call__(
        self,
        inputs: dict[str, Any] | list[dict[str, Any]] | Any,
        columns: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> list[dict] | list[list[dict]] | collections.abc.Iterator:
        """Classify one input dict (returns a list of label dicts), a list of them (returns a list of lists), or a
        🤗 `datasets.Dataset` / `IterableDataset` (returns an iterator over its rows' answers, in row order).

        A dataset is read as transformers' pipelines read one (`pipe(KeyDataset(ds, "text"))`): lazily, one answer
        per row, batched by `batch_size`. Its columns named like the model's inputs (`text`, `image`, `audio`, or a
        modality's name) are read; `columns` maps the others, input key or modality -> column name, e.g.
        `pipe(ds, columns={"vision": "image_path"})`. Other columns (labels, ids) are left alone; a None cell is a
        missing modality. For answers as new columns of the dataset, see `dmil_hf.inference.add_predictions`.

        Keyword arguments: `top_k`, `function_to_apply` (see the class docstring), `batch_size`, `num_workers`.
        """
        if not isinstance(inputs, (dict, list, tuple)) and is_hf_dataset(inputs):
            if inputs.column_names is None:
                raise ValueError("the dataset's columns are unknown (a streaming dataset before its first row?)")
            selected = ModalityColumns(inputs, dataset_columns(self._input_keys, inputs.column_names, columns))
            # A streaming dataset has no length: hand its rows over as a generator, which transformers also streams.
            inputs = selected if hasattr(inputs, "__len__") else iter(selected)
        elif columns is not None:
            raise TypeError(f"columns= maps the columns of a datasets.Dataset; got a {type(inputs).__name__} input")
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            return []  # transformers' Pipeline.__call__ would fail indexing the first item
        return super().__call__(inputs, **kwargs)

    def model_inputs(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The model's inputs for a batch of input dicts, built exactly as the pipeline builds them (each checked,
        then padded and stacked by the processor, floats in the model's dtype), for callers that run the model
        themselves (`dmil_hf.inference.add_predictions`)."""
        return self._collate([self._check_input(example) for example in examples])

    # ------------------------------------------------------------------ the four pipeline steps

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self._collate([self._check_input(inputs)])

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.model(**model_inputs)
        # "logits" first: the batch unroller reads the batch size from the first entry.
        result = {"logits": outputs.logits}
        if getattr(outputs, "interaction_weights", None) is not None:
            result["interaction_weights"] = outputs.interaction_weights
        return result

    def postprocess(
        self, model_outputs: dict[str, torch.Tensor], top_k: Any = _UNSET, function_to_apply: str | None = None
    ) -> list[dict[str, Any]]:
        config = self.model.config
        function = SCORE_FUNCTIONS[function_to_apply or default_score_function(config)]
        scores = function(model_outputs["logits"][0])
        if top_k is _UNSET:
            # A regression's outputs are targets of their own, not labels competing for one answer: every one is
            # returned, in the model's order. A classifier returns its best label.
            top_k = None if resolve_problem_type(config) == REGRESSION else 1
        if top_k is None and resolve_problem_type(config) == REGRESSION:
            values, indices = scores, torch.arange(scores.numel())
        else:
            values, indices = scores.topk(scores.numel() if top_k is None else min(top_k, scores.numel()))
        interactions = None
        if "interaction_weights" in model_outputs:
            weights = model_outputs["interaction_weights"][0].float().tolist()
            interactions = dict(zip(config.interaction_components, weights))
        results = []
        for score, index in zip(values.tolist(), indices.tolist()):
            entry = {"label": config.id2label.get(index, f"LABEL_{index}"), "score": score}
            if interactions is not None:
                entry["interactions"] = dict(interactions)
            results.append(entry)
        return results

    # ------------------------------------------------------------------ batching

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        # transformers' pad_collate_fn requires every item of a batch to carry the same keys, which samples with
        # different modalities do not; here items are only checked one by one, and the processor builds each batch
        # (per-modality padding, placeholders and modality_mask for the missing ones).
        if isinstance(inputs, collections.abc.Sized):
            dataset = PipelineDataset(inputs, self._check_input, {})
        else:
            num_workers = min(num_workers, 1)  # an iterable cannot be split between workers
            dataset = PipelineIterator(inputs, self._check_input, {})
        collate_fn = functools.partial(self._collate, **preprocess_params)
        dataloader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate_fn)
        model_iterator = PipelineIterator(dataloader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _check_input(self, inputs: Any) -> dict[str, Any]:
        keys = list(self._input_keys)
        if not isinstance(inputs, dict):
            raise TypeError(
                f"{TASK} inputs must be a dict with any of the keys {keys} (or a list of such dicts), "
                f"got {type(inputs).__name__}"
            )
        modalities = self.model.config.modalities
        unknown = sorted(set(inputs) - set(self._input_keys))
        for key in unknown:
            if key in INPUT_KEYS and INPUT_KEYS[key] not in modalities:
                raise ValueError(
                    f"the input has {key!r}, but this model has no {INPUT_KEYS[key]} backbone "
                    f"(its modalities: {', '.join(modalities)})"
                )
        if unknown:
            raise ValueError(f"unknown input key(s) {unknown}; a {TASK} input may only have the keys {keys}")
        by_modality: dict[str, Any] = {}
        for key, value in inputs.items():
            modality = self._input_keys[key]
            if value is not None and by_modality.get(modality) is not None:
                raise ValueError(f"the input gives the {modality} modality twice ({sorted(k for k in inputs if self._input_keys[k] == modality)})")
            if value is not None or modality not in by_modality:
                by_modality[modality] = value
        if all(value is None for value in by_modality.values()):
            raise ValueError(f"the input has none of the model's modalities ({', '.join(modalities)})")
        return by_modality

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        arguments = {}
        for modality in self.model.config.modalities:
            values = [example.get(modality) for example in examples]
            if any(value is not None for value in values):
                arguments[modality] = values
        text_kwargs = {"max_length": self._text_max_length} if self._text_max_length is not None else None
        batch = self.processor(**arguments, return_tensors="pt", text_kwargs=text_kwargs)
        # Float inputs follow the model's dtype (a bf16 model gets bf16 pixels); masks and ids stay as they are.
        return batch.to(self.dtype) if self.dtype is not None else batch

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the model, the processor and this pipeline's code, so that
        `pipeline(TASK, model=save_directory, trust_remote_code=True)` works where dmil_hf is not installed.

        `Pipeline.save_pretrained` writes the tokenizer, image processor and feature extractor one by one (the last
        two both to `preprocessor_config.json`, so one overwrites the other) and never the processor; this saves
        the processor as a whole instead. `kwargs` go to the model's `save_pretrained`.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        config = self.model.config
        previous = getattr(config, "custom_pipelines", None)
        module = type(self).__module__.split(".")[-1]
        config.custom_pipelines = {
            **(previous or {}),
            TASK: {"impl": f"{module}.{type(self).__name__}", "pt": ["AutoModel"], "type": "multimodal"},
        }
        try:
            custom_object_save(self, save_directory)
            self.model.save_pretrained(save_directory, **kwargs)
        finally:
            # Written for this folder only: the caller's model keeps its config as it was.
            if previous is None:
                del config.custom_pipelines
            else:
                config.custom_pipelines = previous
        # Last, so that nothing written before can overwrite its files.
        self.processor.save_pretrained(save_directory)


def save_for_pipeline(model, processor, save_directory: str | os.PathLike, **kwargs: Any) -> str:
    """Save a model and its processor, with the pipeline code, as one folder that
    `pipeline("multimodal-classification", model=folder, trust_remote_code=True)` loads without dmil_hf.

    The model keeps its train/eval mode and device. `kwargs` go to the model's `save_pretrained`.

    Example:

    ```python
    >>> from dmil_hf.models.dmil.pipeline_dmil import save_for_pipeline
    >>> save_for_pipeline(model, processor, "my-dmil")  # doctest: +SKIP
    'my-dmil'
    ```
    """
    was_training = model.training
    try:
        # Where the model already is (a device-mapped model must not be given a device at all).
        placement = {} if getattr(model, "hf_device_map", None) is not None else {"device": model.device}
        pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK, **placement)
        pipe.save_pretrained(save_directory, **kwargs)
    finally:
        model.train(was_training)
    return os.fspath(save_directory)


__all__ = ["SCORE_FUNCTIONS", "ModalityColumns", "MultimodalClassificationPipeline", "dataset_columns",
           "default_score_function", "input_keys", "is_hf_dataset", "save_for_pipeline", "TASK"]
