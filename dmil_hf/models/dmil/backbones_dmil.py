"""One table of backbone-specific facts (width, pooling, build kwargs, input layout, LoRA targets), and the registries
of poolers that turn a backbone's output into one vector per sample.

Everything that differs between backbone families lives here, in the style of open_clip's ``arch_dict`` and
timm's pretrained configs, so the model and the trainer never branch on ``model_type``. An unknown
``model_type`` gets the defaults of its modality's kind, which work for any encoder whose output has a
``last_hidden_state`` and whose config has a ``hidden_size``.

This module is copied next to ``modeling_dmil.py`` when a model is saved with remote code, so it imports only
torch and transformers.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModel

from .modalities_dmil import KINDS

# The three-slot API's modalities, in their fixed order (kept for code written against it).
MODALITIES = ("text", "vision", "audio")

# Leaf names of attention projections before and after transformers 5.9 renamed ViT/AST's
# ``attention.attention.{query,value}`` to ``attention.{q_proj,v_proj}``: listing both keeps one table valid
# on every transformers version we support.
_QV_BOTH = ("query", "value", "q_proj", "v_proj")


def config_dims(*names: str) -> Callable[[Any], tuple[int, ...]]:
    """An input-shape rule reading the trailing input dims from config attributes (a list value gives its first)."""

    def dims(config: Any) -> tuple[int, ...]:
        values = [getattr(config, name) for name in names]
        return tuple(v if isinstance(v, int) else v[0] for v in values)

    return dims


@dataclass(frozen=True)
class BackboneSpec:
    """How DMIL wraps one backbone family.

    Attributes:
        pooling: a name in `POOLERS`: ``"cls"`` (first token of ``last_hidden_state``), ``"mean"`` (mean over valid
            positions, using the attention mask when there is one) or ``"pooler"`` (the backbone's own
            ``pooler_output``).
        width: the config attribute that holds the pooled vector's size.
        init_kwargs: extra constructor kwargs, e.g. ``add_pooling_layer=False`` so that no parameter goes unused
            (DDP raises on unused parameters).
        input_rank: the rank of the backbone's main input tensor (text ids 2, images 4, video clips 5, waveforms 2,
            spectrograms and feature sequences 3).
        input_shape: the trailing input dims the backbone requires, read from its config (None: any size), checked
            before the backbone runs so that a wrong size is a clear error rather than a crash inside it.
        lora_targets: leaf module names that receive LoRA adapters by default.
        model_class: dotted path of a class to build instead of ``AutoModel`` (Whisper: the encoder alone).
        no_split_modules: layer classes to keep whole (FSDP auto-wrap units, `device_map` blocks), added to the
            backbone class's own ``_no_split_modules`` for families whose transformers class declares none.
    """

    pooling: str = "mean"
    width: str = "hidden_size"
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    input_rank: int | None = None
    input_shape: Callable[[Any], tuple[int, ...]] | None = None
    lora_targets: tuple[str, ...] = _QV_BOTH
    model_class: str | None = None
    no_split_modules: tuple[str, ...] = ()


_NO_POOLER = {"add_pooling_layer": False}
_IMAGE_SHAPE = config_dims("num_channels", "image_size", "image_size")

BACKBONES: dict[str, BackboneSpec] = {
    # text: masked mean pooling. BERT's [CLS] vector is only trained through the NSP pooler we drop, so the mean of
    # the tokens is the better sentence vector for a fine-tuned classifier.
    "bert": BackboneSpec(pooling="mean", init_kwargs=_NO_POOLER, input_rank=2, lora_targets=("query", "value")),
    "roberta": BackboneSpec(pooling="mean", init_kwargs=_NO_POOLER, input_rank=2, lora_targets=("query", "value")),
    "xlm-roberta": BackboneSpec(pooling="mean", init_kwargs=_NO_POOLER, input_rank=2, lora_targets=("query", "value")),
    "distilbert": BackboneSpec(
        pooling="mean", width="dim", input_rank=2, lora_targets=("q_lin", "v_lin"),
        no_split_modules=("TransformerBlock",),
    ),
    "deberta-v2": BackboneSpec(
        pooling="mean", input_rank=2, lora_targets=("query_proj", "value_proj"),
        no_split_modules=("DebertaV2Embeddings", "DebertaV2Layer"),
    ),
    # vision: the [CLS] token of the final (layer-normed) sequence.
    "vit": BackboneSpec(pooling="cls", init_kwargs=_NO_POOLER, input_rank=4, input_shape=_IMAGE_SHAPE),
    "deit": BackboneSpec(pooling="cls", init_kwargs=_NO_POOLER, input_rank=4, input_shape=_IMAGE_SHAPE),
    # DINOv2 interpolates its position embeddings, so any image size works.
    "dinov2": BackboneSpec(pooling="cls", input_rank=4, input_shape=config_dims("num_channels")),
    # CLIP's pooled output goes through post_layernorm; pooling it keeps that layer in use.
    "clip_vision_model": BackboneSpec(pooling="pooler", input_rank=4, input_shape=_IMAGE_SHAPE),
    "siglip_vision_model": BackboneSpec(pooling="pooler", input_rank=4, input_shape=_IMAGE_SHAPE),
    # video: a clip of a fixed number of frames (batch, frames, channels, height, width), mean over its tokens.
    "videomae": BackboneSpec(
        pooling="mean", input_rank=5,
        input_shape=config_dims("num_frames", "num_channels", "image_size", "image_size"),
    ),
    # audio: waveforms, mean over the frames that are not padding.
    "wav2vec2": BackboneSpec(
        pooling="mean", input_rank=2, lora_targets=("q_proj", "v_proj"),
        no_split_modules=("Wav2Vec2EncoderLayer", "Wav2Vec2EncoderLayerStableLayerNorm"),
    ),
    "hubert": BackboneSpec(pooling="mean", input_rank=2, lora_targets=("q_proj", "v_proj")),
    # WavLM's attention hands q/k/v/out_proj's weights to F.multi_head_attention_forward as tensors (see
    # DIRECT_WEIGHT_READERS): adapters there would never run, so LoRA goes on the feed-forward layers.
    "wavlm": BackboneSpec(
        pooling="mean", input_rank=2, lora_targets=("intermediate_dense", "output_dense"),
        no_split_modules=("WavLMEncoderLayer", "WavLMEncoderLayerStableLayerNorm"),
    ),
    # audio: fixed-size spectrograms. AST's pooler output is the mean of its two summary tokens (no parameters).
    "audio-spectrogram-transformer": BackboneSpec(
        pooling="pooler", input_rank=3, input_shape=config_dims("max_length", "num_mel_bins")
    ),
    # Whisper's encoder alone, which takes exactly twice max_source_positions mel frames.
    "whisper": BackboneSpec(
        pooling="mean",
        width="d_model",
        input_rank=3,
        input_shape=lambda config: (config.num_mel_bins, 2 * config.max_source_positions),
        lora_targets=("q_proj", "v_proj"),
        model_class="transformers.models.whisper.modeling_whisper.WhisperEncoder",
    ),
    # features: dmil_hf's own encoder of pre-extracted feature sequences (feature_encoder_dmil).
    "dmil_feature_encoder": BackboneSpec(
        # Not the attention's out_proj: nn.MultiheadAttention reads its weight directly, so an adapter there would
        # never run. linear1 / linear2 are called as modules in every mode (DMILFeatureEncoderLayer).
        pooling="mean", lora_targets=("projection", "linear1", "linear2"),
        no_split_modules=("DMILFeatureEncoderLayer",),
    ),
}

# Modules that read some child Linear's weight as a tensor instead of calling it (class name -> child names): a
# LoRA adapter on such a child is never run, so the table never targets one and `add_lora` refuses one.
DIRECT_WEIGHT_READERS: dict[str, tuple[str, ...]] = {
    "MultiheadAttention": ("out_proj",),
    "WavLMAttention": ("q_proj", "k_proj", "v_proj", "out_proj"),
}

# Fallback per modality kind for a model_type the table does not know.
DEFAULT_SPECS: dict[str, BackboneSpec] = {
    "text": BackboneSpec(pooling="mean", input_rank=2),
    "image": BackboneSpec(pooling="cls", input_rank=4),
    "video": BackboneSpec(pooling="cls", input_rank=4),
    "audio": BackboneSpec(pooling="mean"),
    "features": BackboneSpec(pooling="mean"),
}
# A config with this attribute describes an encoder of whole clips (VideoMAE, TimeSformer, ViViT): it takes
# (batch, frames, channels, height, width), never single images, so a family the table lacks is run on the clip whole
# (as VideoMAE is) rather than frame by frame, which would crash inside it.
_CLIP_ATTRIBUTE = "num_frames"
DEFAULT_CLIP_SPEC = BackboneSpec(
    pooling="mean", input_rank=5, input_shape=config_dims("num_frames", "num_channels", "image_size", "image_size"),
)
# The three-slot API called the image kind "vision".
_KIND_OF_SLOT = {"vision": "image"}


def is_clip_encoder(config: Any) -> bool:
    """Whether a backbone config describes an encoder of whole video clips (a fixed `num_frames`)."""
    frames = getattr(config, _CLIP_ATTRIBUTE, None)
    return isinstance(frames, int) and not isinstance(frames, bool)


def backbone_spec(model_type: str, kind: str, config: Any = None) -> BackboneSpec:
    """The spec of a backbone family, or the default of the modality's kind (`"vision"` is read as `"image"`); for a
    video row whose family the table lacks, `config` tells a clip encoder (`DEFAULT_CLIP_SPEC`) from an image
    backbone run per frame."""
    if model_type in BACKBONES:
        return BACKBONES[model_type]
    kind = _KIND_OF_SLOT.get(kind, kind)
    if kind == "video" and config is not None and is_clip_encoder(config):
        return DEFAULT_CLIP_SPEC
    return DEFAULT_SPECS[kind]


# Families that take a main input another kind shares but a layout only one kind has: dmil_hf's feature encoder takes
# `input_features` (batch, steps, feature_dim), the name Whisper gives its spectrograms, and nothing an audio
# feature extractor emits.
KIND_ONLY_FAMILIES: dict[str, str] = {"dmil_feature_encoder": "features"}
# A config with this attribute describes a spectrogram encoder (Whisper, AST): an audio backbone, never a `features`
# one, although Whisper's main input is `input_features` too.
_SPECTROGRAM_ATTRIBUTE = "num_mel_bins"
# Families that fit each kind, for the error on one that does not.
_KIND_EXAMPLES = {
    "text": "bert, roberta", "image": "vit, dinov2, clip_vision_model", "video": "vit (per frame) or videomae",
    "audio": "wav2vec2, whisper, audio-spectrogram-transformer", "features": "dmil_feature_encoder",
}


def backbone_main_input(config: Any) -> str | None:
    """The `main_input_name` of the model AutoModel builds for `config`, read from its class without building it;
    None for a family AutoModel does not know (a remote-code backbone), which is checked once built."""
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except (KeyError, AttributeError, ImportError, ValueError):
        return None
    if isinstance(model_class, (tuple, list)):
        model_class = model_class[0]
    return getattr(model_class, "main_input_name", None)


def check_backbone_fits(modality: str, kind: str, config: Any, main_input: str | None = None) -> None:
    """Refuse a backbone that cannot take its modality kind's input, before anything is built or loaded.

    The backbone's main input name (`main_input` from a built backbone, else `backbone_main_input`) tells which kinds
    it encodes (`modalities_dmil.KindSpec.backbone_inputs`: `input_ids` text, `pixel_values` image and video,
    `input_values`/`input_features` audio, `input_features` features); so a family missing from `BACKBONES` works
    with its kind's defaults as long as its input fits. Refinements where a name is shared: dmil_hf's feature
    encoder is for `features` only, a spectrogram encoder (a config with `num_mel_bins`) is audio, not features, and
    a clip encoder (a config with `num_frames`: VideoMAE, TimeSformer) is video, not image. An encoder-decoder family
    the table lacks is refused (its encoder must be named there). A family whose input cannot be told without
    building it is checked by the model once built.
    """
    model_type = getattr(config, "model_type", type(config).__name__)
    spec = KINDS[kind]
    own_kind = KIND_ONLY_FAMILIES.get(model_type)
    main_input = main_input or backbone_main_input(config)
    problem = None
    if own_kind is not None and own_kind != kind:
        problem = f"the {model_type} encoder is for {own_kind} modalities only"
    elif main_input is not None and main_input not in spec.backbone_inputs:
        problem = f"its {model_type} backbone takes {main_input}, not {' or '.join(spec.backbone_inputs)}"
    elif kind == "features" and own_kind is None and hasattr(config, _SPECTROGRAM_ATTRIBUTE):
        problem = f"its {model_type} backbone encodes audio spectrograms, not pre-extracted feature vectors"
    elif kind == "image" and is_clip_encoder(config):
        problem = f"its {model_type} backbone encodes video clips of {config.num_frames} frames, not single images"
    if problem is not None:
        raise ValueError(
            f"modality {modality!r} is of kind {kind!r}, but {problem}; give it a backbone that takes {kind} input "
            f"(e.g. {_KIND_EXAMPLES[kind]}), or the row the kind its backbone encodes"
        )
    if getattr(config, "is_encoder_decoder", False) and model_type not in BACKBONES:
        # T5's forward stops without decoder inputs, BART's runs its decoder and ties weights a saved DMIL model
        # cannot load back: DMIL pools an encoder's states, which the table's `model_class` names (as for Whisper).
        raise ValueError(
            f"modality {modality!r}: its {model_type} backbone is an encoder-decoder model; DMIL needs its encoder "
            f"alone. Add the family to dmil_hf.models.dmil.backbones_dmil.BACKBONES with its encoder class as model_class (as "
            f"'whisper' has)"
        )


def backbone_no_split_modules(backbone: torch.nn.Module, spec: BackboneSpec) -> set[str]:
    """The layer classes of a built backbone that must stay whole: its class's own ``_no_split_modules`` (what
    transformers declares for it) and the table's ``no_split_modules`` (for families that declare none), kept to the
    classes the backbone really has (CLIP's vision tower declares its text embeddings too, wav2vec2-base has no
    stable-layer-norm layers). FSDP's transformer auto-wrap and `device_map` read the union over the backbones from
    the DMIL model's ``_no_split_modules``."""
    declared = set(getattr(backbone, "_no_split_modules", None) or ()) | set(spec.no_split_modules)
    present = {type(module).__name__ for module in backbone.modules()}
    return declared & present


