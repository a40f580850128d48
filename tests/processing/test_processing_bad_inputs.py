"""Inputs the processor and the pipeline used to get wrong without a word: 16-bit and float images, images in other
PIL modes or channel counts, truncated WAV files, blank text, tokenizers without a length limit, a processor with
more modalities than its model; and a property-based test that no generated input ends in anything but a
well-formed result or a ValueError/TypeError naming the input."""

import logging
import re
import struct

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import BertTokenizer, Wav2Vec2FeatureExtractor

from dmil_hf import DMILForMultimodalClassification, DMILProcessor, MultimodalClassificationPipeline
from dmil_hf.testing_utils import tiny_text_config
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.testing_utils import tiny_image_processor as image_processor
from dmil_hf.testing_utils import tiny_model_and_processor as make_model_and_processor
from dmil_hf.testing_utils import tiny_tokenizer as make_tokenizer

TVA = ("text", "vision", "audio")


@pytest.fixture(scope="module")
def vision():
    return DMILProcessor(image_processor=image_processor())


def pixels(processor, image):
    return processor(images=image)["pixel_values"]


def grey_ramp(height=16, width=16, top=255):
    """A left-to-right ramp over 0..top: every grey level of the image must survive processing."""
    return np.tile(np.linspace(0, top, width), (height, 1))


# ----------------------------------------------------------------------------------------------------------------
# 1. 16-bit images
# ----------------------------------------------------------------------------------------------------------------


def test_16_bit_png_keeps_its_grey_levels(vision, tmp_path):
    deep = np.round(grey_ramp(top=65535)).astype(np.uint16)
    png = tmp_path / "deep.png"
    Image.fromarray(deep).save(png)
    assert Image.open(png).mode in ("I;16", "I")
    # The 8-bit image with the same grey levels: 65535 / 257 = 255.
    expected = pixels(vision, np.round(deep / 257).astype(np.uint8))
    for source in (png, str(png), png.read_bytes(), Image.open(png), {"path": str(png)}):
        got = pixels(vision, source)
        assert len(torch.unique(got)) > 8, f"{type(source).__name__}: grey levels collapsed"
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # A uint16 array is taken the same way.
    torch.testing.assert_close(pixels(vision, deep), expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# 2. Float images are [0, 1]
# ----------------------------------------------------------------------------------------------------------------


def test_float_images_in_0_1_are_rescaled_once(vision):
    rng = np.random.default_rng(0)
    unit = rng.random((16, 16, 3))
    as_uint8 = pixels(vision, np.round(unit * 255).astype(np.uint8))
    for image in (unit.astype(np.float32), unit, torch.from_numpy(unit).permute(2, 0, 1).float()):
        torch.testing.assert_close(pixels(vision, image), as_uint8, atol=1e-6, rtol=0)
    half = pixels(vision, np.full((16, 16, 3), 0.5, np.float32))
    assert half.abs().max() < 0.01  # mid-grey normalises to ~0, not to -1 (black)


@pytest.mark.parametrize("values, message", [
    (np.full((8, 8, 3), 200.0, np.float32), r"images\[0\]: float image arrays are taken as \[0, 1\]"),
    (np.full((8, 8, 3), np.nan, np.float32), r"images\[0\] contains NaN"),
    (np.full((8, 8), 300, np.int64), r"images\[0\]: integer image arrays must hold 0\.\.255"),
])
def test_pixel_values_outside_the_rule_are_errors(vision, values, message):
    with pytest.raises(ValueError, match=message):
        vision(images=values)


# ----------------------------------------------------------------------------------------------------------------
# 3. Every PIL mode and channel count becomes RGB, as image files do
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "YCbCr"])
def test_pil_images_in_other_modes_match_their_file(vision, tmp_path, mode):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("img.tiff" if mode in ("CMYK", "YCbCr") else "img.png")
    image.save(path)
    torch.testing.assert_close(pixels(vision, image), pixels(vision, path), atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels(vision, image), pixels(vision, image.convert("RGB")), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape, as_rgb", [
    ((16, 16), lambda a: np.stack([a] * 3, -1)),
    ((16, 16, 1), lambda a: np.concatenate([a] * 3, -1)),
    ((16, 16, 2), lambda a: np.stack([a[..., 0]] * 3, -1)),  # grey + alpha: the alpha is dropped
    ((16, 16, 4), lambda a: a[..., :3]),  # RGBA
    ((1, 16, 16), lambda a: np.stack([a[0]] * 3, -1)),
    ((4, 16, 16), lambda a: np.moveaxis(a, 0, -1)[..., :3]),
])
def test_arrays_of_any_channel_count_become_rgb(vision, shape, as_rgb):
    array = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    torch.testing.assert_close(pixels(vision, array), pixels(vision, as_rgb(array)), atol=1e-6, rtol=0)


