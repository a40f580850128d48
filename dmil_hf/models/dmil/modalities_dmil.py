"""The modality table: what a DMIL model's modalities are, one row each.

A modality is a name (any identifier: ``rgb``, ``flow``, ``audio``, ``facs``), a kind (``text``, ``image``,
``video``, ``audio``, ``features``), an encoder config (any AutoConfig-able backbone; for ``features`` a small
`DMILFeatureEncoderConfig`), a pooling override, and for sequences of vectors (video frames) how the sequence is
pooled. Everything that differs between kinds (which sub-processor prepares it, which input names the model's
``forward`` takes, how the three-slot API of release 0.1 named it) lives in `KINDS`, so the model, processor,
collator and pipeline loop over the rows instead of naming modalities.

This module is copied next to ``modeling_dmil.py`` when a model is saved with remote code, so it imports only the
standard library.

    >>> from dmil_hf.models.dmil.modalities_dmil import Modality, input_names
    >>> input_names(Modality("rgb", "video")).main, input_names(Modality("text", "text")).main
    ('rgb_pixel_values', 'input_ids')
"""

from __future__ import annotations

import keyword
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KindSpec:
    """What every modality of one kind shares.

    Attributes:
        processor_slot: the `DMILProcessor` sub-processor that prepares it (None: the processor pads arrays itself).
        main_input: the backbone input a processor emits for it (an audio backbone may take `input_features`
            instead; the backbone table says, see `backbones_dmil.BackboneSpec.main_input`).
        legacy_name: the name this kind had in the three-slot API (`text_config` / `vision_config` /
            `audio_config`); a modality of that name and kind keeps the old input names (`input_ids`,
            `pixel_values`, `input_values` and `audio_attention_mask`).
        default_model_type: the backbone built from a config dict without a `model_type`.
        has_mask: whether the model takes a mask over the modality's time axis (tokens, samples, frames, steps).
        backbone_inputs: the main input names (`main_input_name`) of the backbones that can encode this kind: a row
            whose backbone takes another input (a wav2vec2 for a video, ViT for features) is refused at
            construction rather than crashing inside the backbone at its first forward.
    """

    processor_slot: str | None
    main_input: str
    legacy_name: str | None
    default_model_type: str
    has_mask: bool
    backbone_inputs: tuple[str, ...] = ()


KINDS: dict[str, KindSpec] = {
    "text": KindSpec("tokenizer", "input_ids", "text", "bert", has_mask=True, backbone_inputs=("input_ids",)),
    "image": KindSpec("image_processor", "pixel_values", "vision", "vit", has_mask=False,
                      backbone_inputs=("pixel_values",)),
    # Frames of one clip: (batch, frames, channels, height, width), through an image backbone frame by frame (then
    # pooled over time) or a video backbone (VideoMAE) whole.
    "video": KindSpec("image_processor", "pixel_values", None, "vit", has_mask=True, backbone_inputs=("pixel_values",)),
    # Waveforms (wav2vec2's input_values) or spectrograms (AST's input_values, Whisper's input_features).
    "audio": KindSpec("feature_extractor", "input_values", "audio", "wav2vec2", has_mask=True,
                      backbone_inputs=("input_values", "input_features")),
    # Pre-extracted feature sequences (batch, steps, dim) or vectors (batch, dim).
    "features": KindSpec(None, "input_features", None, "dmil_feature_encoder", has_mask=True,
                         backbone_inputs=("input_features",)),
}

