"""The Trainer's data collator: a list of raw examples (dicts, `datasets` rows) -> one model batch with `labels`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature

from .media_dmil import _is_clip_with_rate

if TYPE_CHECKING:
    from .processing_dmil import DMILProcessor


@dataclass
class DMILDataCollator:
    r"""Turns a list of raw examples into a model batch with `labels`, for `Trainer(data_collator=...)`.

    Each example is a dict with any of `"text"`, `"image"` and `"audio"` (the three-slot modalities), or each
    modality's name (`"rgb"`, `"facs"`; see `columns`), None or absent for a missing modality, and
    `"label"` (or `"labels"`): a class id, or a class name when `label2id` is given ([`DMILTrainer`] fills it from
    the model's `config.label2id` when it is unset). An audio value may be a waveform with its rate in a
    `"sampling_rate"` field of the example, or anything [`DMILProcessor`] accepts. Other fields are ignored, so run
    the Trainer with `remove_unused_columns=False` (it would otherwise drop the raw columns).
    A `datasets` dataset's `Audio()` and `Video()` columns are decoded here, from each file's bytes or path: pass the
    dataset through `dmil_hf.prepare_media_columns` first (DMILTrainer does), or `datasets` would need torchcodec.

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
    >>> from dmil_hf.processing_dmil import DMILDataCollator
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

    def __post_init__(self) -> None:
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
        """The example field that holds a modality: `text_key` / `image_key` / `audio_key` for the three-slot
        modalities, `columns[modality]` or the modality's name for the others."""
        if self.columns and modality in self.columns:
            return self.columns[modality]
        return {"text": self.text_key, "vision": self.image_key, "audio": self.audio_key}.get(modality, modality)

    def __call__(self, examples: list[dict[str, Any]]) -> BatchFeature:
        if not isinstance(examples, (list, tuple)) or not examples:
            raise ValueError("DMILDataCollator needs a non-empty list of examples")
        for i, example in enumerate(examples):
            if not isinstance(example, dict):
                raise TypeError(f"examples[{i}] must be a dict, got {type(example).__name__}")
        kinds = {row["name"]: row["kind"] for row in self.processor.modality_table}
        fields = {field for example in examples for field in example}
        inputs: dict[str, list] = {}
        for modality, kind in kinds.items():
            column = self.column_of(modality)
            if column not in fields and not self.allow_missing_modalities:
                raise ValueError(self._absent_column_message(modality, column, fields, kinds))
            values = [example.get(column) for example in examples]
            if kind == "audio":
                values = [self._audio_item(v, example) for v, example in zip(values, examples)]
            elif kind == "image":
                # datasets stores an image array as nested lists of pixel values.
                values = [np.asarray(v) if isinstance(v, list) else v for v in values]
            elif kind == "video":
                # ... and each frame of a clip the same way.
                values = [[np.asarray(f) if isinstance(f, list) else f for f in v] if isinstance(v, list) else v
                          for v in values]
            if any(v is not None for v in values):
                inputs[modality] = values
        batch = self.processor(**inputs, return_modality_mask=self.return_modality_mask)
        labels = [example.get("label", example.get("labels")) for example in examples]
        if any(label is not None for label in labels):
            ids = [self._label_id(label, i) for i, label in enumerate(labels)]
            batch["labels"] = torch.tensor(ids, dtype=torch.long)
        return batch

    def _absent_column_message(self, modality: str, column: str, fields: set[str], kinds: dict[str, str]) -> str:
        read = {self.column_of(m) for m in kinds} | {"label", "labels", self.sampling_rate_key}
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
        """This collator, or a copy of it that maps string labels through a model config's classes when it has no
        `label2id` of its own: the config's `label2id`, else its `id2label` inverted (a config given only
        `id2label` keeps no `label2id`), whichever names the classes (transformers' default names `LABEL_0`,
        `LABEL_1`, ... name nothing)."""
        if self.label2id is not None:
            return self
        id2label = getattr(config, "id2label", None) or {}
        for label2id in (getattr(config, "label2id", None) or {}, {name: index for index, name in id2label.items()}):
            if label2id and any(name != f"LABEL_{index}" for name, index in label2id.items()):
                return replace(self, label2id={str(name): int(index) for name, index in label2id.items()})
        return self

    def _audio_item(self, value: Any, example: dict[str, Any]) -> Any:
        if isinstance(value, (list, tuple)) and not _is_clip_with_rate(value):
            value = np.asarray(value, dtype=np.float32)  # datasets stores waveforms as lists of floats
        rate = example.get(self.sampling_rate_key)
        if rate is not None and isinstance(value, (np.ndarray, torch.Tensor)):
            return (value, int(rate))
        return value

    def _label_id(self, label: Any, index: int) -> int:
        if label is None:
            raise ValueError(f"examples[{index}] has no label while other examples of the batch have one")
        if isinstance(label, str):
            if self.label2id is None or label not in self.label2id:
                raise ValueError(
                    f"examples[{index}] has the label {label!r}, which is not in label2id "
                    f"({'none given: pass label2id=model.config.label2id' if self.label2id is None else sorted(self.label2id)})"
                )
            return int(self.label2id[label])
        if isinstance(label, torch.Tensor):
            label = label.item()
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise TypeError(
                f"examples[{index}] label must be an int class id or a str label, got {type(label).__name__}"
            )
        return int(label)


__all__ = ["DMILDataCollator"]
