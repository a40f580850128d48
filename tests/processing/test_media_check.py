"""Media validated before training (`dmil_hf.training.media_check`): every file opened and its header read, every
problem reported at once by data file, row, column and file (the first 20, then a count); a full decode behind a
flag; a streamed dataset checked row by row as it streams."""

import re

import numpy as np
import pytest
import soundfile as sf
from datasets import Dataset, Image
from PIL import Image as PILImage

from dmil_hf.training.media_check import MAX_LISTED, MediaCheckError, check_as_streamed, check_example, validate_media

RATE = 16000
COLUMNS = {"vision": "image_path", "audio": "wav_path", "text": "text"}
KINDS = {"vision": "image", "audio": "audio", "text": "text"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for i in range(3):
        PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        PILImage.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
        sf.write(folder / f"{i}.wav", (rng.standard_normal(1600) * 0.1).astype(np.float32), RATE)
    png, wav = (folder / "0.png").read_bytes(), (folder / "0.wav").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "junk.png").write_bytes(b"not an image at all")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.wav").write_bytes(wav[: len(wav) // 2])
    (folder / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    (folder / "junk.mov").write_bytes(b"not a video at all")
    jpg = (folder / "0.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])  # its header intact: only a decode finds it
    (folder / "sub").mkdir()
    return folder


def rows(folder, images, wavs):
    return Dataset.from_dict({"image_path": [None if n is None else str(folder / n) for n in images],
                              "wav_path": [None if n is None else str(folder / n) for n in wavs],
                              "text": ["a"] * len(images), "label": list(range(len(images)))})


def test_intact_media_pass(folder):
    data = rows(folder, ["0.png", "1.png", None, "0.jpg"], ["0.wav", None, "1.wav", "2.wav"])
    assert validate_media(data, COLUMNS, KINDS) is None
    assert validate_media(data, COLUMNS, KINDS, full_decode=True) is None


def test_every_problem_is_reported_at_once_by_data_file_row_column_and_file(folder):
    data = rows(folder, ["0.png", "gone.png", "junk.png", "cut.png", "empty.png", "sub", "1.png"],
                ["0.wav", "1.wav", "junk.wav", "0.wav", "cut.wav", "2.wav", "gone.wav"])
    with pytest.raises(MediaCheckError) as raised:
        validate_media(data, COLUMNS, KINDS, data_file="data/train.csv")
    message = str(raised.value)
    assert message.startswith("media check of data/train.csv: 8 problems in 6 of 7 rows")
    expected = [
        (1, "image_path", "gone.png': no such file"),
        (2, "image_path", r"junk.png': cannot read its header \(UnidentifiedImageError"),
        (2, "wav_path", "junk.wav': cannot read its header"),
        (3, "image_path", "cut.png': cannot read its header"),
        (4, "image_path", r"empty.png': empty \(0 bytes\)"),
        (4, "wav_path", r"cut.wav': truncated: \d+ of the 1600 samples its header declares"),
        (5, "image_path", "sub': a folder, not a file"),
        (6, "wav_path", "gone.wav': no such file"),
    ]
    problems = raised.value.problems
    assert [(p.row, p.column) for p in problems] == [(row, column) for row, column, _ in expected]
    for (row, column, says), problem in zip(expected, problems):
        assert re.search(says, problem.problem), problem
        assert f"  row {row}, column {column!r}: '{folder}" in message


def test_a_long_list_is_cut_after_the_first_twenty(folder):
    data = rows(folder, [f"gone{i}.png" for i in range(MAX_LISTED + 7)], [None] * (MAX_LISTED + 7))
    with pytest.raises(MediaCheckError, match=r"27 problems in 27 of 27 rows") as raised:
        validate_media(data, COLUMNS, KINDS)
    lines = str(raised.value).splitlines()
    assert len(lines) == 1 + MAX_LISTED + 1 and lines[-1] == "  ... and 7 more"
    assert len(raised.value.problems) == MAX_LISTED + 7


def test_a_datasets_image_column_is_read_undecoded_and_names_the_stored_file(folder, tmp_path):
    data = Dataset.from_dict({"image": [str(folder / "0.png"), str(folder / "junk.png")]}).cast_column("image", Image())
    data.save_to_disk(tmp_path / "ds")
    from datasets import load_from_disk

    saved = load_from_disk(tmp_path / "ds")
    with pytest.raises(MediaCheckError, match=r"row 1, column 'image': bytes of 'junk.png': cannot read its header"):
        validate_media(saved, {"vision": "image"}, {"vision": "image"})
    assert saved.features["image"].decode  # the user's dataset is left as it was


def test_a_full_decode_finds_what_the_header_does_not(folder):
    data = rows(folder, ["0.jpg", "cut.jpg"], [None, None])
    assert validate_media(data, COLUMNS, KINDS) is None  # the JPEG's header is intact
    with pytest.raises(MediaCheckError, match=r"row 1, column 'image_path': cannot read image file '.*cut.jpg' "
                                              r"\(OSError: image file is truncated"):
        validate_media(data, COLUMNS, KINDS, full_decode=True)


def test_a_waveforms_sampling_rate_field_is_checked(folder):
    data = Dataset.from_dict({"wav": [[0.0] * 800, [0.0] * 800, [0.0] * 800], "sampling_rate": ["8000", "8k", "8000"]})
    with pytest.raises(MediaCheckError) as raised:
        validate_media(data, {"audio": "wav"}, {"audio": "audio"})
    assert [p.row for p in raised.value.problems] == [0, 1, 2]
    assert "row 1, column 'wav': row 1, column 'sampling_rate' must be a sampling rate in Hz" in str(raised.value)
    good = Dataset.from_dict({"wav": [[0.0] * 800], "sampling_rate": [8000.0]})
    assert validate_media(good, {"audio": "wav"}, {"audio": "audio"}, full_decode=True) is None


def test_a_video_column_of_frame_files_and_a_junk_video(folder):
    clips = [[str(folder / "0.png"), str(folder / "1.png")], [str(folder / "0.png"), str(folder / "gone.png")]]
    data = Dataset.from_dict({"frames": clips})
    with pytest.raises(MediaCheckError, match=r"row 1, column 'frames': '.*gone.png': no such file"):
        validate_media(data, {"rgb": "frames"}, {"rgb": "video"})
    junk = Dataset.from_dict({"clip": [str(folder / "junk.mov")]})
    pytest.importorskip("av")
    with pytest.raises(MediaCheckError, match=r"row 0, column 'clip': '.*junk.mov': cannot read its header"):
        validate_media(junk, {"rgb": "clip"}, {"rgb": "video"})


def test_a_missing_column_is_an_error_naming_it(folder):
    with pytest.raises(ValueError, match=r"train.csv has no column 'photo'"):
        validate_media(rows(folder, ["0.png"], ["0.wav"]), {"vision": "photo"}, {"vision": "image"},
                       data_file="train.csv")


def test_a_streamed_dataset_is_checked_as_it_streams_naming_the_row(folder):
    data = rows(folder, ["0.png", "1.png", "gone.png", "2.png"], ["0.wav"] * 4)
    streamed = check_as_streamed(data.to_iterable_dataset(), COLUMNS, KINDS, data_file="train.jsonl")
    seen = []
    with pytest.raises(MediaCheckError, match=r"media check of train.jsonl: 1 problem in row 2 of the stream.*\n"
                                              r"  row 2, column 'image_path': '.*gone.png': no such file"):
        for example in streamed:
            seen.append(example["label"])
    assert seen == [0, 1]
    assert check_example({"image_path": str(folder / "0.png")}, 9, COLUMNS, KINDS) == []
