"""Media reach the model by one set of rules, and a broken one is reported by row, column and file:

- integer PCM is scaled by one rule (`media_dmil.pcm_to_float`), so an int16 waveform stored in a `datasets` column
  gives the collator the features the processor gives for the same samples;
- a `sampling_rate` field that is not a positive integer ('8k', 8000.5) is refused naming the field and the row,
  never read as 8000 or as int()'s "invalid literal";
- a corrupt or truncated image in a `datasets` `Image()` column, a missing PNG or a corrupt wav is reported with the
  column, the row (its dataset index, `with_row_numbers`) and the file, not as "cannot identify image file
  <_io.BytesIO ...>" or "audio[7]" (a position in the batch).
"""

import io

import numpy as np
import pytest
import soundfile as sf
from datasets import Dataset, Image, load_from_disk
from PIL import Image as PILImage
from transformers import ViTImageProcessorPil, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

from dmil_hf import DMILProcessor, prepare_media_columns
from dmil_hf.models.dmil.media_dmil import pcm_to_float, sampling_rate_of
from dmil_hf.training.data_collator import ROW_KEY, DMILDataCollator, with_row_numbers

RATE = 16000


def pcm_clip(seed=0, length=RATE):
    rng = np.random.default_rng(seed)
    return np.round(rng.standard_normal(length) * 3000).astype(np.int16)


# ------------------------------------------------------------------------------------------------ integer PCM


def test_int16_pcm_from_a_dataset_column_gives_the_processors_features():
    processor = DMILProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80))
    clips = [pcm_clip(0), pcm_clip(1, RATE // 2)]
    data = Dataset.from_dict({"audio": clips, "label": [0, 1]})  # a List(Value('int16')) column: rows of ints
    assert isinstance(data[0]["audio"][0], int)
    batch = DMILDataCollator(processor)([data[0], data[1]])
    expected = processor(audio=clips)
    assert float((batch["input_features"] - expected["input_features"]).abs().max()) == 0.0


def test_the_pcm_rule_is_libsndfiles():
    """An int16 array and the same samples read back from a 16-bit WAV give the same floats."""
    clip = pcm_clip()
    buffer = io.BytesIO()
    sf.write(buffer, clip, RATE, subtype="PCM_16", format="WAV")
    decoded, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")
    np.testing.assert_array_equal(pcm_to_float(clip, "audio"), decoded)
    np.testing.assert_array_equal(pcm_to_float(clip.astype(np.int64), "audio"), decoded)  # a list of ints
    assert pcm_to_float(np.array([2**31 - 1], np.int32), "a")[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"audio: integer samples .* beyond int16; give 32-bit PCM as an int32"):
        pcm_to_float(np.array([0, 40000]), "audio")


def test_a_processor_dict_of_int_lists_is_scaled_too():
    processor = DMILProcessor(feature_extractor=Wav2Vec2FeatureExtractor(do_normalize=False))
    clip = pcm_clip()
    from_list = processor(audio=[{"array": clip.tolist(), "sampling_rate": RATE}])["input_values"]
    from_array = processor(audio=[clip])["input_values"]
    assert float((from_list - from_array).abs().max()) == 0.0 and float(from_array.abs().max()) < 1


# ------------------------------------------------------------------------------------------------ sampling rates


@pytest.mark.parametrize("rate", ["8k", "8000", 8000.5, 0, -8000, True, [16000]])
def test_a_bad_sampling_rate_field_is_refused_naming_the_field_and_the_row(rate):
    collator = DMILDataCollator(DMILProcessor(feature_extractor=Wav2Vec2FeatureExtractor()))
    examples = [{"audio": [0.0] * 800, "sampling_rate": 8000, "label": 0, ROW_KEY: 3},
                {"audio": [0.0] * 800, "sampling_rate": rate, "label": 1, ROW_KEY: 7}]
    with pytest.raises(ValueError, match=r"row 7, column 'sampling_rate' .*must be a sampling rate in Hz, a positive "
                                         r"integer"):
        collator(examples)


def test_a_whole_float_rate_is_taken_and_resampled_as_its_integer():
    collator = DMILDataCollator(DMILProcessor(feature_extractor=Wav2Vec2FeatureExtractor(do_normalize=False)))
    wave = np.sin(np.arange(800) / 5).astype(np.float32).tolist()
    as_float = collator([{"audio": wave, "sampling_rate": 8000.0, "label": 0}])["input_values"]
    as_int = collator([{"audio": wave, "sampling_rate": 8000, "label": 0}])["input_values"]
    assert as_float.shape == (1, 1600) and float((as_float - as_int).abs().max()) == 0.0
    assert sampling_rate_of(np.float32(22050.0), "rate") == 22050
    with pytest.raises(ValueError, match=r"rate must be a sampling rate in Hz.*got '16000' \(str\)"):
        sampling_rate_of("16000", "rate")


# ------------------------------------------------------------------------------------------------ broken files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(4):
        PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        sf.write(folder / f"{i}.wav", (rng.standard_normal(1600) * 0.1).astype(np.float32), RATE)
    good = (folder / "0.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 3])
    (folder / "junk.png").write_bytes(b"this is no image")
    (folder / "junk.wav").write_bytes(b"RIFF....WAVEnothing")
    paths["folder"] = folder
    return paths


def image_collator():
    return DMILDataCollator(DMILProcessor(image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16})))


@pytest.mark.parametrize("broken", ["junk.png", "cut.png"])
def test_a_corrupt_image_in_a_datasets_image_column_names_column_row_and_file(broken, files, tmp_path):
    folder = files["folder"]
    paths = [str(folder / f"{i}.png") for i in range(3)] + [str(folder / broken)]
    data = Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}).cast_column("image", Image())
    data.save_to_disk(tmp_path / "ds")  # the bytes embedded, the base name kept
    data = with_row_numbers(prepare_media_columns(load_from_disk(tmp_path / "ds")))
    collator = image_collator()
    collator([data[0], data[1]])  # the intact rows load
    with pytest.raises(ValueError, match=rf"row 3, column 'image': cannot read image file bytes of '{broken}'"):
        collator([data[2], data[3]])


