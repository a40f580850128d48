"""The Trainer's data collator: a list of raw examples (dicts, `datasets` rows) -> one model batch with `labels`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature

from ..models.dmil.media_dmil import _check_audio, _check_image, _check_video, _is_clip_with_rate
from ..models.dmil.problem_types_dmil import PROBLEM_TYPES, problem_type_of_label_values

if TYPE_CHECKING:
    from ..models.dmil.processing_dmil import DMILProcessor

# The default example field of each three-slot modality (`text_key`, `image_key`, `audio_key`).
_DEFAULT_KEYS = {"text": "text", "vision": "image", "audio": "audio"}
# The example field that holds a row's index in its dataset (`with_row_numbers`), so that an error in a batch names
# the row (`dataset[row]`) rather than the example's position in the batch.
ROW_KEY = "__row__"


def with_row_numbers(dataset: Any, key: str = ROW_KEY) -> Any:
    """`dataset` with each row's index in it (0-based, as `dataset[row]`; in a CSV file, the row-th data row after
    the header) in a field `key`, which [`DMILDataCollator`] reads to name the row in its errors ("row 5, column
    'image_path': cannot read image file ..."), however the Trainer shuffles the rows.

    A `Dataset` gets an in-memory column (no data is rewritten); an `IterableDataset` numbers its rows as they stream
    (their position in the stream); a `DatasetDict` numbers each split; anything else (a list, a torch dataset) is
    returned unchanged, and the collator names the example's position in its batch instead.
    """
    if isinstance(dataset, dict):  # DatasetDict, IterableDatasetDict
        return type(dataset)({split: with_row_numbers(part, key) for split, part in dataset.items()})
    if not type(dataset).__module__.startswith("datasets."):
        return dataset
    if key in (dataset.column_names or ()):
        return dataset  # numbered already
    if hasattr(dataset, "__len__"):  # a Dataset
        return dataset.add_column(key, np.arange(len(dataset)))
    features = dataset.features.copy() if dataset.features is not None else None
    if features is not None:
        from datasets import Value

        features[key] = Value("int64")
    return dataset.map(lambda batch, rows: {key: rows}, with_indices=True, batched=True, features=features)


@dataclass
class DMILDataCollator:
    r"""Turns a list of raw examples into a model batch with `labels`, for `Trainer(data_collator=...)`.

    Each example is a dict with any of `"text"`, `"image"` and `"audio"` (the three-slot modalities), or each
    modality's name (`"rgb"`, `"facs"`; see `columns`), None or absent for a missing modality, and
    `"label"` (or `"labels"`), by `problem_type`: a class id, or a class name when `label2id` is given
    (`"single_label_classification"`: int64 `labels (batch,)`); a number (`"regression"`: float32 `(batch,)`, or a
    list of numbers per sample for several targets: `(batch, targets)`); a multi-hot list of `num_labels` 0/1 (or
    soft) values, or a list of class names when `label2id` is given (`"multi_label_classification"`: float32
    `(batch, num_labels)`), read by the problem type's `read_labels` (`problem_types_dmil.PROBLEM_TYPES`). Without
    `problem_type` the batch's labels say it (`problem_type_of_label_values`, the rule the CLI applies to a label
    column): ints or names are class ids, floats a regression, lists multi-hot or class names; pass the model's
    `config.problem_type` to be explicit (a regression with several targets needs it). An audio value may be a waveform
    with its rate in a `"sampling_rate"` field of the example, or anything [`DMILProcessor`] accepts. Other fields
    are ignored, so run the Trainer with `remove_unused_columns=False` (it would otherwise drop the raw columns).
    [`DMILTrainer`] fills `label2id` (and `problem_type`) from the model's config when they are unset.
    A `datasets` dataset's `Audio()`, `Image()` and `Video()` columns are decoded here, from each file's bytes or path:
    pass the dataset through `dmil_hf.prepare_media_columns` first (DMILTrainer does), or `datasets` would need
    torchcodec (and would report a corrupt image without its column or row).

    Media are decoded here, before the processor, by the processor's own rules (`media_dmil`: integer PCM scaled by
    `pcm_to_float`, the `"sampling_rate"` field read by `sampling_rate_of`, a positive integer), so that an error
    names the example's field and its row: "row 5, column 'image_path': cannot read image file ...", where the row
    is the example's `"__row__"` field (`row_key`), which `with_row_numbers(dataset)` adds (its index in the
    dataset); without it, the error names the example's position in the batch.

    Missing modalities: a sample without a modality has None in that field (a `datasets` column holds None there),
    or leaves the field out while other samples of the batch have it. A modality whose field no example of the batch
    has at all is an error, as a missing column is for `training/run.py`: it is most often a column under another
    name (`image_path`), which would otherwise train without that modality and no word. Name the column with
    `columns={"vision": "image_path"}` (or `image_key=` / `text_key=` / `audio_key=`), or pass
    `allow_missing_modalities=True` for data whose samples leave a modality's field out.

    Example:

    ```python
    >>> import numpy as np
    >>> from transformers import ViTImageProcessorPil, Wav2Vec2FeatureExtractor
    >>> from dmil_hf import DMILProcessor
    >>> from dmil_hf.training.data_collator import DMILDataCollator
    >>> processor = DMILProcessor(image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}),
    ...                           feature_extractor=Wav2Vec2FeatureExtractor())
    >>> collator = DMILDataCollator(processor)
    >>> batch = collator([{"image": np.zeros((16, 16, 3), np.uint8), "audio": np.zeros(1600, np.float32), "label": 1},
    ...                   {"audio": list(np.zeros(800)), "sampling_rate": 8000, "label": 0}])
    >>> batch["labels"].tolist(), batch["input_values"].shape
    ([1, 0], torch.Size([2, 1600]))
    ```
    """

    processor: DMILProcessor
    label2id: dict[str, int] | None = None
    text_key: str = "text"
    image_key: str = "image"
    audio_key: str = "audio"
    sampling_rate_key: str = "sampling_rate"
    return_modality_mask: bool | None = None
    # Modality name -> example field, for any modality of the processor (default: `text_key` / `image_key` /
    # `audio_key` for the three-slot modalities, the modality's name for the others).
    columns: dict[str, str] | None = None
    # True: a batch none of whose examples has a modality's field is that modality missing from the batch, not an error.
    allow_missing_modalities: bool = False
    # The model's config.problem_type; None: read from the labels (see the class docstring).
    problem_type: str | None = None
    # The field with each example's row in its dataset (`with_row_numbers`), named in errors; absent: the position.
    row_key: str = ROW_KEY

    def __post_init__(self) -> None:
        if self.problem_type not in (None, *PROBLEM_TYPES):
            raise ValueError(f"problem_type must be one of {sorted(PROBLEM_TYPES)} or None, got {self.problem_type!r}")
        modalities = list(getattr(self.processor, "modalities", None) or [])
        if self.columns is not None:
            if not isinstance(self.columns, dict):
                raise TypeError(
                    f"DMILDataCollator columns must be a dict modality name -> example field, got "
                    f"{type(self.columns).__name__}"
                )
            unknown = sorted(set(self.columns) - set(modalities))
            if unknown:
                raise ValueError(
                    f"DMILDataCollator columns names {unknown}, not modalities of the processor (its modalities: "
                    f"{modalities}); columns maps a modality's name to the example field that holds it"
                )
            for modality, field in self.columns.items():
                if not isinstance(field, str) or not field:
                    raise TypeError(f"DMILDataCollator columns[{modality!r}] must be a field name (str), got {field!r}")

    def column_of(self, modality: str) -> str:
        """The example field that holds a modality: `columns[modality]`; else `text_key` / `image_key` /
        `audio_key` for the three-slot modalities, unless the key is left at its default and another modality has
        it as its name (a modality's own name always wins over a three-slot alias: an `image` video row beside a
        `vision` image row reads `image`, and `vision` reads `vision`); else the modality's name."""
        if self.columns and modality in self.columns:
            return self.columns[modality]
        alias = {"text": self.text_key, "vision": self.image_key, "audio": self.audio_key}.get(modality)
        if alias is None:
            return modality
        names = [row["name"] for row in self.processor.modality_table]
        if alias == _DEFAULT_KEYS[modality] and alias != modality and alias in names:
            return modality
        return alias

    def __call__(self, examples: list[dict[str, Any]]) -> BatchFeature:
        if not isinstance(examples, (list, tuple)) or not examples:
            raise ValueError("DMILDataCollator needs a non-empty list of examples")
        for i, example in enumerate(examples):
            if not isinstance(example, dict):
                raise TypeError(f"examples[{i}] must be a dict, got {type(example).__name__}")
        kinds = {row["name"]: row["kind"] for row in self.processor.modality_table}
        readers: dict[str, list[str]] = {}
        for modality in kinds:
            readers.setdefault(self.column_of(modality), []).append(modality)
        shared = {column: names for column, names in readers.items() if len(names) > 1}
        if shared:
            raise ValueError(
                f"DMILDataCollator would read one example field for several modalities ({shared}); give each its own "
                "with columns={modality: field}"
            )
        fields = {field for example in examples for field in example}
        inputs: dict[str, list] = {}
        for modality, kind in kinds.items():
            column = self.column_of(modality)
            if column not in fields and not self.allow_missing_modalities:
                raise ValueError(self._absent_column_message(modality, column, fields, kinds))
            values = [example.get(column) for example in examples]
            where = [self._where(i, example, column) for i, example in enumerate(examples)]
            # Media are decoded here, where each value's row and column are known, so that a missing file, a corrupt
            # one or a bad sampling rate is reported as "row 5, column 'image_path'", not as the processor's
            # "images[3]" (a position in the batch); the processor takes the decoded values as they are.
            if kind == "audio":
                values = [self._audio_item(v, example, at, i) for i, (v, example, at) in
                          enumerate(zip(values, examples, where))]
            elif kind == "image":
                # datasets stores an image array as nested lists of pixel values.
                values = [_check_image(_list_as_array(v, at, _IMAGE) if isinstance(v, list) else v, at)
                          for v, at in zip(values, where)]
            elif kind == "video":
                # ... and each frame of a clip the same way.
                values = [_check_video([_list_as_array(f, f"{at} frame {t}", _IMAGE) if isinstance(f, list) else f
                                        for t, f in enumerate(v)] if isinstance(v, list) else v, at)
                          for v, at in zip(values, where)]
            if any(v is not None for v in values):
                inputs[modality] = values
        batch = self.processor(**inputs, return_modality_mask=self.return_modality_mask)
        labels = [example.get("label", example.get("labels")) for example in examples]
        if any(label is not None for label in labels):
            for i, label in enumerate(labels):
                if label is None:
                    raise ValueError(f"examples[{i}] has no label while other examples of the batch have one")
            labels = [label.tolist() if isinstance(label, (torch.Tensor, np.ndarray)) else label for label in labels]
            problem_type = self.problem_type or problem_type_of_label_values(labels)
            batch["labels"] = PROBLEM_TYPES[problem_type].read_labels(labels, self.label2id)
        return batch

    def _absent_column_message(self, modality: str, column: str, fields: set[str], kinds: dict[str, str]) -> str:
        read = {self.column_of(m) for m in kinds} | {"label", "labels", self.sampling_rate_key, self.row_key}
        unused = sorted(fields - read)
        example = unused[0] if unused else "<field>"
        return (
            f"no example of the batch has the field {column!r}, which the {modality} modality is read from (the "
            f"examples' fields: {sorted(fields)}"
            + (f"; not read by this collator: {unused}" if unused else "")
            + f"). If the {modality} data is under another name, give it: DMILDataCollator(processor, "
            f"columns={{{modality!r}: {example!r}}}); if these samples have no {modality}, give {column}=None in them "
            "or pass allow_missing_modalities=True"
        )

    def with_labels_of(self, config: Any) -> DMILDataCollator:
        """This collator, or a copy of it that reads labels as a model config says when it does not say so itself:
        `problem_type` from `config.problem_type`, and `label2id` (string labels) from the config's `label2id`, else
        its `id2label` inverted (a config given only `id2label` keeps no `label2id`), whichever names the classes
        (transformers' default names `LABEL_0`, `LABEL_1`, ... name nothing)."""
        changes: dict[str, Any] = {}
        if self.problem_type is None and getattr(config, "problem_type", None) in PROBLEM_TYPES:
            changes["problem_type"] = config.problem_type
        if self.label2id is None:
            id2label = getattr(config, "id2label", None) or {}
            for label2id in (getattr(config, "label2id", None) or {}, {name: i for i, name in id2label.items()}):
                if label2id and any(name != f"LABEL_{index}" for name, index in label2id.items()):
                    changes["label2id"] = {str(name): int(index) for name, index in label2id.items()}
                    break
        return replace(self, **changes) if changes else self

    def _where(self, i: int, example: dict[str, Any], column: str) -> str:
        """How an error names one example's field: its row in the dataset when the example carries it
        (`with_row_numbers`), else its position in the batch."""
        row = example.get(self.row_key)
        return f"row {row}, column {column!r}" if row is not None else f"examples[{i}][{column!r}]"

    def _audio_item(self, value: Any, example: dict[str, Any], where: str, i: int) -> np.ndarray | None:
        """The clip decoded and resampled to the feature extractor's rate (`media_dmil._check_audio`: the one rule for
        integer PCM and for sampling rates, the processor's own)."""
        if isinstance(value, (list, tuple)) and not _is_clip_with_rate(value):
            # datasets stores waveforms as lists of numbers: floats, or ints for PCM (scaled by `pcm_to_float`).
            value = _list_as_array(value, where, "a waveform: one flat list of numbers", numeric=True)
        # The example's rate field applies to a bare waveform; a clip with a rate of its own (a file, a tuple, a
        # dict) keeps that one.
        rate = example.get(self.sampling_rate_key) if isinstance(value, (np.ndarray, torch.Tensor)) else None
        rate_name = self._where(i, example, self.sampling_rate_key) + " (the clip's sampling rate)"
        target = int(self.processor.feature_extractor.sampling_rate)
        return _check_audio(value, where, rate, target, rate_name=rate_name)


_IMAGE = "an image: nested lists of pixel values (height, width[, channels]) whose rows all have one length"


def _list_as_array(value: list | tuple, where: str, what: str, numeric: bool = False) -> np.ndarray:
    """A value `datasets` stores as nested lists, as an array of numpy's own dtype for its values (ints stay ints); a
    ragged one, or with `numeric` one that is not all numbers, is a ValueError naming the example field (numpy's own
    error names neither the field nor the sample)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where} must be {what}; numpy cannot make an array of it ({err})") from None
    if numeric and array.dtype.kind not in "biuf":
        raise ValueError(f"{where} must be {what}; got values of dtype {array.dtype}")
    return array


__all__ = ["DMILDataCollator", "ROW_KEY", "with_row_numbers"]
