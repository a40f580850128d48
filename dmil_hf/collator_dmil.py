"""The Trainer's data collator: a list of raw examples (dicts, `datasets` rows) -> one model batch with `labels`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature

from .media_dmil import _is_clip_with_rate

if TYPE_CHECKING:
    from .processing_dmil import DMILProcessor

# The default example field of each three-slot modality (`text_key`, `image_key`, `audio_key`).
_DEFAULT_KEYS = {"text": "text", "vision": "image", "audio": "audio"}


@dataclass
class DMILDataCollator:
    r"""Turns a list of raw examples into a model batch with `labels`, for `Trainer(data_collator=...)`.

    Each example is a dict with any of `"text"`, `"image"` and `"audio"` (the three-slot modalities), or each
    modality's name (`"rgb"`, `"facs"`; see `columns`), None or absent for a missing modality, and
    `"label"` (or `"labels"`): a class id, or a class name when `label2id` is given. An audio value may be a waveform
    with its rate in a `"sampling_rate"` field of the example, or anything [`DMILProcessor`] accepts. Other fields
    are ignored, so run the Trainer with `remove_unused_columns=False` (it would otherwise drop the raw columns).

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
    # Modality name -> example field, for the modalities of a modality table (default: the modality's name).
    columns: dict[str, str] | None = None

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
        inputs: dict[str, list] = {}
        for modality, kind in kinds.items():
            values = [example.get(self.column_of(modality)) for example in examples]
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
                    f"({'none given' if self.label2id is None else sorted(self.label2id)})"
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