def backbone_width(config: Any, spec: BackboneSpec) -> int:
    """The size of the backbone's pooled vector, from the config attribute the table names."""
    width = getattr(config, spec.width, None)
    if isinstance(width, bool) or not isinstance(width, int):
        raise ValueError(
            f"cannot read the width of the {config.model_type} backbone: its config has no integer {spec.width!r}; "
            f"add the family to dmil_hf.models.dmil.backbones_dmil.BACKBONES with its width attribute"
        )
    return width


def expected_input_shape(config: Any, spec: BackboneSpec) -> tuple[int, ...]:
    """The trailing input dims a backbone requires, read from its config (empty when it takes any size)."""
    return spec.input_shape(config) if spec.input_shape is not None else ()


# ----------------------------------------------------------------------------------------------------------------
# Poolers: backbone output -> one vector per sample. A pooler takes (output, attention_mask or None, backbone).
# ----------------------------------------------------------------------------------------------------------------

Pooler = Callable[[Any, "torch.Tensor | None", Any], torch.Tensor]
POOLERS: dict[str, Pooler] = {}


def register_pooler(name: str) -> Callable[[Pooler], Pooler]:
    """Add a pooler to `POOLERS` under `name` (a config's `pooling` may then name it)."""

    def register(function: Pooler) -> Pooler:
        POOLERS[name] = function
        return function

    return register