def test_a_missing_png_and_a_corrupt_wav_name_the_row_not_the_batch_position(files):
    folder = files["folder"]
    rows = Dataset.from_dict({
        "image_path": [str(folder / f"{i}.png") for i in range(4)] + [str(folder / "gone.png")],
        "wav_path": [str(folder / f"{i}.wav") for i in range(3)] + [str(folder / "junk.wav"), str(folder / "0.wav")],
        "label": [0, 1, 0, 1, 0],
    })
    rows = with_row_numbers(rows)
    processor = DMILProcessor(image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}),
                              feature_extractor=Wav2Vec2FeatureExtractor())
    collator = DMILDataCollator(processor, columns={"vision": "image_path", "audio": "wav_path"})
    with pytest.raises(ValueError, match=r"row 4, column 'image_path': cannot read image file '.*gone.png'"):
        collator([rows[0], rows[4]])
    with pytest.raises(ValueError, match=r"row 3, column 'wav_path': cannot read audio file '.*junk.wav'"):
        collator([rows[2], rows[1], rows[3]])
    # Without row numbers, the position in the batch, said as such.
    plain = {key: value for key, value in rows[3].items() if key != ROW_KEY}
    with pytest.raises(ValueError, match=r"examples\[1\]\['wav_path'\]: cannot read audio file"):
        collator([rows[0], plain])


def test_row_numbers_survive_shuffling_and_streaming():
    data = Dataset.from_dict({"text": list("abcdef")})
    numbered = with_row_numbers(data)
    assert [row[ROW_KEY] for row in numbered.shuffle(seed=0)] == [ord(row["text"]) - ord("a") for row in
                                                                  numbered.shuffle(seed=0)]
    assert with_row_numbers(numbered) is numbered
    streamed = with_row_numbers(data.to_iterable_dataset())
    assert [row[ROW_KEY] for row in streamed] == list(range(6))
    examples = [{"text": "a"}]
    assert with_row_numbers(examples) is examples
