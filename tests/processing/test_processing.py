"""DMILProcessor and DMILDataCollator: flat model batches from raw text / images / audio, any subset of
sub-processors, missing modalities, file inputs, resampling, save/load and errors."""

import json
import math

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from transformers import (
    ASTFeatureExtractor,
    AutoProcessor,
    Wav2Vec2FeatureExtractor,
    WhisperFeatureExtractor,
)

from dmil_hf import DMILDataCollator, DMILForMultimodalClassification, DMILProcessor
from dmil_hf.models.dmil.processing_dmil import resample_audio
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.testing_utils import tiny_feature_extractor as feature_extractor
from dmil_hf.testing_utils import tiny_image_processor as image_processor
from dmil_hf.testing_utils import tiny_processor as build

SUBSETS = [("text", "vision"), ("text", "audio"), ("vision", "audio"), ("text", "vision", "audio")]


def rng_inputs(n=2, seed=0):
    rng = np.random.default_rng(seed)
    texts = ["the cat sits on the mat", "a dog barks", "hello world", "the dog", "quiet"][:n]
    images = [rng.integers(0, 256, (20 + 4 * i, 24, 3), dtype=np.uint8) for i in range(n)]
    audio = [rng.standard_normal(1600 - 400 * (i % 3)).astype(np.float32) * 0.1 for i in range(n)]
    return texts, images, audio


def assert_same_batch(a, b):
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# ----------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------


def test_round_trip_with_image_processor_and_feature_extractor(tokenizer, tmp_path):
    processor = build(tokenizer)
    texts, images, audio = rng_inputs(3)
    inputs = dict(
        text=[texts[0], None, texts[2]], images=[images[0], images[1], None], audio=[None, audio[1], audio[2]]
    )
    before = processor(**inputs)

    processor.save_pretrained(tmp_path)
    # Both sub-configs live under their own key of one file: neither can overwrite the other.
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "DMILProcessor"
    assert saved["image_processor"]["image_processor_type"].startswith("ViTImageProcessor")
    assert saved["feature_extractor"]["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert saved["auto_map"]["AutoProcessor"] == "processing_dmil.DMILProcessor"
    assert (tmp_path / "processing_dmil.py").exists()

    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, DMILProcessor)
    assert loaded.modalities == ["text", "vision", "audio"]
    assert loaded.image_processor.size == {"height": 16, "width": 16}
    assert loaded.feature_extractor.return_attention_mask is True
    assert_same_batch(before, loaded(**inputs))


@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
def test_each_subset_processes_saves_and_feeds_the_model(tokenizer, tmp_path, modalities):
    processor = build(tokenizer, modalities)
    assert processor.modalities == list(modalities)
    texts, images, audio = rng_inputs(2)
    given = {"text": texts, "vision": images, "audio": audio}
    arguments = {"text": "text", "vision": "images", "audio": "audio"}
    batch = processor(**{arguments[m]: given[m] for m in modalities})

    expected = set()
    if "text" in modalities:
        expected |= {"input_ids", "attention_mask", "token_type_ids"}
    if "vision" in modalities:
        expected |= {"pixel_values"}
    if "audio" in modalities:
        expected |= {"input_values", "audio_attention_mask"}
    assert set(batch.keys()) == expected  # everything present: no modality_mask needed

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    for modality, slot in [("text", "tokenizer"), ("vision", "image_processor"), ("audio", "feature_extractor")]:
        if modality not in modalities:
            assert saved[slot] is None
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.modalities == list(modalities)
    assert_same_batch(batch, loaded(**{arguments[m]: given[m] for m in modalities}))

    # The keys are the model's forward arguments.
    model = DMILForMultimodalClassification(make_config(modalities)).eval()
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (2, 3)
    assert out.interaction_weights.shape == (2, len(modalities) + 2)


# ----------------------------------------------------------------------------------------------------------------
# Masks, padding, missing modalities
# ----------------------------------------------------------------------------------------------------------------