@register_pooler("cls")
def cls_pooler(output: Any, mask: torch.Tensor | None, backbone: Any) -> torch.Tensor:
    """The first position of `last_hidden_state` ([CLS])."""
    return output.last_hidden_state[:, 0]


@register_pooler("mean")
def mean_pooler(output: Any, mask: torch.Tensor | None, backbone: Any) -> torch.Tensor:
    """The mean of `last_hidden_state` over the positions the mask keeps (all of them without a mask)."""
    hidden = output.last_hidden_state
    if mask is not None and mask.shape[1] != hidden.shape[1]:
        # Waveform masks count samples; the encoder's frames are fewer. Let the backbone map one to the other.
        to_frames = getattr(backbone, "_get_feature_vector_attention_mask", None)
        mask = to_frames(hidden.shape[1], mask) if to_frames is not None else None
    return masked_time_mean(hidden, mask)


@register_pooler("pooler")
def backbone_pooler(output: Any, mask: torch.Tensor | None, backbone: Any) -> torch.Tensor:
    """The backbone's own `pooler_output`."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ValueError(
            f"pooling 'pooler' was chosen for a {backbone.config.model_type} backbone, which returns no "
            "pooler_output; use 'cls' or 'mean'"
        )
    return pooled


def masked_time_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of `(batch, time, dim)` values, over the steps `mask` keeps."""
    if mask is None:
        return values.mean(dim=1)
    mask = mask.to(values.dtype).unsqueeze(-1)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def masked_time_max(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Max over dim 1 of `(batch, time, dim)` values, over the steps `mask` keeps (0 where it keeps none)."""
    if mask is None:
        return values.amax(dim=1)
    keep = mask.bool().unsqueeze(-1)
    pooled = values.masked_fill(~keep, torch.finfo(values.dtype).min).amax(dim=1)
    return torch.where(keep.any(dim=1), pooled, torch.zeros_like(pooled))


# How a video's per-frame vectors `(batch, frames, dim)` become one, with the frame mask.
TEMPORAL_POOLERS: dict[str, Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]] = {
    "mean": masked_time_mean,
    "max": masked_time_max,
}


# ----------------------------------------------------------------------------------------------------------------
# Fast paths: numerically equivalent, faster computations of backbone hot spots, switched on by name
# (`DMILConfig.fast_paths`). Each changes how a module computes, never its weights or their names.
# ----------------------------------------------------------------------------------------------------------------


def _unfold_conv1d(conv: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A grouped, stride-1 Conv1d as one batched matmul over sliding windows (unfold + einsum).

    cuDNN's grouped convolution with a long kernel (wav2vec2's positional convolution: kernel 128, 16 groups) runs far
    below the GPU's matmul rate; the windows of a second of audio (50 frames) are small enough to materialise.
    """
    pad = conv.padding[0]
    x = torch.nn.functional.pad(input, (pad, pad))
    batch, channels, _ = x.shape
    groups, kernel = conv.groups, weight.shape[-1]
    windows = x.unfold(2, kernel, 1).reshape(batch, groups, channels // groups, -1, kernel)
    w = weight.reshape(groups, weight.shape[0] // groups, channels // groups, kernel)
    out = torch.einsum("bgctk,gock->bgot", windows, w).reshape(batch, weight.shape[0], -1)
    return out if bias is None else out + bias[None, :, None]


def _positional_conv_unfold(module: Any) -> bool:
    """wav2vec2-family positional convolution (wav2vec2, HuBERT, WavLM, data2vec-audio) computed by `_unfold_conv1d`."""
    conv = getattr(module, "conv", None)
    if not type(module).__name__.endswith("PositionalConvEmbedding") or not isinstance(conv, torch.nn.Conv1d):
        return False
    if conv.stride != (1,) or conv.dilation != (1,) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    # Bound to this conv, so that a deep copy of the model rebinds it to the copy.
    conv._conv_forward = types.MethodType(_unfold_conv1d, conv)
    return True


# name -> a function that switches one module to the fast path and says whether it applied.
FAST_PATHS: dict[str, Callable[[Any], bool]] = {"positional_conv_unfold": _positional_conv_unfold}


def apply_fast_paths(model: torch.nn.Module, names: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Switch every module of `model` that a fast path in `names` covers; returns how many modules each switched."""
    counts = {name: 0 for name in names}
    for module in model.modules():
        for name in names:
            counts[name] += bool(FAST_PATHS[name](module))
    return counts
