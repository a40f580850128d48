"""Input checking and routing: the model's keyword inputs, checked per modality against its kind and backbone, and
grouped as each backbone's forward kwargs. Every mistake is reported with the input's name and what was expected,
before any backbone runs.

This module is copied next to ``modeling_dmil.py`` when a model is saved with remote code, so it imports only torch
and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .backbones_dmil import BackboneSpec, expected_input_shape
from .modalities_dmil import InputNames, Modality

# Inputs are normalised (images and waveforms of unit scale, spectrograms of tens at most); a magnitude beyond this is
# a unit mistake (raw 16-bit samples, unscaled pixels) or garbage, and overflows attention to NaN logits in half
# precision long before it overflows float32.
MAX_INPUT_MAGNITUDE = 1e4


@dataclass(frozen=True)
class ModalityRoute:
    """How one modality's inputs reach its backbone: the row, its input names, the backbone's table entry and
    config, the backbone's own name for the main input, and whether a video is encoded frame by frame."""

    modality: Modality
    names: InputNames
    spec: BackboneSpec
    backbone_config: Any
    backbone_input: str
    takes_mask: bool

    @property
    def per_frame(self) -> bool:
        """A video through an image backbone: (batch, frames, ...) is encoded as batch * frames images."""
        return self.modality.kind == "video" and self.spec.input_rank != 5


def check_tensor(name: str, value: object, floating: bool) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if not floating and (value.is_floating_point() or value.is_complex()):
        raise TypeError(f"{name} must be an integer or boolean tensor, got dtype {value.dtype}")
    if value.dim() == 0 or value.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)}): a batch needs at least one sample")
    return value


def check_values(name: str, value: torch.Tensor) -> None:
    """NaN, infinite and absurdly large values, in one host sync."""
    magnitude = value.detach().abs().amax()
    if bool(magnitude <= MAX_INPUT_MAGNITUDE):
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    raise ValueError(
        f"{name} has values up to {float(magnitude):.3g}; the backbones expect normalised inputs (|x| <= "
        f"{MAX_INPUT_MAGNITUDE:g}): was a processor's normalisation skipped?"
    )


def receptive_field(config: Any) -> int | None:
    """Fewest waveform samples a convolutional feature encoder (wav2vec2, HuBERT, WavLM) turns into one frame."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not kernels or not strides:
        return None
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def check_rank(name: str, value: torch.Tensor, ranks: tuple[int, ...] | int | None, layout: str) -> None:
    ranks = (ranks,) if isinstance(ranks, int) else ranks
    if ranks and value.dim() not in ranks:
        raise ValueError(f"{name} must have shape {layout} ({' or '.join(map(str, ranks))} dims), got shape {tuple(value.shape)}")


def _check_mask(name: str, mask: torch.Tensor, main_name: str, main: torch.Tensor, time_dims: tuple[int, ...]) -> None:
    check_rank(name, mask, 2, "(batch, time)")
    if mask.shape[0] != main.shape[0] or mask.shape[1] not in [main.shape[d] for d in time_dims if d < main.dim()]:
        raise ValueError(
            f"{name} must have shape (batch, time) matching {main_name} of shape {tuple(main.shape)}, "
            f"got {tuple(mask.shape)}"
        )


def _check_fixed_shape(name: str, value: torch.Tensor, route: ModalityRoute, leading: int) -> None:
    """The dims the backbone fixes (image size, mel bins, clip length), after the first `leading` dims."""
    expected = expected_input_shape(route.backbone_config, route.spec)
    got = tuple(value.shape[leading : leading + len(expected)])
    if expected and got != expected:
        layout = ", ".join(["batch", "frames"][:leading] + [str(d) for d in expected])
        raise ValueError(
            f"{name} must have shape ({layout}{', ...' if len(expected) < value.dim() - leading else ''}) for this "
            f"{route.backbone_config.model_type} backbone, got {tuple(value.shape)}"
        )


def _check_text(name: str, ids: torch.Tensor, route: ModalityRoute, check_values_too: bool) -> None:
    config = route.backbone_config
    if ids.dtype in (torch.bool, torch.uint8):
        raise TypeError(f"{name} must be integer token ids (int64 or int32), got dtype {ids.dtype}")
    check_rank(name, ids, 2, "(batch, sequence_length)")
    limit = getattr(config, "max_position_embeddings", None)
    if ids.shape[1] == 0 or (limit and ids.shape[1] > limit):
        raise ValueError(
            f"{name} must have between 1 and {limit or 'any number of'} tokens per sample for this "
            f"{config.model_type} backbone, got shape {tuple(ids.shape)}; truncate the text (the processor does "
            "with truncation=True)"
        )
    vocab = getattr(config, "vocab_size", None)
    if check_values_too and vocab and bool(((ids < 0) | (ids >= vocab)).any()):
        raise ValueError(f"{name} must be token ids in [0, {vocab}), got values outside that range")


def _check_audio(name: str, audio: torch.Tensor, route: ModalityRoute) -> None:
    rank = route.spec.input_rank
    check_rank(name, audio, rank, "(batch, samples)" if rank == 2 else "(batch, frames/mel dims...)")
    shortest = receptive_field(route.backbone_config) if rank == 2 else None
    if shortest and audio.shape[1] < shortest:
        raise ValueError(
            f"{name} must have at least {shortest} samples per clip (the receptive field of this "
            f"{route.backbone_config.model_type} feature encoder), got shape {tuple(audio.shape)}; pad short clips "
            "with silence"
        )
    expected = expected_input_shape(route.backbone_config, route.spec)
    if expected and tuple(audio.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape (batch, {', '.join(map(str, expected))}) for this "
            f"{route.backbone_config.model_type} backbone, got {tuple(audio.shape)}"
        )


def _check_features(name: str, features: torch.Tensor, route: ModalityRoute) -> None:
    check_rank(name, features, (2, 3), "(batch, steps, feature_dim) or (batch, feature_dim)")
    dim = getattr(route.backbone_config, "feature_dim", None)
    if dim is not None and features.shape[-1] != dim:
        raise ValueError(
            f"{name} must have feature_dim={dim} values per step (its encoder's config), got shape {tuple(features.shape)}"
        )


# What one step of each kind's time axis is called, for the error on an input with none.
_TIME_UNITS = {"image": "pixel", "video": "frame", "audio": "sample (or spectrogram frame)", "features": "step"}


def fill_clip(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A `(batch, frames, ...)` clip whose padded frames (mask 0, after the real ones) are replaced by the real frames
    stretched over the clip's length: real frames `[a, b]` of a 4-frame clip become `[a, a, b, b]`, as a video
    sampler repeats the frames of a clip shorter than its window. A clip without padding is returned as it is; one
    without a real frame keeps its first frame (it is a missing modality, never read)."""
    steps = frames.shape[1]
    real = mask.to(torch.bool).sum(dim=1, keepdim=True)  # (batch, 1)
    index = torch.arange(steps, device=frames.device).unsqueeze(0) * real.clamp(min=1) // steps  # (batch, frames)
    rows = torch.arange(frames.shape[0], device=frames.device).unsqueeze(1)
    return frames[rows, index]