def test_audio_mask_does_not_clobber_text_attention_mask(tokenizer):
    processor = build(tokenizer, ("text", "audio"))
    texts = ["the cat sits on the mat", "a"]
    audio = [np.ones(1000, np.float32) * 0.1, np.ones(1600, np.float32) * 0.1]
    batch = processor(text=texts, audio=audio)
    text_only = tokenizer(texts, padding=True, return_tensors="pt")
    audio_only = processor.feature_extractor(audio, padding=True, sampling_rate=16000, return_tensors="pt")
    # Padded per modality: the text to its longest text, the audio to its longest clip.
    assert batch["attention_mask"].shape == (2, 8)
    assert batch["input_values"].shape == batch["audio_attention_mask"].shape == (2, 1600)
    assert torch.equal(batch["attention_mask"], text_only["attention_mask"])
    assert torch.equal(batch["audio_attention_mask"], audio_only["attention_mask"])
    assert batch["attention_mask"].sum(1).tolist() == [8, 3]
    assert batch["audio_attention_mask"].sum(1).tolist() == [1000, 1600]


def test_missing_modalities_get_placeholders_and_a_modality_mask(tokenizer):
    processor = build(tokenizer)
    texts, images, audio = rng_inputs(3)
    batch = processor(
        text=[texts[0], None, texts[2]], images=[None, images[1], images[2]], audio=[audio[0], audio[1], None]
    )
    assert batch["modality_mask"].dtype == torch.bool
    assert batch["modality_mask"].tolist() == [[True, False, True], [False, True, True], [True, True, False]]
    # Placeholders: an empty text ([CLS] [SEP]), a black image, silence as long as the longest clip.
    assert batch["attention_mask"][1].sum() == 2
    black = processor.image_processor(np.zeros_like(images[1]), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(batch["pixel_values"][0], black)
    assert batch["input_values"].shape[1] == max(len(audio[0]), len(audio[1]))
    assert torch.count_nonzero(batch["input_values"][2]) == 0
    # The present samples are processed exactly as on their own.
    alone = processor(text=texts[0], images=images[2], audio=audio[1])
    assert torch.equal(batch["input_ids"][0, : alone["input_ids"].shape[1]], alone["input_ids"][0])
    torch.testing.assert_close(batch["pixel_values"][2], alone["pixel_values"][0])

    # The model accepts the batch and gives the missing components no weight.
    model = DMILForMultimodalClassification(make_config()).eval()
    with torch.no_grad():
        weights = model(**batch).interaction_weights
    components = model.config.interaction_components
    assert weights[0, components.index("uniqueness_vision")] == 0
    assert weights[1, components.index("uniqueness_text")] == 0
    assert weights[2, components.index("uniqueness_audio")] == 0


def test_modality_absent_from_the_whole_batch_has_no_keys(tokenizer):
    processor = build(tokenizer)
    texts, images, _ = rng_inputs(2)
    batch = processor(text=texts, images=images)
    assert set(batch.keys()) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "modality_mask"}
    assert batch["modality_mask"].tolist() == [[True, True, False]] * 2
    batch = processor(text=texts, images=images, audio=[None, None])  # all None is the same as not given
    assert "input_values" not in batch and batch["modality_mask"][:, 2].any().item() is False


def test_modality_mask_only_when_needed_unless_asked(tokenizer):
    processor = build(tokenizer, ("text", "vision"))
    texts, images, _ = rng_inputs(2)
    assert "modality_mask" not in processor(text=texts, images=images)
    forced = processor(text=texts, images=images, return_modality_mask=True)
    assert forced["modality_mask"].tolist() == [[True, True]] * 2
    assert "modality_mask" not in processor(text=[texts[0], None], images=images, return_modality_mask=False)
    as_lists = processor(text=[texts[0], None], images=images, return_tensors=None)
    assert as_lists["modality_mask"] == [[True, True], [False, True]]


def test_single_sample_inputs_become_a_batch_of_one(tokenizer):
    processor = build(tokenizer)
    texts, images, audio = rng_inputs(1)
    batch = processor(text=texts[0], images=images[0], audio=audio[0])
    assert batch["input_ids"].shape[0] == batch["pixel_values"].shape[0] == batch["input_values"].shape[0] == 1
    stacked = processor(images=np.stack([images[0], images[0]]), text=["a", "b"])  # a 4-D array is a batch
    assert stacked["pixel_values"].shape == (2, 3, 16, 16)


# ----------------------------------------------------------------------------------------------------------------
# Files and resampling
# ----------------------------------------------------------------------------------------------------------------


