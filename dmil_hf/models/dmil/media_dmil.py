"""Reading media into what DMIL's sub-processors take: audio files and waveforms (decoded with soundfile, resampled
with numpy), images (paths, bytes, arrays, PIL), video clips (frame lists, arrays, files through PyAV) and feature
sequences. Each `_check_<kind>` turns one batch item into the sub-processor's input, or None for a missing modality,
and names the input in every error.

Adding a media source (a new container, a `datasets` column type) touches this module only. Like the processor, it
is copied next to the model files with remote code, so PIL, soundfile and av are imported inside `try` blocks.
"""

from __future__ import annotations

import io
import logging
import math
import os
from typing import Any

import numpy as np
import torch

# PIL modes that hold 16-bit samples (16-bit greyscale PNG and TIFF files); PIL's convert("RGB") clips them at 255.
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# Float values a hair outside [0, 1] (rounding in earlier arithmetic) are clipped rather than refused.
_UNIT_RANGE_TOLERANCE = 1e-3

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Audio decoding and resampling (numpy only: torchaudio/torchcodec are not dependencies)
# ----------------------------------------------------------------------------------------------------------------


def resample_audio(
    waveform: np.ndarray,
    orig_sampling_rate: int,
    target_sampling_rate: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> np.ndarray:
    """Band-limited (windowed-sinc, Hann window) resampling of a 1-D waveform, in numpy.

    The same polyphase algorithm as `torchaudio.functional.resample`'s default `"sinc_interp_hann"`: the rate ratio
    is reduced by its gcd, one low-pass kernel is built per output phase, and the output has
    `ceil(len(waveform) * target / orig)` samples.

    Example:

    ```python
    >>> import numpy as np
    >>> from dmil_hf.models.dmil.processing_dmil import resample_audio
    >>> resample_audio(np.zeros(8000, dtype=np.float32), 8000, 16000).shape
    (16000,)
    ```
    """
    orig, new = int(orig_sampling_rate), int(target_sampling_rate)
    if orig <= 0 or new <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_sampling_rate} -> {target_sampling_rate}")
    waveform = np.asarray(waveform, dtype=np.float32)
    if orig == new:
        return waveform
    length = waveform.shape[-1]
    gcd = math.gcd(orig, new)
    orig, new = orig // gcd, new // gcd
    # The cut-off sits just under the lower Nyquist frequency so that downsampling does not alias.
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    taps = np.arange(-width, width + orig, dtype=np.float64) / orig
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + taps[None, :]) * base_freq
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe_t = np.where(t == 0, 1.0, t)
    kernels = (np.where(t == 0, 1.0, np.sin(safe_t) / safe_t) * window * (base_freq / orig)).astype(np.float32)
    padded = np.pad(waveform, (width, width + orig))
    # One frame of kernels.shape[1] samples every `orig` input samples gives `new` output samples.
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernels.shape[1])[::orig]
    out = (frames @ kernels.T).reshape(-1)
    return out[: math.ceil(new * length / orig)].astype(np.float32)


def pcm_to_float(samples: np.ndarray, name: str) -> np.ndarray:
    """A waveform of integer PCM samples as float32 in [-1, 1): the one scaling rule for integer audio, applied by the
    processor and the collator alike (and the one libsndfile applies when it decodes a PCM file, so that an int16
    array and the same samples read from a 16-bit WAV give the same floats).

    A signed integer array of a PCM width (int8, int16, int32) is divided by 2 ** (bits - 1). int64 is no audio
    format: it is what a list of Python ints becomes (a `datasets` integer column, a torch.long tensor), so it is
    taken as 16-bit PCM, by far the most common, and values beyond int16's range are an error (give 32-bit PCM as an
    int32 array). Float arrays are returned as float32, unscaled; any other dtype is an error naming the input.
    """
    dtype = samples.dtype
    if dtype == np.int64:
        low, high = (int(samples.min()), int(samples.max())) if samples.size else (0, 0)
        if low < -(2**15) or high >= 2**15:
            raise ValueError(
                f"{name}: integer samples (int64, or a list of ints) are taken as 16-bit PCM, but they range over "
                f"[{low}, {high}], beyond int16; give 32-bit PCM as an int32 array, or floats in [-1, 1]"
            )
        return (samples / float(2**15)).astype(np.float32)
    if np.issubdtype(dtype, np.signedinteger):
        return (samples / float(2 ** (8 * dtype.itemsize - 1))).astype(np.float32)
    if np.issubdtype(dtype, np.floating):
        return samples.astype(np.float32, copy=False)
    raise TypeError(f"{name} must be a float or signed-integer PCM waveform, got dtype {dtype}")