# The three-slot API's modalities in their fixed order, and the legacy name of each kind.
LEGACY_MODALITIES = {"text": "text", "vision": "image", "audio": "audio"}
TEMPORAL_POOLINGS = ("mean", "max")
# Names a modality may not take, because a modality's name is also a keyword of the model's forward, the processor's
# call, an example field the collator reads, or a pipeline call argument, and the two would be confused (an input
# silently dropped or sent to the wrong place). `text`, `audio` and `images` stay allowed: they are the three-slot
# aliases, and a modality of that name always takes them (see `DMILProcessor.__call__`).
RESERVED_NAMES = frozenset({
    # DMILForMultimodalClassification.forward (a `modality` row's mask would be `modality_mask`)
    "modality", "modality_mask", "labels", "stage", "return_dict", "input", "inputs", "self",
    # DMILProcessor.__call__
    "sampling_rate", "return_tensors", "return_modality_mask", "text_kwargs", "images_kwargs", "audio_kwargs",
    # DMILDataCollator's example fields (the label; a waveform's rate is `sampling_rate`, above)
    "label",
    # the multimodal-classification pipeline's call arguments
    "top_k", "batch_size", "num_workers",
})
MIN_MODALITIES, MAX_MODALITIES = 2, 4


@dataclass(frozen=True)
class Modality:
    """One row of the modality table.

    Args:
        name: an identifier, unique in the model (`"rgb"`, `"flow"`, `"audio"`). It names the model's inputs
            (`rgb_pixel_values`), the gate's uniqueness column (`uniqueness_rgb`), the processor's argument and the
            pipeline's input key.
        kind: one of `KINDS`.
        backbone: the encoder's config (`PretrainedConfig` or a dict with a `model_type`; `None` takes the kind's
            default family). For `video`, an image backbone runs per frame; a video backbone (VideoMAE) takes the
            clip whole. For `features`, a `DMILFeatureEncoderConfig`.
        pooling: override of the backbone table's pooling (`"cls"`, `"mean"`, `"pooler"`).
        temporal_pooling: how an image backbone's per-frame vectors of a video become one (`"mean"` or `"max"`,
            over the frames present).
        num_frames: frames the processor samples per clip (uniformly; shorter clips are padded and masked); None
            keeps every frame. A video backbone with a fixed clip length needs exactly its `num_frames`, and reads a
            short clip's padding as the clip's own frames stretched over its length (`inputs_dmil.fill_clip`).
    """

    name: str
    kind: str
    backbone: Any = None
    pooling: str | None = None
    temporal_pooling: str = "mean"
    num_frames: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise ValueError(f"a modality name must be a Python identifier such as 'rgb', got {self.name!r}")
        if self.name in RESERVED_NAMES or self.name.startswith("_"):
            raise ValueError(
                f"{self.name!r} cannot name a modality: it is a keyword of the model, processor, collator or pipeline "
                f"(reserved: {', '.join(sorted(RESERVED_NAMES))}; names starting with '_' are reserved too)"
            )
        if self.kind not in KINDS:
            raise ValueError(f"modality {self.name!r}: kind must be one of {tuple(KINDS)}, got {self.kind!r}")
        if self.temporal_pooling not in TEMPORAL_POOLINGS:
            raise ValueError(
                f"modality {self.name!r}: temporal_pooling must be one of {TEMPORAL_POOLINGS}, got {self.temporal_pooling!r}"
            )
        if self.num_frames is not None and (isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int)
                                            or self.num_frames < 1):
            raise ValueError(f"modality {self.name!r}: num_frames must be a positive int or None, got {self.num_frames!r}")
        if self.num_frames is not None and self.kind != "video":
            raise ValueError(f"modality {self.name!r}: num_frames is for video modalities, not {self.kind!r}")

    @property
    def is_legacy_slot(self) -> bool:
        """Whether this row is one of the three-slot API's modalities (and keeps its input names)."""
        return KINDS[self.kind].legacy_name == self.name

    def to_row(self) -> dict[str, Any]:
        """The JSON row saved in `config.json` (the backbone config is saved as `<name>_config` beside it)."""
        row = {"name": self.name, "kind": self.kind}
        if self.kind == "video":
            row.update(temporal_pooling=self.temporal_pooling, num_frames=self.num_frames)
        return row


