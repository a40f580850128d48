"""Issue 17, the modality table's inputs: masks that keep nothing are a missing modality, VideoMAE honours the frame
mask, empty time axes and backbones that do not fit their kind are clear errors, and modality names never collide
with the processor's, collator's or pipeline's keywords or lose to a three-slot alias."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from transformers import BertConfig, ElectraConfig, ViTImageProcessorPil, Wav2Vec2FeatureExtractor, Wav2Vec2Model, pipeline

from dmil_hf import DMILConfig, DMILDataCollator, DMILForMultimodalClassification, DMILProcessor, Modality
from dmil_hf.models.dmil.modalities_dmil import RESERVED_NAMES, pop_prefixed
from dmil_hf.models.dmil.pipeline_dmil import input_keys
from dmil_hf.testing_utils import (
    random_inputs,
    save_tiny_backbones,
    tiny_audio_config,
    tiny_feature_encoder_config,
    tiny_text_config,
    tiny_video_config,
    tiny_vision_config,
)

BACKBONES = {
    "text": tiny_text_config, "image": tiny_vision_config, "video": tiny_vision_config,
    "audio": tiny_audio_config, "features": tiny_feature_encoder_config,
}


def make(rows, **kwargs):
    torch.manual_seed(0)
    return DMILConfig(modality_table=rows, num_labels=3, latent_dim=16, **kwargs)


def model_and_inputs(rows, **kwargs):
    config = make(rows, **kwargs)
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    inputs.pop("labels")
    return model, inputs


# ------------------------------------------------------------------------------------------- all masked = missing


@pytest.mark.parametrize("check_inputs", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("kind", ["text", "video", "audio", "features"])
def test_an_input_whose_mask_keeps_nothing_is_a_missing_modality(kind, check_inputs):
    """Every token / frame / sample / step of sample 1 masked out, and no modality_mask: the sample is predicted as if
    it lacked the modality (its uniqueness weight 0), not as a sample whose modality is padding."""
    other = Modality("other", "features", tiny_feature_encoder_config()) if kind != "features" else Modality("other", "image", tiny_vision_config())
    model, inputs = model_and_inputs([Modality("probe", kind, BACKBONES[kind]()), other], check_inputs=check_inputs)
    main = next(n for n in inputs if n.startswith("probe_") and not n.endswith(("attention_mask", "token_type_ids")))
    mask = torch.ones(4, inputs[main].shape[1], dtype=torch.long)
    mask[1] = 0
    inputs["probe_attention_mask"] = mask
    with torch.no_grad():
        masked = model(**inputs)
        marked = model(**inputs, modality_mask=torch.tensor([[True, True], [False, True], [True, True], [True, True]]))
    assert masked.interaction_weights[1, 1] == 0  # uniqueness_probe
    assert masked.interaction_weights[1, -1] == 0  # synergy: one modality left
    assert masked.interaction_weights[0, 1] > 0
    torch.testing.assert_close(masked.logits, marked.logits, rtol=0, atol=1e-6)


def test_a_sample_with_every_input_masked_out_is_an_error():
    model, inputs = model_and_inputs([Modality("rgb", "video", tiny_vision_config()),
                                      Modality("facs", "features", tiny_feature_encoder_config())])
    inputs["rgb_attention_mask"][2] = 0
    inputs["facs_attention_mask"][2] = 0
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\] have none .*masked out"):
        model(**inputs)


# ------------------------------------------------------------------------------------------- VideoMAE and the mask


def test_a_video_backbone_fills_a_short_clips_padding_with_its_own_frames():
    rows = [Modality("clip", "video", tiny_video_config(num_frames=4)), Modality("facs", "features", tiny_feature_encoder_config())]
    model, inputs = model_and_inputs(rows)
    frames = inputs["clip_pixel_values"]
    real = frames[:, :2]
    padded = torch.cat([real, torch.randn(4, 2, *frames.shape[2:])], dim=1)
    other_padding = torch.cat([real, torch.zeros(4, 2, *frames.shape[2:])], dim=1)
    mask = torch.tensor([[1, 1, 0, 0]] * 4)
    repeated = real[:, [0, 0, 1, 1]]
    with torch.no_grad():
        short = model(**{**inputs, "clip_pixel_values": padded, "clip_attention_mask": mask}).logits
        zeros = model(**{**inputs, "clip_pixel_values": other_padding, "clip_attention_mask": mask}).logits
        stretched = model(**{**inputs, "clip_pixel_values": repeated, "clip_attention_mask": torch.ones(4, 4, dtype=torch.long)}).logits
        unmasked = model(**{**inputs, "clip_pixel_values": repeated, "clip_attention_mask": None}).logits
        full = model(**inputs).logits
        unpadded = model(**{**inputs, "clip_attention_mask": None}).logits
    torch.testing.assert_close(short, stretched, rtol=0, atol=1e-6)
    torch.testing.assert_close(zeros, stretched, rtol=0, atol=1e-6)  # the padding's values never matter
    torch.testing.assert_close(unmasked, stretched, rtol=0, atol=1e-6)
    torch.testing.assert_close(full, unpadded, rtol=0, atol=0)  # a clip without padding is read as it is
    with pytest.raises(ValueError, match="clip_attention_mask must mark each clip's real frames first"):
        model(**{**inputs, "clip_attention_mask": torch.tensor([[1, 0, 1, 1]] * 4)})
    # Every frame masked: the clip is missing.
    none = mask.clone()
    none[3] = 0
    with torch.no_grad():
        out = model(**{**inputs, "clip_pixel_values": padded, "clip_attention_mask": none})
    assert out.interaction_weights[3, 1] == 0


def test_the_processors_short_clip_reaches_a_video_backbone_as_its_frames_repeated():
    config = make([Modality("clip", "video", tiny_video_config(num_frames=4)),
                   Modality("facs", "features", tiny_feature_encoder_config())])
    processor = DMILProcessor.for_model(config, image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}))
    model = DMILForMultimodalClassification(config).eval()
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (20, 20, 3), dtype=np.uint8) for _ in range(2))
    facs = [rng.standard_normal((3, 6)).astype(np.float32)]
    short = processor(clip=[[a, b]], facs=facs)
    assert short["clip_attention_mask"].tolist() == [[1, 1, 0, 0]]  # zero-padded by the processor ...
    with torch.no_grad():
        logits = model(**short).logits
        repeated = model(**processor(clip=[[a, a, b, b]], facs=facs)).logits
    torch.testing.assert_close(logits, repeated, rtol=0, atol=1e-6)  # ... and read as [a, a, b, b]


# ------------------------------------------------------------------------------------------- empty axes


@pytest.mark.parametrize("check_inputs", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("kind, name, unit", [("video", "probe_pixel_values", "frame"), ("features", "probe_input_features", "step")])
def test_zero_frames_or_steps_are_an_error_naming_the_input(kind, name, unit, check_inputs):
    other = Modality("other", "image", tiny_vision_config())
    model, inputs = model_and_inputs([Modality("probe", kind, BACKBONES[kind]()), other], check_inputs=check_inputs)
    empty = {**inputs, name: inputs[name][:, :0], "probe_attention_mask": inputs["probe_attention_mask"][:, :0]}
    with pytest.raises(ValueError, match=f"{name} has shape .*empty axis: each sample needs at least one {unit}"):
        model(**empty)


# ------------------------------------------------------------------------------------------- backbone fits its kind


@pytest.mark.parametrize(
    "kind, backbone, says",
    [
        ("video", tiny_audio_config, "its wav2vec2 backbone takes input_values, not pixel_values"),
        ("features", tiny_vision_config, "its vit backbone takes pixel_values, not input_features"),
        ("text", tiny_feature_encoder_config, "dmil_feature_encoder encoder is for features modalities only"),
        ("audio", tiny_feature_encoder_config, "dmil_feature_encoder encoder is for features modalities only"),
        ("features", lambda: tiny_audio_config("whisper"), "whisper backbone encodes audio spectrograms"),
        ("image", tiny_text_config, "its bert backbone takes input_ids, not pixel_values"),
        ("text", tiny_vision_config, "its vit backbone takes pixel_values, not input_ids"),
    ],
)
def test_a_backbone_that_cannot_take_its_kinds_input_is_refused_at_construction(kind, backbone, says):
    rows = [Modality("probe", kind, backbone()), Modality("other", "image", tiny_vision_config())]
    with pytest.raises(ValueError, match=f"modality 'probe' is of kind '{kind}', but .*{says}"):
        make(rows)
    with pytest.raises(ValueError, match=says):
        DMILForMultimodalClassification.from_backbones_pretrained(modality_table=rows, num_labels=2)


def test_the_three_slot_form_and_built_backbones_are_checked_too():
    with pytest.raises(ValueError, match="modality 'vision' is of kind 'image', but its bert backbone"):
        DMILConfig(text_config=tiny_text_config(), vision_config=BertConfig(hidden_size=32))
    # A backbone handed in built (as a remote-code family would be) is checked by its own main_input_name.
    config = make([Modality("rgb", "video", tiny_vision_config()), Modality("facs", "features", tiny_feature_encoder_config())])
    with pytest.raises(ValueError, match="modality 'rgb' is of kind 'video', but its vit backbone takes input_values"):
        DMILForMultimodalClassification(config, backbones={"rgb": Wav2Vec2Model(tiny_audio_config())})


def test_a_family_missing_from_the_backbone_table_works_with_its_kinds_defaults():
    electra = ElectraConfig(vocab_size=99, embedding_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=37)
    model, inputs = model_and_inputs([Modality("words", "text", electra), Modality("facs", "features", tiny_feature_encoder_config())])
    assert torch.isfinite(model(**inputs).logits).all()


def tiny_clip_encoder(family):
    """Off-table encoders of whole clips (a `num_frames` config), which the table does not list."""
    from transformers import TimesformerConfig, VivitConfig

    layers = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    if family == "timesformer":
        return TimesformerConfig(image_size=16, patch_size=8, num_frames=2, **layers)
    return VivitConfig(image_size=16, tubelet_size=[2, 8, 8], num_frames=2, **layers)


@pytest.mark.parametrize("family", ["timesformer", "vivit"])
def test_a_clip_encoder_missing_from_the_table_takes_the_clip_whole_and_is_no_image_backbone(family):
    # Run frame by frame (the image default), these crashed inside the backbone ("not enough values to unpack").
    model, inputs = model_and_inputs([Modality("clip", "video", tiny_clip_encoder(family)),
                                      Modality("facs", "features", tiny_feature_encoder_config())])
    assert model.config.modality("clip").num_frames == 2 and not model.routes["clip"].per_frame
    inputs["clip_attention_mask"][1, 1:] = 0  # a short clip: its padding is filled with its own frames
    with torch.no_grad():
        logits = model(**inputs).logits
        padded = dict(inputs, clip_pixel_values=inputs["clip_pixel_values"].clone())
        padded["clip_pixel_values"][1, 1:] = 3.0
        torch.testing.assert_close(model(**padded).logits, logits)
    with pytest.raises(ValueError, match=f"modality 'clip' is of kind 'image', but its {family} backbone encodes video clips"):
        make([Modality("clip", "image", tiny_clip_encoder(family)), Modality("facs", "features", tiny_feature_encoder_config())])


def test_videomae_for_an_image_row_is_refused_as_a_clip_encoder():
    # It was refused with "num_frames is for video modalities", although the row gave no num_frames.
    with pytest.raises(ValueError, match="videomae backbone encodes video clips of 4 frames, not single images"):
        make([Modality("probe", "image", tiny_video_config()), Modality("other", "image", tiny_vision_config())])


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_an_encoder_decoder_family_missing_from_the_table_is_refused_at_construction(family):
    # T5 stopped at the first forward ("You must specify exactly one of input_ids or inputs_embeds"); BART ran its
    # decoder and a saved model could not be loaded back (its tied embeddings reported missing).
    from transformers import BartConfig, T5Config

    backbone = (T5Config(d_model=32, num_layers=1, num_heads=4, d_ff=37, vocab_size=99, d_kv=8) if family == "t5" else
                BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, vocab_size=99))
    rows = [Modality("words", "text", backbone), Modality("facs", "features", tiny_feature_encoder_config())]
    with pytest.raises(ValueError, match=f"modality 'words': its {family} backbone is an encoder-decoder model.*model_class"):
        make(rows)
    with pytest.raises(ValueError, match="encoder-decoder"):
        DMILForMultimodalClassification.from_backbones_pretrained(modality_table=rows, num_labels=2)
    # Whisper, in the table with its encoder class, is still taken.
    make([Modality("speech", "audio", tiny_audio_config("whisper")), Modality("facs", "features", tiny_feature_encoder_config())])


# ------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_a_name_that_is_a_processor_collator_pipeline_or_forward_keyword_is_refused(name):
    with pytest.raises(ValueError, match=f"'{name}' cannot name a modality.*reserved: .*sampling_rate"):
        Modality(name, "features")
    with pytest.raises(ValueError, match="cannot name a modality"):
        make([{"name": name, "kind": "features"}, Modality("other", "image", tiny_vision_config())])


def test_a_modalitys_own_name_wins_over_the_processors_three_slot_arguments():
    # `audio=` is the three-slot alias of the audio kind; here `audio` is a features row and `speech` the audio one.
    config = make([Modality("audio", "features", tiny_feature_encoder_config()),
                   Modality("speech", "audio", tiny_audio_config())])
    processor = DMILProcessor.for_model(config, feature_extractor=Wav2Vec2FeatureExtractor())
    batch = processor(audio=[np.ones((3, 6), np.float32)], speech=[np.zeros(1600, np.float32)])
    assert sorted(batch) == ["audio_attention_mask", "audio_input_features", "speech_input_values"]
    assert batch["audio_input_features"].shape == (1, 3, 6)
    assert torch.isfinite(DMILForMultimodalClassification(config).eval()(**batch).logits).all()
    # A features row named `text` (no tokenizer at all) is given as text=.
    config = make([Modality("text", "features", tiny_feature_encoder_config()), Modality("speech", "audio", tiny_audio_config())])
    batch = DMILProcessor.for_model(config, feature_extractor=Wav2Vec2FeatureExtractor())(text=[np.ones((2, 6), np.float32)])
    assert batch["text_input_features"].shape == (1, 2, 6)


def test_an_image_video_row_beside_a_vision_image_row_takes_its_own_key(tmp_path):
    config = make([Modality("vision", "image", tiny_vision_config()), Modality("image", "video", tiny_vision_config())],
                  id2label={0: "a", 1: "b", 2: "c"})
    assert input_keys(config) == {"vision": "vision", "image": "image"}
    processor = DMILProcessor.for_model(config, image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}))
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    frames = [rng.integers(0, 255, (20, 20, 3), dtype=np.uint8) for _ in range(3)]
    collator = DMILDataCollator(processor)
    assert [collator.column_of(m) for m in config.modalities] == ["vision", "image"]
    batch = collator([{"vision": photo, "image": frames, "label": 1}])
    assert batch["pixel_values"].shape == (1, 3, 16, 16) and batch["image_pixel_values"].shape == (1, 3, 3, 16, 16)
    pipe = pipeline("multimodal-classification", model=DMILForMultimodalClassification(config), processor=processor)
    both = pipe({"vision": photo, "image": frames}, top_k=None)
    assert sorted(r["label"] for r in both) == ["a", "b", "c"]
    assert pipe({"image": frames})[0]["interactions"]["uniqueness_vision"] == 0.0  # `image` reached the video row
    # Two modalities that would read one example field: an error naming them, not one of them silently dropped.
    with pytest.raises(ValueError, match="one example field for several modalities.*'image': \\['vision', 'image'\\]"):
        DMILDataCollator(processor, columns={"vision": "image"})([{"image": photo, "label": 0}])


def test_prefixed_loader_arguments_go_to_the_longest_matching_name():
    kwargs = {"rgb_flow_revision": "a", "rgb_revision": "b", "rgb_flow_config": {}, "num_labels": 2}
    options = pop_prefixed(kwargs, ["rgb", "rgb_flow"])
    assert options == {"rgb": {"revision": "b"}, "rgb_flow": {"revision": "a"}}
    assert kwargs == {"rgb_flow_config": {}, "num_labels": 2}


@pytest.mark.parametrize("name, argument, value", [("gate", "gate_objective", "mixture"), ("latent", "latent_dim", 8),
                                                   ("num", "num_labels", 5), ("problem", "problem_type", "regression")])
def test_the_configs_own_arguments_are_never_a_modalitys_loader_argument(tmp_path, name, argument, value):
    # `gate_objective` was taken as the `gate` backbone's `objective`: a TypeError inside BertModel.__init__.
    paths = save_tiny_backbones(str(tmp_path), ("text", "vision"))
    rows = [Modality(name, "text", paths["text"]), Modality("photo", "image", paths["vision"])]
    kwargs = {"num_labels": 2, "latent_dim": 16, argument: value}
    model = DMILForMultimodalClassification.from_backbones_pretrained(modality_table=rows, **kwargs)
    assert getattr(model.config, argument) == value
    options = pop_prefixed({argument: value, f"{name}_revision": "main"}, [name], keep={argument})
    assert options == {name: {"revision": "main"}}


# ------------------------------------------------------------------------------------------- ragged lists, every kind

_RAGGED_IMAGE = [[[0, 0, 0]] * 16] * 15 + [[[0, 0, 0]] * 15]  # one row a pixel short


@pytest.mark.parametrize("column, value, says", [
    ("photo", _RAGGED_IMAGE, r"examples\[1\]\['photo'\] must be an image"),
    ("clip", [np.zeros((16, 16, 3), np.uint8).tolist(), _RAGGED_IMAGE], r"examples\[1\]\['clip'\] frame 1 must be an image"),
    ("audio", [[0.0] * 10, [0.0] * 9], r"examples\[1\]\['audio'\] must be a waveform"),
    ("audio", ["a"] * 1600, r"examples\[1\]\['audio'\] must be a waveform"),
    ("facs", [[1.0] * 6, [1.0] * 5], r"facs\[1\]: the steps have different sizes"),
])
def test_a_ragged_list_in_an_example_is_an_error_naming_the_field(column, value, says):
    # Images, frames and waveforms stored as nested lists (as datasets stores them) got numpy's bare "setting an array
    # element with a sequence", naming neither the field nor the sample.
    config = make([Modality("photo", "image", tiny_vision_config()), Modality("clip", "video", tiny_vision_config()),
                   Modality("audio", "audio", tiny_audio_config()), Modality("facs", "features", tiny_feature_encoder_config())])
    processor = DMILProcessor.for_model(config, image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}),
                                        feature_extractor=Wav2Vec2FeatureExtractor())
    image = np.zeros((16, 16, 3), np.uint8).tolist()
    example = {"photo": image, "clip": [image, image], "audio": [0.0] * 1600, "facs": [[1.0] * 6] * 2, "label": 0}
    collator = DMILDataCollator(processor)
    assert collator([example, example])["labels"].shape == (2,)
    with pytest.raises(ValueError, match=says):
        collator([example, {**example, column: value}])