def sampling_rate_of(value: Any, name: str) -> int:
    """A sampling rate as an int: a positive integer (8000), or a float with a whole value (8000.0, as a CSV column
    with a missing value stores its integers). A string ('8k', '8000'), a fraction (8000.5), zero, a negative number
    or a bool is a ValueError naming `name` (the field, or the argument) and what was expected."""
    whole = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not whole or value <= 0:
        raise ValueError(
            f"{name} must be a sampling rate in Hz, a positive integer such as 16000 (8000.0 is taken as 8000), got "
            f"{value!r} ({type(value).__name__})"
        )
    return int(value)


def _media_label(source: Any, stored_path: str | None = None) -> str:
    """How an error names a media source: its path, or the path a `datasets` column stored with its bytes."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    return f"bytes of {stored_path!r}" if stored_path else "<bytes>"


def _read_audio_file(
    source: str | os.PathLike | bytes, name: str, stored_path: str | None = None
) -> tuple[np.ndarray, int]:
    """An audio file (a path, or its bytes: a `datasets.Audio` column stores them) as a mono float32 waveform and its
    rate, decoded with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3). `stored_path` only names the bytes
    in errors."""
    try:
        import soundfile
    except ImportError as err:  # pragma: no cover - soundfile is a dependency of dmil_hf
        raise ImportError(f"{name}: reading audio files needs the `soundfile` package (pip install soundfile)") from err
    label = _media_label(source, stored_path)
    is_bytes = isinstance(source, (bytes, bytearray))
    try:
        data, sampling_rate = soundfile.read(
            io.BytesIO(source) if is_bytes else os.fspath(source), dtype="float32", always_2d=True
        )
    except Exception as err:
        raise ValueError(f"{name}: cannot read audio file {label} ({type(err).__name__}: {err})") from err
    # libsndfile decodes a truncated WAV without a word (it shortens the length to what is left), so the length
    # its header declares is compared here. (A truncated FLAC is a decoding error, reported above.)
    declared = _wav_header_frames(source)
    if declared is not None and len(data) < declared:
        logger.warning(
            "%s: %s is truncated: decoded %d of the %d samples its header declares (%.3f s at %d Hz); using the "
            "decoded part", name, label, len(data), declared, len(data) / sampling_rate, sampling_rate,
        )
    # Multi-channel files are down-mixed: the backbones take mono audio.
    return data.mean(axis=1), int(sampling_rate)


def _wav_header_frames(source: str | os.PathLike | bytes) -> int | None:
    """Frames a RIFF/WAVE file's (or its bytes') `data` chunk header declares; None for other files, unreadable
    headers and streamed WAVs whose writer did not know the length (size 0 or 0xFFFFFFFF)."""
    try:
        with (io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(os.fspath(source), "rb")) as f:
            riff = f.read(12)
            if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                header = f.read(8)
                if len(header) < 8:
                    return None
                chunk, size = header[:4], int.from_bytes(header[4:], "little")
                if chunk == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else None
                elif chunk == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    f.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to an even size
    except OSError:
        return None


def _open_image(source: Any, name: str, stored_path: str | None = None):
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - pillow is a dependency of dmil_hf
        raise ImportError(f"{name}: reading image files needs the `Pillow` package (pip install pillow)") from err
    label = _media_label(source, stored_path)
    try:
        opened = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    except Exception as err:
        raise ValueError(f"{name}: cannot read image file {label} ({type(err).__name__}: {err})") from err
    with opened as image:
        try:
            image.load()  # decodes now, so that a corrupt file is reported as one
        except Exception as err:
            raise ValueError(f"{name}: cannot read image file {label} ({type(err).__name__}: {err})") from err
        return _to_rgb(image, name)


def _is_pil_image(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Image.Image)


def _to_rgb(image: Any, name: str) -> Any:
    """Any PIL image as 8-bit RGB: the one conversion every image goes through, from a file, a PIL image or an array.

    16-bit greyscale is scaled from 0..65535 and float ("F") images are taken as [0, 1], by the rules of
    `_pixels_as_uint8`; every other mode (L, LA, P, RGBA, CMYK, YCbCr, ...) is converted by PIL, alpha dropped.
    """
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name} is an empty image (size {image.size})")
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        image = _array_to_image(np.asarray(image), name, sixteen_bit=image.mode != "F")
    try:
        return image.convert("RGB")
    except Exception as err:
        raise ValueError(f"{name}: cannot convert a mode {image.mode!r} image to RGB ({err})") from err


def _array_to_image(array: np.ndarray, name: str, sixteen_bit: bool = False, channels_first: bool = False) -> Any:
    """An image array as a PIL image of its channel count: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.

    The layout is (H, W), (H, W, C) or (C, H, W), C in 1..4; an array that reads both ways is taken channels-last
    (numpy's and PIL's layout) unless `channels_first` (torch's layout, for tensors).
    """
    from PIL import Image

    layouts = ("first", "last") if channels_first else ("last", "first")
    if array.ndim == 2:
        array = array[:, :, None]
    else:
        fits = {"last": array.shape[-1] in (1, 2, 3, 4), "first": array.shape[0] in (1, 2, 3, 4)}
        layout = next((side for side in layouts if fits[side]), None)
        if layout is None:
            raise ValueError(
                f"{name} must have 1 to 4 channels (grey, grey + alpha, RGB, RGBA) in an (H, W, C) or (C, H, W) "
                f"array, got shape {array.shape}"
            )
        if layout == "first":
            array = np.moveaxis(array, 0, -1)
    pixels = np.ascontiguousarray(_pixels_as_uint8(array, name, sixteen_bit))
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]]
    return Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode=mode)


def _pixels_as_uint8(values: np.ndarray, name: str, sixteen_bit: bool = False) -> np.ndarray:
    """Pixel values as uint8 0..255, by one rule: uint8 arrays are 0..255, bool arrays 0/255, uint16 arrays (and
    16-bit images) 0..65535, other integer arrays must hold 0..255, and float arrays are taken as [0, 1]."""
    dtype = values.dtype
    if dtype == np.uint8:
        return values
    if dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(dtype, np.integer):
        low, high = int(values.min()), int(values.max())
        if sixteen_bit or (dtype.kind == "u" and dtype.itemsize == 2):
            if low < 0 or high > 65535:
                raise ValueError(f"{name}: 16-bit image values must lie in 0..65535, got values in [{low}, {high}]")
            return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 / 257 = 255
        if low < 0 or high > 255:
            raise ValueError(
                f"{name}: integer image arrays must hold 0..255 (or be uint16 for 0..65535), got values in "
                f"[{low}, {high}] with dtype {dtype}"
            )
        return values.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{name} contains NaN or infinite pixel values")
        low, high = float(values.min()), float(values.max())
        if low < -_UNIT_RANGE_TOLERANCE or high > 1 + _UNIT_RANGE_TOLERANCE:
            raise ValueError(
                f"{name}: float image arrays are taken as [0, 1], got values in [{low:.4g}, {high:.4g}]; pass 0..255 "
                "pixels as uint8 (array.astype(np.uint8)) or divide them by 255"
            )
        # Converted once here, so the image processor's rescale (1/255 of uint8) is the only one applied.
        return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    raise TypeError(f"{name} must be a real-valued (integer, float or bool) image array, got dtype {dtype}")


# ----------------------------------------------------------------------------------------------------------------
# `datasets` media columns: kept undecoded for the collator, which decodes them itself
# ----------------------------------------------------------------------------------------------------------------

# The `datasets` media features DMIL decodes itself from each stored file: `Audio` and `Video` because `datasets`
# would need torchcodec (and FFmpeg), `Image` so that a corrupt or truncated file is reported with its column, row and
# path, not as PIL's "cannot identify image file <_io.BytesIO ...>" from inside `datasets`.
_UNDECODED_FEATURES = ("Audio", "Image", "Video")


def prepare_media_columns(dataset: Any) -> Any:
    """`dataset` with its `Audio()`, `Image()` and `Video()` columns cast to `decode=False`, so that a DMIL collator
    receives each file's `{"bytes": ..., "path": ...}` and decodes it (audio with soundfile, images with PIL, video
    with PyAV), naming the column, the row and the file in any error.

    `datasets` decodes audio and video with torchcodec, which needs a system FFmpeg: without it, reading a row raises
    `ImportError` (in the Trainer's data loader, once training has started). DMIL's readers give the same waveform
    and frames whether or not torchcodec is installed. An image `datasets` decodes itself fails, when its file is
    corrupt or truncated, with PIL's "cannot identify image file <_io.BytesIO ...>", which names neither the column
    nor the row; DMIL's reader gives the same pixels. Other columns are left as they are. Takes a `Dataset`,
    `IterableDataset`, `DatasetDict` or `IterableDatasetDict` and
    returns one of the same kind; anything else (a torch dataset, a list) is returned unchanged. [`DMILTrainer`]
    applies it to every dataset it loads batches from with a [`DMILDataCollator`], and `training/run.py` to the data
    it loads: call it yourself before a plain `transformers.Trainer`.

    A top-level column is cast in place (no data is rewritten); a media feature nested in a list or struct column
    goes through `Dataset.cast`, which writes the dataset anew.

    Example:

    ```python
    >>> from datasets import Audio, Dataset
    >>> from dmil_hf import prepare_media_columns
    >>> data = Dataset.from_dict({"audio": ["clip.wav"], "label": [0]}).cast_column("audio", Audio())
    >>> prepare_media_columns(data).features["audio"]
    Audio(sampling_rate=None, decode=False, num_channels=None, stream_index=None)
    ```
    """
    if isinstance(dataset, dict):  # DatasetDict, IterableDatasetDict
        return type(dataset)({split: prepare_media_columns(part) for split, part in dataset.items()})
    features = getattr(dataset, "features", None)
    if features is None or not hasattr(dataset, "cast_column"):  # not a `datasets` dataset, or features unknown
        return dataset
    for column, feature in features.items():
        undecoded = _undecoded(feature)
        if undecoded is not feature:
            dataset = dataset.cast_column(column, undecoded)
    return dataset


def _undecoded(feature: Any) -> Any:
    """`feature` with each decoding Audio/Video feature in it (nested in lists and structs too) set to decode=False;
    `feature` itself when it holds none."""
    import dataclasses

    kind = type(feature)
    if kind.__module__.startswith("datasets.") and kind.__name__ in _UNDECODED_FEATURES and feature.decode:
        return dataclasses.replace(feature, decode=False)
    if isinstance(feature, dict):
        inner = {key: _undecoded(value) for key, value in feature.items()}
        return type(feature)(inner) if any(inner[k] is not feature[k] for k in feature) else feature
    if isinstance(feature, (list, tuple)) and len(feature) == 1:  # the old list notation, [Value("float32")]
        inner = _undecoded(feature[0])
        return type(feature)([inner]) if inner is not feature[0] else feature
    if dataclasses.is_dataclass(feature) and hasattr(feature, "feature"):  # List, LargeList (and Sequence)
        inner = _undecoded(feature.feature)
        return dataclasses.replace(feature, feature=inner) if inner is not feature.feature else feature
    return feature


# ----------------------------------------------------------------------------------------------------------------
# Per-modality input normalisation: every item of a batch becomes what the sub-processor takes, or None if missing
# ----------------------------------------------------------------------------------------------------------------


def _is_clip_with_rate(value: Any) -> bool:
    """Whether `value` is one `(waveform, sampling_rate)` pair rather than a batch of two clips."""
    return (
        isinstance(value, tuple) and len(value) == 2
        and isinstance(value[1], (int, np.integer)) and not isinstance(value[1], bool)
    )


def _as_batch(value: Any, kind: str) -> list:
    """A modality argument as a list of items; a single item becomes a batch of one."""
    if kind == "text":
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise TypeError(f"text must be a str or a list of str (None for a missing text), got {type(value).__name__}")
    if kind == "image":
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 4:
            return list(value)  # a stacked batch of images
        return [value]
    if kind == "video":
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return list(value) if value.ndim == 5 else [value]  # a stacked batch of clips, or one clip
        if isinstance(value, (list, tuple)) and value and (
            _is_pil_image(value[0]) or (isinstance(value[0], (np.ndarray, torch.Tensor)) and value[0].ndim in (2, 3))
        ):
            return [list(value)]  # the frames of one clip
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if kind == "features":
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return list(value) if value.ndim == 3 else [value]  # a stacked batch of sequences, or one sequence
        return list(value) if isinstance(value, (list, tuple)) else [value]
    # audio: a tuple (waveform, sampling_rate) is one clip, any other list or tuple is a batch
    if _is_clip_with_rate(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _read_video_file(source: str | os.PathLike | bytes, name: str, stored_path: str | None = None) -> list[Any]:
    """Every frame of a video file (a path, or its bytes: a `datasets.Video` column stores them) as an RGB PIL image,
    decoded with PyAV (`pip install av`, whose wheels bundle FFmpeg)."""
    try:
        import av
    except ImportError as err:
        raise ImportError(f"{name}: reading video files needs the `av` package (pip install av)") from err
    label = _media_label(source, stored_path)
    try:
        with av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)) as container:
            frames = [frame.to_image() for frame in container.decode(video=0)]
    except Exception as err:
        raise ValueError(f"{name}: cannot read video file {label} ({type(err).__name__}: {err})") from err
    if not frames:
        raise ValueError(f"{name}: video file {label} has no frames")
    return frames


def _file_and_name(item: dict, name: str) -> tuple[str | bytes, str, str | None]:
    """The arguments `(file, name, stored_path)` of a file reader for a `datasets` media value stored undecoded,
    `{"bytes": ..., "path": ...}` (`Image`, `Audio` and `Video` with decode=False, which `prepare_media_columns`
    casts to); `stored_path` names the bytes in errors.

    The bytes come first: `save_to_disk` and `push_to_hub` embed each file's bytes and keep only its base name as
    the path, which no longer points at a file. A value without bytes is read from its path."""
    data, path = item.get("bytes"), item.get("path")
    if data is not None:
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{name}['bytes'] must be the file's bytes, got {type(data).__name__}")
        return bytes(data), name, path
    if path is not None:
        return path, name, None
    raise ValueError(
        f"{name} is a dict without 'bytes' or 'path' (keys: {sorted(item)}); a `datasets` media value stored "
        "undecoded holds its file's bytes or path"
    )


def _check_video(item: Any, name: str) -> list[Any] | None:
    """A clip as a list of RGB PIL frames, or None when missing: a list of frames (anything `_check_image` takes),
    an array (T, H, W, C) or tensor (T, C, H, W), a video file's path or bytes, a `datasets.Video(decode=False)`
    value or a torchcodec VideoDecoder."""
    if item is None:
        return None
    if isinstance(item, (str, os.PathLike, bytes, bytearray)):
        return _read_video_file(item, name)
    if isinstance(item, dict):  # a `datasets.Video(decode=False)` value
        return _read_video_file(*_file_and_name(item, name))
    if callable(getattr(item, "get_frames_in_range", None)):
        # A torchcodec VideoDecoder (what a decoding `datasets.Video` column gives where torchcodec is installed):
        # its frames, a (frames, C, H, W) tensor (or (frames, H, W, C), by its dimension_order).
        item = item[:]
    if isinstance(item, (np.ndarray, torch.Tensor)):
        if item.ndim != 4:
            raise ValueError(
                f"{name} must be a clip of shape (frames, H, W, C) (a tensor: (frames, C, H, W)), got shape "
                f"{tuple(item.shape)}"
            )
        item = list(item)
    if not isinstance(item, (list, tuple)):
        raise TypeError(
            f"{name} must be a list of frames, an array (frames, H, W, C), a video file path or its bytes (None for a "
            f"missing clip), got {type(item).__name__}"
        )
    if not item:
        raise ValueError(f"{name} is a clip without frames")
    return [_check_image(frame, f"{name}[{t}]") for t, frame in enumerate(item)]


def _check_features(item: Any, name: str) -> np.ndarray | None:
    """Pre-extracted features as a float32 (steps, dim) array (a (dim,) vector is one step), or None when missing."""
    if item is None:
        return None
    if isinstance(item, torch.Tensor):
        item = _tensor_to_numpy(item)
    if isinstance(item, (list, tuple)):
        _check_steps_have_one_size(item, name)
        try:
            item = np.asarray(item)
        except ValueError as err:  # nested deeper than (steps, dim) and ragged there
            raise ValueError(f"{name} must be a (steps, dim) array of numbers, got a ragged nested list ({err})") from err
    if not isinstance(item, np.ndarray) or not (np.issubdtype(item.dtype, np.number) and item.dtype.kind != "c"):
        raise TypeError(f"{name} must be a real numeric array of shape (steps, dim) or (dim,), got {type(item).__name__}")
    if item.ndim == 1:
        item = item[None]
    if item.ndim != 2 or item.size == 0:
        raise ValueError(f"{name} must have shape (steps, dim) or (dim,) with values, got shape {item.shape}")
    item = item.astype(np.float32)
    if not np.isfinite(item).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return item


def _check_steps_have_one_size(steps: list | tuple, name: str) -> None:
    """A features list of steps (`[[...], [...]]`) whose steps differ in length, which numpy cannot make an array of."""
    sizes = [len(step) if isinstance(step, (list, tuple)) or np.ndim(step) >= 1 else None for step in steps]
    if len(set(sizes)) > 1:
        first = sizes[0]
        t = next(t for t, size in enumerate(sizes) if size != first)
        first_size, other = ("a single number" if n is None else f"{n} values" for n in (first, sizes[t]))
        raise ValueError(
            f"{name}: the steps have different sizes (step 0 has {first_size}, step {t} has {other}); "
            "every step of a feature sequence (steps, dim) needs the same dim"
        )


def _sample_frames(frames: list[Any], num_frames: int | None) -> list[Any]:
    """`num_frames` frames spread uniformly over the clip (every frame when None or when the clip is shorter)."""
    if num_frames is None or len(frames) <= num_frames:
        return frames
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, num_frames).round()]


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16 (nor the float8 types): those are widened to float32 first.
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def _check_text(item: Any, name: str) -> str | None:
    """The text, or None when missing: None, "" and whitespace-only strings carry no text, so they are a missing
    modality (placeholder and a False modality_mask) rather than an empty sequence the model would have to read."""
    if item is None or isinstance(item, str):
        return item if item and item.strip() else None
    raise TypeError(f"{name} must be a str (or None for a missing text), got {type(item).__name__}")


def _check_image(item: Any, name: str) -> Any:
    """The image as an 8-bit RGB PIL image (see `_to_rgb`), or None when missing."""
    if item is None:
        return None
    if _is_pil_image(item):
        return _to_rgb(item, name)
    if isinstance(item, (str, os.PathLike, bytes, bytearray)):
        return _open_image(item, name)
    if isinstance(item, dict):  # a `datasets.Image(decode=False)` value
        return _open_image(*_file_and_name(item, name))
    channels_first = isinstance(item, torch.Tensor)
    if channels_first:
        item = _tensor_to_numpy(item)
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3) or item.size == 0:
            raise ValueError(f"{name} must be an image array of shape (H, W), (H, W, C) or (C, H, W), got {item.shape}")
        if not (np.issubdtype(item.dtype, np.number) or item.dtype == np.bool_):
            raise TypeError(f"{name} must be a numeric image array, got dtype {item.dtype}")
        return _to_rgb(_array_to_image(item, name, channels_first=channels_first), name)
    raise TypeError(
        f"{name} must be a PIL image, a numpy array, a torch tensor or an image file path (None for a missing image), "
        f"got {type(item).__name__}"
    )


def _check_audio(
    item: Any, name: str, sampling_rate: int | None, target_rate: int | None, rate_name: str | None = None
) -> np.ndarray | None:
    """A clip as a float32 mono waveform at `target_rate` (at its own rate when `target_rate` is None), or None when
    missing. `rate_name` names where the clip's rate was read (an example's field) in the error on a bad one."""
    if item is None:
        return None
    # A bare waveform is at the call's `sampling_rate`; a clip with its own rate (tuple, dict, file) at that one.
    rate, own_rate, unpacked = sampling_rate, False, False
    if isinstance(item, (str, os.PathLike, bytes, bytearray)):
        item, rate = _read_audio_file(item, name)
    elif isinstance(item, tuple):
        if not _is_clip_with_rate(item):
            raise TypeError(f"{name}: a tuple must be (waveform, sampling_rate) with an int rate, got {item!r:.80}")
        item, rate, own_rate, unpacked = item[0], item[1], True, True
    elif callable(getattr(item, "get_all_samples", None)):
        # A torchcodec AudioDecoder (what a decoding `datasets.Audio` column gives where torchcodec is installed):
        # its samples, (channels, samples), down-mixed like a file's.
        samples = item.get_all_samples()
        item, rate, own_rate = _tensor_to_numpy(samples.data).mean(axis=0), samples.sample_rate, True
    elif isinstance(item, dict):
        if "array" in item:  # a decoded clip, {"array": ..., "sampling_rate": ...}
            own_rate = item.get("sampling_rate") is not None
            item, rate, unpacked = item["array"], item.get("sampling_rate", sampling_rate), True
        elif item.get("bytes") is not None or item.get("path") is not None:  # a `datasets.Audio(decode=False)` value
            item, rate = _read_audio_file(*_file_and_name(item, name))
        else:
            raise ValueError(f"{name} is a dict without 'array', 'bytes' or 'path' (keys: {sorted(item)})")
    if isinstance(item, torch.Tensor):
        item = _tensor_to_numpy(item)
    elif unpacked and isinstance(item, list) and all(isinstance(x, (int, float, np.number)) for x in item):
        # A waveform stored as a list, unpacked from a tuple or a dict: ints stay ints (PCM, scaled below).
        item = np.asarray(item)
    if not isinstance(item, np.ndarray):
        raise TypeError(
            f"{name} must be a 1-D numpy waveform, a (waveform, sampling_rate) tuple, an audio file path or its "
            f"bytes (None for a missing clip), got {type(item).__name__}"
        )
    if item.ndim != 1:
        raise ValueError(f"{name} must be a 1-D (mono) waveform, got shape {item.shape}; average the channels first")
    if item.size == 0:
        raise ValueError(f"{name} is an empty waveform")
    item = pcm_to_float(item, name)
    if not np.isfinite(item).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    if rate is None:
        return item
    rate = sampling_rate_of(rate, rate_name or (f"{name}: its sampling rate" if own_rate else "sampling_rate"))
    return resample_audio(item, rate, target_rate) if target_rate is not None and rate != target_rate else item
