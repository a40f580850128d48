"""One table of backbone-specific facts (pooling, build kwargs, input layout, LoRA targets).

Everything that differs between backbone families lives here, in the style of open_clip's ``arch_dict`` and
timm's pretrained configs, so the model and the trainer never branch on ``model_type``. An unknown
``model_type`` gets the defaults of its modality slot, which work for any encoder whose output has a
``last_hidden_state``.

This module is copied next to ``modeling_dmil.py`` when a model is saved with remote code, so it imports only
torch and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("text", "vision", "audio")

# Leaf names of attention projections before and after transformers 5.9 renamed ViT/AST's
# ``attention.attention.{query,value}`` to ``attention.{q_proj,v_proj}``: listing both keeps one table valid
# on every transformers version we support.
_QV_BOTH = ("query", "value", "q_proj", "v_proj")


@dataclass(frozen=True)
class BackboneSpec:
    """How DMIL wraps one backbone family.

    Attributes:
        pooling: ``"cls"`` (first token of ``last_hidden_state``), ``"mean"`` (mean over valid positions, using the
            attention mask when there is one) or ``"pooler"`` (the backbone's own ``pooler_output``).
        init_kwargs: extra constructor kwargs, e.g. ``add_pooling_layer=False`` so that no parameter goes unused
            (DDP raises on unused parameters).
        input_rank: the rank of the backbone's main input tensor (text ids 2, images 4, waveforms 2, spectrograms 3).
        fixed_input_shape: config attribute names that fix the trailing input dims, checked before the backbone runs
            so that a wrong size is a clear error rather than a crash inside the position embeddings.
        lora_targets: leaf module names that receive LoRA adapters by default.
        model_class: dotted path of a class to build instead of ``AutoModel`` (Whisper: the encoder alone).
    """

    pooling: str = "mean"
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    input_rank: int | None = None
    fixed_input_shape: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = _QV_BOTH
    model_class: str | None = None


_NO_POOLER = {"add_pooling_layer": False}

BACKBONES: dict[str, BackboneSpec] = {
    # text: masked mean pooling. BERT's [CLS] vector is only trained through the NSP pooler we drop, so the mean of
    # the tokens is the better sentence vector for a fine-tuned classifier.
    "bert": BackboneSpec(pooling="mean", init_kwargs=_NO_POOLER, input_rank=2, lora_targets=("query", "value")),
    "roberta": BackboneSpec(pooling="mean", init_kwargs=_NO_POOLER, input_rank=2, lora_targets=("query", "value")),
    "xlm-roberta": BackboneSpec(pooling="mean", init_kwargs=_NO_POOLER, input_rank=2, lora_targets=("query", "value")),
    "distilbert": BackboneSpec(pooling="mean", input_rank=2, lora_targets=("q_lin", "v_lin")),
    "deberta-v2": BackboneSpec(pooling="mean", input_rank=2, lora_targets=("query_proj", "value_proj")),
    # vision: the [CLS] token of the final (layer-normed) sequence.
    "vit": BackboneSpec(
        pooling="cls", init_kwargs=_NO_POOLER, input_rank=4, fixed_input_shape=("num_channels", "image_size", "image_size")
    ),
    "deit": BackboneSpec(
        pooling="cls", init_kwargs=_NO_POOLER, input_rank=4, fixed_input_shape=("num_channels", "image_size", "image_size")
    ),
    # DINOv2 interpolates its position embeddings, so any image size works.
    "dinov2": BackboneSpec(pooling="cls", input_rank=4, fixed_input_shape=("num_channels",)),
    # CLIP's pooled output goes through post_layernorm; pooling it keeps that layer in use.
    "clip_vision_model": BackboneSpec(
        pooling="pooler", input_rank=4, fixed_input_shape=("num_channels", "image_size", "image_size")
    ),
    "siglip_vision_model": BackboneSpec(
        pooling="pooler", input_rank=4, fixed_input_shape=("num_channels", "image_size", "image_size")
    ),
    # audio: waveforms, mean over the frames that are not padding.
    "wav2vec2": BackboneSpec(pooling="mean", input_rank=2, lora_targets=("q_proj", "v_proj")),
    "hubert": BackboneSpec(pooling="mean", input_rank=2, lora_targets=("q_proj", "v_proj")),
    "wavlm": BackboneSpec(pooling="mean", input_rank=2, lora_targets=("q_proj", "v_proj")),
    # audio: fixed-size spectrograms. AST's pooler output is the mean of its two summary tokens (no parameters).
    "audio-spectrogram-transformer": BackboneSpec(
        pooling="pooler", input_rank=3, fixed_input_shape=("max_length", "num_mel_bins")
    ),
    "whisper": BackboneSpec(
        pooling="mean",
        input_rank=3,
        fixed_input_shape=("num_mel_bins", "__whisper_frames__"),
        lora_targets=("q_proj", "v_proj"),
        model_class="transformers.models.whisper.modeling_whisper.WhisperEncoder",
    ),
}

# Fallback per modality slot for a model_type the table does not know.
DEFAULT_SPECS: dict[str, BackboneSpec] = {
    "text": BackboneSpec(pooling="mean", input_rank=2),
    "vision": BackboneSpec(pooling="cls", input_rank=4),
    "audio": BackboneSpec(pooling="mean"),
}


def backbone_spec(model_type: str, modality: str) -> BackboneSpec:
    """The spec of a backbone family, or the modality's default for an unknown one."""
    return BACKBONES.get(model_type, DEFAULT_SPECS[modality])


def expected_input_shape(config: Any, spec: BackboneSpec) -> tuple[int, ...]:
    """The trailing input dims a backbone requires, read from its config (empty when it takes any size)."""
    dims = []
    for name in spec.fixed_input_shape:
        if name == "__whisper_frames__":  # Whisper's encoder needs exactly twice max_source_positions frames
            dims.append(2 * config.max_source_positions)
        else:
            value = getattr(config, name)
            dims.append(value if isinstance(value, int) else value[0])
    return tuple(dims)