def test_image_and_audio_file_paths(tokenizer, tmp_path):
    processor = build(tokenizer, ("vision", "audio"))
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    png = tmp_path / "img.png"
    Image.fromarray(pixels).save(png)
    # 0.25 s at 8 kHz, stored as float so that the file round trip is exact; the extractor runs at 16 kHz.
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2000) / 8000)).astype(np.float32)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, wave, 8000, subtype="FLOAT")

    from_files = processor(images=[png, str(png)], audio=[wav, str(wav)])
    from_memory = processor(
        images=[pixels, Image.fromarray(pixels)], audio=[(wave, 8000), {"array": wave, "sampling_rate": 8000}]
    )
    assert_same_batch(from_files, from_memory)
    assert from_files["input_values"].shape == (2, 4000)  # resampled to twice as many samples
    assert from_files["audio_attention_mask"].sum().item() == 8000

    # Bare waveforms at another rate: sampling_rate= applies to every clip without its own rate.
    assert_same_batch(processor(images=[pixels] * 2, audio=[wave, wave], sampling_rate=8000), from_memory)

    # Stereo 16-bit PCM: channels are averaged, samples scaled to [-1, 1].
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([wave, -wave / 3], axis=1), 8000, subtype="PCM_16")
    mono = processor.feature_extractor(resample_audio(wave / 3, 8000, 16000), sampling_rate=16000, return_tensors="pt")
    got = processor(audio=stereo)["input_values"]
    torch.testing.assert_close(got, mono["input_values"], atol=2e-3, rtol=0)


def test_resample_audio_is_band_limited_and_keeps_tones():
    t8 = np.arange(8000) / 8000
    up = resample_audio(np.sin(2 * np.pi * 440 * t8), 8000, 16000)
    assert up.shape == (16000,) and up.dtype == np.float32
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(up[200:-200], np.sin(2 * np.pi * 440 * t16)[200:-200], atol=1e-2)

    t48 = np.arange(4801) / 48000
    down = resample_audio(np.sin(2 * np.pi * 1000 * t48), 48000, 16000)
    assert down.shape == (math.ceil(4801 / 3),)
    np.testing.assert_allclose(down[50:-50], np.sin(2 * np.pi * 1000 * np.arange(len(down)) / 16000)[50:-50], atol=1e-2)
    # A 7 kHz tone is above the 4 kHz Nyquist limit of 8 kHz audio: it must be filtered out, not aliased to 1 kHz.
    aliased = resample_audio(np.sin(2 * np.pi * 7000 * t16), 16000, 8000)
    assert np.abs(aliased[100:-100]).max() < 0.05
    x = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    assert resample_audio(x, 16000, 16000) is not None and np.array_equal(resample_audio(x, 16000, 16000), x)
    with pytest.raises(ValueError, match="sampling rates must be positive"):
        resample_audio(x, 0, 16000)


# ----------------------------------------------------------------------------------------------------------------
# Spectrogram extractors (AST, Whisper): their own key and fixed lengths reach the model
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, extractor, key, shape",
    [
        # Sizes of tiny_audio_config: AST 32 frames x 16 mel bins; Whisper 16 mel bins x 2 * 25 positions.
        ("audio-spectrogram-transformer", lambda: ASTFeatureExtractor(num_mel_bins=16, max_length=32),
         "input_values", (2, 32, 16)),
        ("whisper", lambda: WhisperFeatureExtractor(feature_size=16, hop_length=320, chunk_length=1),
         "input_features", (2, 16, 50)),
    ],
)
def test_spectrogram_extractors_feed_their_backbones(tokenizer, family, extractor, key, shape):
    processor = DMILProcessor(tokenizer=tokenizer, feature_extractor=extractor())
    texts, _, audio = rng_inputs(2)
    batch = processor(text=texts, audio=[audio[0], None])
    assert batch[key].shape == shape
    assert batch["modality_mask"].tolist() == [[True, True], [True, False]]
    model = DMILForMultimodalClassification(make_config(("text", "audio"), audio=family)).eval()
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)


# ----------------------------------------------------------------------------------------------------------------
# Collator
# ----------------------------------------------------------------------------------------------------------------