def check_modality(route: ModalityRoute, given: dict[str, torch.Tensor], check_values_too: bool) -> dict[str, torch.Tensor]:
    """Check one modality's inputs (`given`: input name -> tensor) and return the backbone's forward kwargs, plus
    `"attention_mask"` for the modality's time mask (tokens, samples, frames or steps)."""
    names, kind = route.names, route.modality.kind
    main_name = next((n for n in (names.main, *names.aliases) if n in given), None)
    if main_name is None:
        stray = ", ".join(sorted(given))
        raise ValueError(f"{stray} given without {' or '.join((names.main, *names.aliases))}")
    if len([n for n in (names.main, *names.aliases) if n in given]) > 1:
        raise ValueError(f"give the {route.modality.name} input as {' or as '.join((names.main, *names.aliases))}, not both")
    main = check_tensor(main_name, given[main_name], floating=kind != "text")
    if kind == "text":
        _check_text(main_name, main, route, check_values_too)
    elif kind == "image":
        check_rank(main_name, main, 4, "(batch, channels, height, width)")
        _check_fixed_shape(main_name, main, route, leading=1)
    elif kind == "video":
        check_rank(main_name, main, 5, "(batch, frames, channels, height, width)")
        _check_fixed_shape(main_name, main, route, leading=2 if route.per_frame else 1)
    elif kind == "audio":
        _check_audio(main_name, main, route)
    else:
        _check_features(main_name, main, route)
    if kind != "text" and 0 in main.shape[1:]:
        # Pooling over an empty axis is NaN (or an error deep in a backbone), with check_inputs off too.
        raise ValueError(
            f"{main_name} has shape {tuple(main.shape)}, with an empty axis: each sample needs at least one "
            f"{_TIME_UNITS[kind]} (leave the input out when no sample has it; a sample without it is marked False in "
            "modality_mask, or by a mask of zeros)"
        )
    if check_values_too and main.is_floating_point():
        check_values(main_name, main)
    kwargs = {route.backbone_input: main}
    if names.mask and names.mask in given:
        mask = check_tensor(names.mask, given[names.mask], floating=False)
        if kind == "text":
            if mask.shape != main.shape:
                raise ValueError(f"{names.mask} must have the shape of {main_name} {tuple(main.shape)}, got {tuple(mask.shape)}")
        elif kind == "features" and main.dim() == 2:
            raise ValueError(f"{names.mask} was given, but {main_name} is one vector per sample (no steps to mask)")
        else:
            # The time axis: dim 1 for waveforms, AST's (frames, mel), video frames and feature steps; dim 2 for
            # Whisper's (mel, frames).
            _check_mask(names.mask, mask, main_name, main, (1, 2) if kind == "audio" else (1,))
        if check_values_too and mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
            # A mask weighs what it keeps (a frame's features in the temporal mean, a token in attention): a 2 or a
            # 255 would silently shift the features, and hence the logits.
            found = sorted(set(mask.unique().tolist()) - {0, 1})
            raise ValueError(
                f"{names.mask} must hold only 0 (padding) and 1 (kept), or False/True, got the values "
                f"{found[:5]}{' ...' if len(found) > 5 else ''}"
            )
        if kind == "video" and not route.per_frame and check_values_too:
            kept = mask.to(torch.bool)
            if bool((kept[:, 1:] & ~kept[:, :-1]).any()):
                raise ValueError(
                    f"{names.mask} must mark each clip's real frames first, then its padding (ones, then zeros): the "
                    f"{route.backbone_config.model_type} backbone reads a clip's frames in order, and a short clip's "
                    "padding is filled with its real frames"
                )
        kwargs["attention_mask"] = mask
    for extra in names.extra:
        if extra in given:
            value = check_tensor(extra, given[extra], floating=False)
            if value.shape != main.shape:
                raise ValueError(f"{extra} must have the shape of {main_name} {tuple(main.shape)}, got {tuple(value.shape)}")
            kwargs[extra.removeprefix(f"{route.modality.name}_")] = value
    return kwargs


__all__ = ["ModalityRoute", "check_modality", "check_tensor", "check_values", "fill_clip", "MAX_INPUT_MAGNITUDE"]
