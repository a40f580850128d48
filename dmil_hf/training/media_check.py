"""Media checked before training: every media file a dataset's columns name (a path, or the bytes a `datasets`
column stores) opened and its header read, and every problem reported at once, by data file, row, column and file,
instead of one at a time when its batch comes up (minutes or hours into training, or never).

The default check reads headers only (PIL's `Image.open` and `verify`, soundfile's `info`, PyAV's `open`), which
finds missing, empty, truncated-at-the-header and mislabelled files in well under a tenth of an epoch's time;
`full_decode=True` decodes every value as the collator will (pixels, samples, frames), which finds damage deeper in
a file too. A streamed dataset cannot be read twice: `check_as_streamed` checks each row as it streams, naming it.

Rows are counted from 0, as `dataset[row]` indexes them: in a CSV or JSON lines file, the row-th record after the
header.

Example:

```python
>>> from datasets import Dataset
>>> from dmil_hf.training.media_check import validate_media
>>> data = Dataset.from_dict({"image_path": ["missing.png"], "label": [0]})
>>> validate_media(data, columns={"vision": "image_path"}, kinds={"vision": "image"}, data_file="train.csv")
Traceback (most recent call last):
...
dmil_hf.training.media_check.MediaCheckError: media check of train.csv: 1 problem in 1 of 1 rows (rows counted from 0, as dataset[row]; in a data file, the row-th record after the header):
  row 0, column 'image_path': 'missing.png': no such file
```
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..models.dmil.media_dmil import (
    _check_audio,
    _check_image,
    _check_video,
    _media_label,
    _wav_header_frames,
    prepare_media_columns,
    sampling_rate_of,
)

logger = logging.getLogger(__name__)

# Problems listed in the error; the rest are counted.
MAX_LISTED = 20
# The media kinds whose values may be files; text and features columns hold no files.
MEDIA_KINDS = ("image", "audio", "video")


@dataclass(frozen=True)
class MediaProblem:
    """One value that cannot be read: its row (dataset index), column and what is wrong (naming the file)."""

    row: int
    column: str
    problem: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column!r}: {self.problem}"


class MediaCheckError(ValueError):
    """Media that cannot be read, found before training; `problems` lists every one."""

    def __init__(self, message: str, problems: list[MediaProblem]):
        super().__init__(message)
        self.problems = problems


def check_example(
    example: dict[str, Any],
    row: int,
    columns: dict[str, str],
    kinds: dict[str, str],
    full_decode: bool = False,
    sampling_rate_column: str = "sampling_rate",
) -> list[MediaProblem]:
    """The problems of one example's media (an empty list when there are none), as `validate_media` finds them:
    `columns` maps each modality to its example field, `kinds` each modality to its kind (`"image"`, `"audio"`,
    `"video"`; other kinds hold no files and are skipped). `row` names the example in the problems.

    Header mode opens each file (a path, bytes, or a `datasets` `{"bytes", "path"}` value) and reads its header, and
    checks a waveform's `sampling_rate_column`; `full_decode` decodes every value as the collator does.
    """
    problems = []
    for modality, column in columns.items():
        kind = kinds.get(modality)
        value = example.get(column)
        if kind not in MEDIA_KINDS or value is None:
            continue  # not a media column, or a missing modality
        name = f"row {row}, column {column!r}"
        try:
            if full_decode:
                _decode(kind, value, name, example.get(sampling_rate_column), sampling_rate_column, row)
            else:
                problems += [MediaProblem(row, column, text) for text in _header_problems(kind, value)]
                if kind == "audio" and _is_waveform(value) and example.get(sampling_rate_column) is not None:
                    sampling_rate_of(example[sampling_rate_column], f"row {row}, column {sampling_rate_column!r}")
        except ImportError:
            raise  # a reader missing from the environment (PyAV for video): once, not once per row
        except (ValueError, TypeError, OSError) as err:
            text = str(err)
            # The decoders' errors start with the name given to them: the problem is what follows.
            for prefix in (f"{name}: ", f"{name} "):
                text = text[len(prefix):] if text.startswith(prefix) else text
            problems.append(MediaProblem(row, column, text))
    return problems


def validate_media(
    dataset: Any,
    columns: dict[str, str],
    kinds: dict[str, str],
    full_decode: bool = False,
    data_file: str | None = None,
    sampling_rate_column: str = "sampling_rate",
    batch_size: int = 256,
) -> None:
    """Open every media file of `dataset` and read its header (or, with `full_decode`, decode every media value), and
    raise one `MediaCheckError` listing every problem (the first `MAX_LISTED`, then a count) by data file, row,
    column and file. Returns None when every value can be read.

    `dataset` is a `datasets.Dataset` (its `Image()`, `Audio()` and `Video()` columns are read undecoded, as the
    collator reads them) or a list of example dicts; `columns` maps each modality to its column (the collator's
    `column_of`), `kinds` each modality to its kind. `data_file` names the file the rows came from in the error.
    A streamed dataset (`IterableDataset`) is checked as it streams: use `check_as_streamed`.
    """
    if type(dataset).__name__.startswith("IterableDataset"):
        raise TypeError("validate_media reads the whole dataset: check a streamed one with check_as_streamed")
    media = {m: c for m, c in columns.items() if kinds.get(m) in MEDIA_KINDS}
    names = getattr(dataset, "column_names", None)
    if names is not None:
        absent = sorted({c for c in media.values() if c not in names})
        if absent:
            raise ValueError(
                f"{data_file or 'the dataset'} has no column {', '.join(map(repr, absent))} (its columns: {names})"
            )
    if not media:
        return
    problems: list[MediaProblem] = []
    rows = 0
    for row, example in enumerate(_examples(dataset, [*media.values(), sampling_rate_column], batch_size)):
        problems += check_example(example, row, media, kinds, full_decode, sampling_rate_column)
        rows += 1
    if problems:
        raise MediaCheckError(_report(problems, rows, data_file), problems)


def check_as_streamed(
    dataset: Any,
    columns: dict[str, str],
    kinds: dict[str, str],
    full_decode: bool = False,
    data_file: str | None = None,
    sampling_rate_column: str = "sampling_rate",
) -> Any:
    """`dataset` (a `datasets.IterableDataset`) with each row checked as it streams (`check_example`): the first row
    with a problem raises `MediaCheckError` naming it (its position in the stream) and every problem it has. Rows
    are read once, as training reads them; nothing is read ahead."""
    media = {m: c for m, c in columns.items() if kinds.get(m) in MEDIA_KINDS}

    def check(example: dict[str, Any], row: int) -> dict[str, Any]:
        problems = check_example(example, row, media, kinds, full_decode, sampling_rate_column)
        if problems:
            raise MediaCheckError(_report(problems, None, data_file), problems)
        return example

    # Media undecoded, as validate_media and the collator read them; the features kept, so that nothing is decoded.
    prepared = prepare_media_columns(dataset)
    return prepared.map(check, with_indices=True, features=prepared.features)


# ---------------------------------------------------------------------------------------------------------- helpers


def _examples(dataset: Any, fields: list[str], batch_size: int) -> Iterable[dict[str, Any]]:
    """The rows of `dataset`, only `fields`, media undecoded, read a batch at a time."""
    if not hasattr(dataset, "iter"):
        yield from dataset  # a list of examples
        return
    dataset = prepare_media_columns(dataset)
    kept = [f for f in dict.fromkeys(fields) if f in dataset.column_names]
    for batch in dataset.select_columns(kept).iter(batch_size=batch_size):
        for i in range(len(batch[kept[0]])):
            yield {field: batch[field][i] for field in kept}


def _report(problems: list[MediaProblem], rows: int | None, data_file: str | None) -> str:
    where = f"media check of {data_file}" if data_file else "media check"
    bad_rows = len({p.row for p in problems})
    found = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    counts = f"{found} in {bad_rows} of {rows} rows" if rows is not None else f"{found} in row {problems[0].row} of the stream"
    lines = [f"{where}: {counts} (rows counted from 0, as dataset[row]; in a data file, the row-th record after the "
             "header):"]
    lines += [f"  {problem}" for problem in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _is_waveform(value: Any) -> bool:
    return isinstance(value, (list, np.ndarray)) or type(value).__name__ == "Tensor"


def _decode(kind: str, value: Any, name: str, rate: Any, rate_column: str, row: int) -> None:
    """Decode `value` as the collator does (`data_collator.DMILDataCollator`), raising its error."""
    if kind == "image":
        _check_image(np.asarray(value) if isinstance(value, list) else value, name)
    elif kind == "video":
        frames = [np.asarray(f) if isinstance(f, list) else f for f in value] if isinstance(value, list) else value
        _check_video(frames, name)
    else:
        # The example's rate applies to a bare waveform; a file, a tuple or a dict has its own (as in the collator).
        bare = _is_waveform(value)
        value = np.asarray(value) if isinstance(value, list) else value
        _check_audio(value, name, rate if bare else None, None, rate_name=f"row {row}, column {rate_column!r}")


def _sources(kind: str, value: Any) -> list[tuple[Any, str | None]]:
    """The files in one value: `(path or bytes, stored path naming the bytes)`; none for arrays and PIL images."""
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        return [(value, None)]
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return [(bytes(data), path)]
        return [(path, None)] if path is not None else []
    if kind == "video" and isinstance(value, (list, tuple)):  # a clip as a list of frame files
        return [source for frame in value for source in _sources("image", frame)]
    return []


def _header_problems(kind: str, value: Any) -> list[str]:
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path") is None and "array" not in value:
        return [f"a dict without 'bytes' or 'path' (keys: {sorted(value)})"]
    problems = []
    for source, stored in _sources(kind, value):
        label = _media_label(source, stored)
        if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
            problems.append(f"{label}: {'a folder, not a file' if os.path.isdir(source) else 'no such file'}")
            continue
        reader = {"image": _image_header, "audio": _audio_header, "video": _video_header}[kind]
        try:
            problem = reader(source)
        except ImportError:
            raise
        except Exception as err:  # the readers' own errors: the file is not what its column says it is
            problem = f"cannot read its header ({type(err).__name__}: {err})"
        if problem:
            problems.append(f"{label}: {problem}")
    return problems


def _open(source: Any) -> Any:
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)


def _image_header(source: Any) -> str | None:
    from PIL import Image

    if isinstance(source, (bytes, bytearray)) and not source:
        return "empty (0 bytes)"
    if not isinstance(source, (bytes, bytearray)) and os.path.getsize(source) == 0:
        return "empty (0 bytes)"
    with Image.open(_open(source)) as image:
        if image.width == 0 or image.height == 0:
            return f"an empty image (size {image.size})"
        image.verify()  # the structure of the file (a PNG's chunks and checksums) without decoding the pixels
    return None


def _audio_header(source: Any) -> str | None:
    try:
        import soundfile
    except ImportError as err:  # pragma: no cover - soundfile is a dependency of dmil_hf
        raise ImportError("reading audio files needs the `soundfile` package (pip install soundfile)") from err
    info = soundfile.info(_open(source))
    if info.frames == 0:
        return "holds no samples"
    declared = _wav_header_frames(source)
    if declared is not None and info.frames < declared:
        # Read as far as it goes (the collator warns and uses the decoded part): reported, as a truncated file is
        # most often a copy that stopped.
        return f"truncated: {info.frames} of the {declared} samples its header declares"
    return None


def _video_header(source: Any) -> str | None:
    try:
        import av
    except ImportError as err:
        raise ImportError("reading video files needs the `av` package (pip install av)") from err
    with av.open(_open(source)) as container:
        if not container.streams.video:
            return "has no video stream"
    return None


__all__ = ["MAX_LISTED", "MediaCheckError", "MediaProblem", "check_as_streamed", "check_example", "validate_media"]