@dataclass(frozen=True)
class InputNames:
    """The names one modality's inputs take in the model's `forward`, the processor's output and the collator."""

    main: str  # the tensor the backbone encodes
    aliases: tuple[str, ...] = ()  # other accepted names of the main tensor (audio: input_values or input_features)
    mask: str | None = None  # a mask over the modality's time axis
    extra: tuple[str, ...] = ()  # further backbone inputs (text: token_type_ids)

    @property
    def all(self) -> tuple[str, ...]:
        return (self.main, *self.aliases, *((self.mask,) if self.mask else ()), *self.extra)


_AUDIO_INPUTS = ("input_values", "input_features")


def input_names(modality: Modality, main_input: str | None = None) -> InputNames:
    """The input names of a modality; `main_input` is the backbone's own (an audio backbone's `input_features`).

    The three-slot API's modalities keep their names (`input_ids`, `attention_mask`, `token_type_ids`;
    `pixel_values`; `input_values` or `input_features` with `audio_attention_mask`); every other modality's inputs
    are prefixed with its name (`rgb_pixel_values`, `rgb_attention_mask`).
    """
    kind = KINDS[modality.kind]
    main = main_input or kind.main_input
    aliases = tuple(n for n in _AUDIO_INPUTS if n != main) if modality.kind == "audio" else ()
    extra = ("token_type_ids",) if modality.kind == "text" else ()
    if modality.is_legacy_slot:
        mask = {"text": "attention_mask", "audio": "audio_attention_mask"}.get(modality.kind)
        return InputNames(main, aliases, mask, extra)
    prefix = f"{modality.name}_"
    return InputNames(
        prefix + main, tuple(prefix + a for a in aliases), prefix + "attention_mask" if kind.has_mask else None,
        tuple(prefix + e for e in extra),
    )


def pop_prefixed(
    kwargs: dict[str, Any], names: list[str], keep: Collection[str] = ()
) -> dict[str, dict[str, Any]]:
    """Take the keyword arguments meant for one modality's loader out of `kwargs`: `rgb_revision="main"` becomes
    `{"rgb": {"revision": "main"}}`. `<name>_config` keys stay (they are config fields, the three-slot form's), and so
    do the keys in `keep` (the model config's own arguments: with a modality named `gate`, `gate_objective` is the
    config's field, not that backbone's `objective`)."""
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    # Longest name first: with modalities `rgb` and `rgb_flow`, `rgb_flow_revision` is rgb_flow's `revision`, not
    # rgb's `flow_revision`.
    longest_first = sorted(names, key=len, reverse=True)
    for key in list(kwargs):
        if key.endswith("_config") or key in keep:
            continue
        for name in longest_first:
            if key.startswith(f"{name}_") and len(key) > len(name) + 1:
                options[name][key[len(name) + 1 :]] = kwargs.pop(key)
                break
    return options


def validate_table(modalities: list[Modality]) -> None:
    """Two to four rows with distinct names whose input names do not collide."""
    names = [m.name for m in modalities]
    if len(set(names)) != len(names):
        raise ValueError(f"modality names must be unique, got {names}")
    if len(modalities) < MIN_MODALITIES:
        raise ValueError(
            f"DMIL combines two to four modalities; the config has only {names}. Give at least two of text_config, "
            "vision_config and audio_config, or a modality_table of two to four rows"
        )
    if len(modalities) > MAX_MODALITIES:
        raise ValueError(f"DMIL combines two to four modalities; the modality table has {len(modalities)} ({names})")
    seen: dict[str, str] = {}
    for m in modalities:
        for name in input_names(m).all:
            if name in seen:
                raise ValueError(f"modalities {seen[name]!r} and {m.name!r} would both take the input {name!r}")
            seen[name] = m.name


__all__ = [
    "KINDS", "KindSpec", "Modality", "InputNames", "input_names", "pop_prefixed", "validate_table", "LEGACY_MODALITIES",
    "RESERVED_NAMES",
]