def test_collator_builds_a_training_batch(tokenizer):
    processor = build(tokenizer)
    texts, images, audio = rng_inputs(3)
    examples = [
        {"text": texts[0], "image": images[0], "audio": audio[0], "label": 2, "id": "x0"},
        # datasets stores waveforms as lists of floats next to a sampling_rate column
        {"text": texts[1], "audio": audio[1][::2].tolist(), "sampling_rate": 8000, "label": "dog"},
        {"image": images[2], "audio": None, "label": np.int64(0)},
    ]
    collator = DMILDataCollator(processor, label2id={"cat": 0, "dog": 1, "bird": 2})
    batch = collator(examples)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [2, 1, 0]
    assert batch["modality_mask"].tolist() == [[True, True, True], [True, False, True], [False, True, False]]
    assert batch["audio_attention_mask"][1].sum() == 2 * len(audio[1][::2])  # resampled 8 kHz -> 16 kHz
    model = DMILForMultimodalClassification(make_config())
    out = model(**batch)
    assert torch.isfinite(out.loss)

    # Text-only examples: the other modalities' fields hold None (or, opted into, are left out of every example).
    unlabeled = collator([{"text": "a cat", "image": None, "audio": None}, {"text": "a dog"}])
    assert set(unlabeled) == {"input_ids", "attention_mask", "token_type_ids", "modality_mask"}  # no labels
    collator = DMILDataCollator(processor, label2id={"cat": 0, "dog": 1, "bird": 2}, allow_missing_modalities=True)
    assert set(collator([{"text": "a cat"}, {"text": "a dog"}])) == set(unlabeled)
    with pytest.raises(ValueError, match=r"examples\[1\] has no label"):
        collator([{"text": "a", "label": 0}, {"text": "b"}])
    with pytest.raises(ValueError, match="'fish'"):
        collator([{"text": "a", "label": "fish"}])
    # A float is a regression target unless the collator is told the task is classification.
    assert collator([{"text": "a", "label": 1.5}])["labels"].dtype == torch.float32
    classifying = DMILDataCollator(processor, label2id={"cat": 0}, problem_type="single_label_classification",
                                    allow_missing_modalities=True)
    with pytest.raises(TypeError, match=r"examples\[0\] label"):
        classifying([{"text": "a", "label": 1.5}])
    with pytest.raises(TypeError, match=r"examples\[0\] must be a dict"):
        collator(["a cat"])


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_errors_name_the_bad_input(tokenizer, tmp_path):
    processor = build(tokenizer)
    texts, images, audio = rng_inputs(2)
    with pytest.raises(TypeError, match="text must be a str"):
        processor(text=5)
    with pytest.raises(TypeError, match=r"text\[1\] must be a str"):
        processor(text=["a", 3])
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL image.*got object"):
        processor(images=[images[0], object()])
    with pytest.raises(ValueError, match=r"images\[0\] must be an image array"):
        processor(images=[np.zeros((2, 2, 2, 2, 3))])
    with pytest.raises(ValueError, match=r"audio\[0\] must be a 1-D \(mono\) waveform"):
        processor(audio=[np.zeros((2, 100), np.float32)])
    with pytest.raises(TypeError, match=r"audio\[0\] must be a 1-D numpy waveform.*got float"):
        processor(audio=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"audio\[0\] contains NaN"):
        processor(audio=np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match=r"audio\[0\] is an empty waveform"):
        processor(audio=np.zeros(0, np.float32))
    # unreadable files
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=r"images\[0\]: cannot read image file .*missing\.png"):
        processor(images=missing)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not a wav file")
    with pytest.raises(ValueError, match=r"audio\[1\]: cannot read audio file .*notes\.wav"):
        processor(audio=[audio[0], not_audio])
    # batch structure
    with pytest.raises(ValueError, match="disagree on the batch size.*'text': 2.*'images': 1"):
        processor(text=texts, images=images[:1])
    with pytest.raises(ValueError, match="sample 1 has no input in any modality"):
        processor(text=["a", None], images=[images[0], None])
    with pytest.raises(ValueError, match="empty batch"):
        processor(text=[])
    with pytest.raises(ValueError, match="no input given"):
        processor()
    # sub-processors
    text_vision = build(tokenizer, ("text", "vision"))
    with pytest.raises(ValueError, match="audio was given, but this DMILProcessor has no feature extractor"):
        text_vision(text="a", audio=audio[0])
    with pytest.raises(ValueError, match="needs at least one of"):
        DMILProcessor()
    with pytest.raises(TypeError, match="image_processor"):
        DMILProcessor(image_processor=feature_extractor())