def test_missing_image_next_to_a_grey_image_gets_an_rgb_placeholder(tmp_path):
    processor = DMILProcessor(tokenizer=make_tokenizer(tmp_path), image_processor=image_processor())
    batch = processor(text=["a cat", "a dog"], images=[np.full((16, 16), 255, np.uint8), None])
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["modality_mask"].tolist() == [[True, True], [True, False]]


# ----------------------------------------------------------------------------------------------------------------
# 4. Truncated audio files
# ----------------------------------------------------------------------------------------------------------------


def test_truncated_wav_warns_with_the_decoded_length(tmp_path, caplog):
    processor = DMILProcessor(feature_extractor=Wav2Vec2FeatureExtractor())
    wave = (0.1 * np.random.default_rng(3).standard_normal(16000)).astype(np.float32)
    full = tmp_path / "full.wav"
    soundfile.write(full, wave, 16000, subtype="PCM_16")
    data = full.read_bytes()
    declared = struct.unpack("<I", data[data.find(b"data") + 4:][:4])[0] // 2
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(data[: len(data) // 2])
    decoded = soundfile.info(truncated).frames  # what is left in the file

    with caplog.at_level(logging.WARNING, logger="dmil_hf.models.dmil.processing_dmil"):
        processor(audio=full)
        assert not caplog.records
        batch = processor(audio=[full, truncated])
    assert batch["input_values"].shape == (2, 16000)
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "audio[1]" in message and "cut.wav" in message and "truncated" in message
    assert f"{decoded} of the {declared} samples" in message


# ----------------------------------------------------------------------------------------------------------------
# 5. Blank text is a missing text
# ----------------------------------------------------------------------------------------------------------------


def test_empty_or_whitespace_text_is_a_missing_modality(tmp_path):
    processor = DMILProcessor(tokenizer=make_tokenizer(tmp_path), image_processor=image_processor())
    images = [np.zeros((16, 16, 3), np.uint8)] * 3
    batch = processor(text=["", " \n\t", "the cat"], images=images)
    assert batch["modality_mask"].tolist() == [[False, True], [False, True], [True, True]]
    assert "input_ids" not in processor(text=["", None], images=images[:2])  # no text anywhere: no text keys
    with pytest.raises(ValueError, match=r"sample 0 has no input in any modality \(text is None or empty\)"):
        processor(text=" ")


def test_pipeline_treats_blank_text_as_missing(tmp_path):
    model, processor = make_model_and_processor(tmp_path, ("text", "vision"))
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")
    image = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert pipe({"text": "  ", "image": image}, top_k=None) == pipe({"image": image}, top_k=None)
    with pytest.raises(ValueError, match="text"):
        pipe({"text": ""})


# ----------------------------------------------------------------------------------------------------------------
# 6. Tokenizers without model_max_length
# ----------------------------------------------------------------------------------------------------------------


def unlimited_tokenizer(folder):
    make_tokenizer(folder)  # writes vocab.txt
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"))
    assert tokenizer.model_max_length > 1e20  # transformers' "no limit" sentinel
    return tokenizer


def test_text_is_truncated_to_the_backbone_or_512(tmp_path):
    long_text = "the cat " * 400
    no_limit = DMILProcessor(tokenizer=unlimited_tokenizer(tmp_path))
    assert no_limit(text=long_text)["input_ids"].shape == (1, 512)
    knows_backbone = DMILProcessor(tokenizer=unlimited_tokenizer(tmp_path), text_max_length=40)
    assert knows_backbone(text=long_text)["input_ids"].shape == (1, 40)
    # The smaller limit wins, and an explicit max_length still overrides both.
    short_tokenizer = DMILProcessor(tokenizer=make_tokenizer(tmp_path), text_max_length=100)
    assert short_tokenizer(text=long_text)["input_ids"].shape == (1, 64)
    assert knows_backbone(text=long_text, text_kwargs={"max_length": 10})["input_ids"].shape == (1, 10)

    knows_backbone.save_pretrained(tmp_path / "saved")
    assert DMILProcessor.from_pretrained(tmp_path / "saved").text_max_length == 40


def test_backbone_text_length_leaves_out_roberta_position_offset():
    assert DMILProcessor.backbone_text_length(tiny_text_config("bert")) == 66
    # 66 positions, of which RoBERTa keeps pad_token_id + 1 = 2 before the first token.
    assert DMILProcessor.backbone_text_length(tiny_text_config("roberta")) == 64
    assert DMILProcessor.backbone_text_length(None) is None


def test_pipeline_truncates_to_the_text_backbone(tmp_path):
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(make_config(("text", "vision"), text="roberta"))
    processor = DMILProcessor(tokenizer=unlimited_tokenizer(tmp_path), image_processor=image_processor())
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")
    result = pipe({"text": "the cat " * 400})
    assert 0 < result[0]["score"] <= 1
    assert pipe.preprocess({"text": "the cat " * 400})["input_ids"].shape == (1, 64)


# ----------------------------------------------------------------------------------------------------------------
# 7. A processor with more modalities than the model
# ----------------------------------------------------------------------------------------------------------------


def test_pipeline_refuses_a_processor_with_modalities_the_model_lacks(tmp_path):
    model, _ = make_model_and_processor(tmp_path, ("text", "vision"))
    _, processor = make_model_and_processor(tmp_path, TVA)
    with pytest.raises(ValueError, match=re.escape(
        "the processor has the modalities ['text', 'vision', 'audio'], but the model only ['text', 'vision']"
    )):
        MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")


# ----------------------------------------------------------------------------------------------------------------
# 8. Property: a well-formed, finite result, or a ValueError/TypeError naming the input
# ----------------------------------------------------------------------------------------------------------------

# How errors name the inputs: a processor argument with the sample's index, a sample, the whole call, the
# pipeline's input, or the model's input that the processor could not make valid (audio shorter than the encoder).
INPUT_NAME = re.compile(
    r"(text|images|audio)\[\d+\]|sampling_rate|sample \d+ has no input|no input given|the input has"
    r"|\binput_values\b"
)
PIL_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV", "I", "I;16", "F"]
GOOD_RATES = [8000, 11025, 16000, 22050, 44100, 48000]
SETTINGS = settings(
    max_examples=40, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def rarely(common, rare):
    """`rare` one draw in six: bad values often enough to be tried, not so often that they hide everything else."""
    # Shrinking goes towards the first choice, so a failing example keeps only the bad values it needs.
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda is_common: common if is_common else rare)


rates = rarely(st.sampled_from([None, *GOOD_RATES]), st.sampled_from([0, -8000]))


@st.composite
def image_inputs(draw):
    """A PIL image of any mode, or an array/tensor of any layout, channel count and dtype, with values in or out of
    the dtype's documented range."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["pil", "array", "tensor"]))
    if kind == "pil":
        mode = draw(st.sampled_from(PIL_MODES))
        if mode in ("I", "I;16"):
            return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16)).convert(mode)
        if mode == "F":
            scale = draw(rarely(st.just(1.0), st.just(300.0)))
            return Image.fromarray((rng.random((height, width)) * scale).astype(np.float32))
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    channels = draw(rarely(st.integers(1, 4), st.just(5)))
    shape = draw(st.sampled_from([(height, width), (height, width, channels), (channels, height, width)]))
    dtype = draw(rarely(st.sampled_from(["uint8", "uint16", "int64", "float32", "float64", "bool"]),
                        st.just("complex64")))
    if dtype in ("float32", "float64"):
        scale = draw(rarely(st.just(1.0), st.sampled_from([255.0, float("nan")])))
    elif dtype in ("int64", "complex64"):
        scale = draw(rarely(st.just(255.0), st.just(70000.0)))
    else:
        scale = float(np.iinfo(dtype).max) if dtype != "bool" else 1.0
    values = rng.random(shape) * scale
    integer = dtype in ("uint8", "uint16", "int64", "bool")
    array = np.round(np.nan_to_num(values)).astype(dtype) if integer else values.astype(dtype)
    return torch.from_numpy(array) if kind == "tensor" and dtype != "uint16" else array


@st.composite
def clips(draw):
    """A waveform of any length and dtype, bare or with a sampling rate in a tuple or a dict."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    length = draw(rarely(st.integers(1, 3000), st.just(0)))
    dtype = draw(rarely(st.sampled_from(["float32", "float64", "int16", "int32"]), st.just("uint8")))
    wave = rng.standard_normal(length) * 0.1
    if draw(rarely(st.just(False), st.just(True))) and length:
        wave[rng.integers(length)] = draw(st.sampled_from([np.nan, np.inf]))
    if dtype in ("int16", "int32", "uint8"):
        wave = np.nan_to_num(wave * 1000, posinf=0)
    wave = wave.astype(dtype)
    rate = draw(rates)
    form = draw(st.sampled_from(["bare", "tuple", "dict", "list"]))
    if form == "bare" or rate is None:
        return wave
    if form == "tuple":
        return (wave, rate)
    return {"array": wave.tolist() if form == "list" else wave, "sampling_rate": rate}


texts = rarely(
    st.one_of(st.text(max_size=40), st.integers(1, 2000).map(lambda n: "the cat " * n)),
    st.one_of(st.just(""), st.sampled_from([" ", "\n\t "]), st.integers()),
)
MODALITY_STRATEGIES = {"text": texts, "image": image_inputs(), "audio": clips()}
PROCESSOR_ARGUMENTS = {"text": "text", "image": "images", "audio": "audio"}
# A non-empty subset of the modalities, so that most draws reach the processing.
modality_subsets = st.sets(st.sampled_from(sorted(MODALITY_STRATEGIES)), min_size=1)


def assert_finite_batch(batch, batch_size):
    for key, value in batch.items():
        assert isinstance(value, torch.Tensor), key
        assert value.shape[0] == batch_size, key
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    if "pixel_values" in batch:
        assert batch["pixel_values"].shape[1:] == (3, 16, 16)
    if "input_ids" in batch:
        assert 0 < batch["input_ids"].shape[1] <= 64


def assert_names_the_input(error):
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    assert INPUT_NAME.search(str(error)), f"the error does not name the input: {error}"


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    model, processor = make_model_and_processor(tmp_path_factory.mktemp("prop"), TVA)
    return model.eval(), processor


@SETTINGS
@given(data=st.data(), batch_size=st.integers(1, 3))
def test_property_processor(model_and_processor, data, batch_size):
    _, processor = model_and_processor
    arguments = {
        PROCESSOR_ARGUMENTS[key]: [data.draw(rarely(MODALITY_STRATEGIES[key], st.none()), label=key)
                                   for _ in range(batch_size)]
        for key in sorted(data.draw(modality_subsets, label="modalities"))
    }
    sampling_rate = data.draw(rates, label="sampling_rate")
    try:
        batch = processor(**arguments, sampling_rate=sampling_rate)
    except Exception as error:  # noqa: BLE001 - the property is about which exceptions escape
        event(f"error: {str(error)[:40]}")
        assert_names_the_input(error)
        return
    event("processed")
    assert_finite_batch(batch, batch_size)
    if "modality_mask" in batch:
        assert batch["modality_mask"].dtype == torch.bool and batch["modality_mask"].shape == (batch_size, 3)


@SETTINGS
@given(data=st.data())
def test_property_pipeline(model_and_processor, data):
    model, processor = model_and_processor
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")
    # Keys left out and keys given as None are both missing modalities.
    inputs = {key: data.draw(rarely(MODALITY_STRATEGIES[key], st.none()), label=key)
              for key in sorted(data.draw(modality_subsets, label="modalities"))}
    try:
        result = pipe(inputs, top_k=None)
    except Exception as error:  # noqa: BLE001
        event(f"error: {str(error)[:40]}")
        assert_names_the_input(error)
        return
    event("classified")
    assert len(result) == 3
    scores = [entry["score"] for entry in result]
    assert all(np.isfinite(scores)) and sum(scores) == pytest.approx(1.0, abs=1e-4)
    weights = list(result[0]["interactions"].values())
    assert all(np.isfinite(weights)) and sum(weights) == pytest.approx(1.0, abs=1e-4)
