"""The modality table: named modalities of any kind (video frames, two of one kind, pre-extracted features), through
the model, the trainer, saving, the processor and the pipeline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, ViTImageProcessorPil, Wav2Vec2FeatureExtractor, pipeline

from dmil_hf import (
    DMILConfig,
    DMILDataCollator,
    DMILForMultimodalClassification,
    DMILProcessor,
    DMILTrainer,
    DMILTrainingArguments,
    Modality,
)
from dmil_hf.testing_utils import (
    random_inputs,
    tiny_audio_config,
    tiny_feature_encoder_config,
    tiny_text_config,
    tiny_video_config,
    tiny_vision_config,
)

RGB_FLOW_AUDIO = [
    Modality("rgb", "video", tiny_vision_config()),
    Modality("flow", "video", tiny_vision_config(), temporal_pooling="max"),
    Modality("audio", "audio", tiny_audio_config()),
]
VIDEO_AUDIO = [Modality("frames", "video", tiny_vision_config(), num_frames=3), Modality("audio", "audio", tiny_audio_config())]


def make(rows, **kwargs):
    torch.manual_seed(0)
    return DMILConfig(modality_table=rows, num_labels=3, latent_dim=16, id2label={0: "a", 1: "b", 2: "c"}, **kwargs)


def processor_for(config):
    image = ViTImageProcessorPil(size={"height": 16, "width": 16})
    return DMILProcessor.for_model(config, image_processor=image, feature_extractor=Wav2Vec2FeatureExtractor())


def clip(seed, frames=4):
    return [np.random.default_rng(seed + t).integers(0, 255, (20, 20, 3), dtype=np.uint8) for t in range(frames)]


def raw_examples(config, n=8):
    rng = np.random.default_rng(0)
    examples = []
    for i in range(n):
        example = {"label": i % 3}
        for row in config.modality_specs:
            if row.kind == "video":
                example[row.name] = clip(i, frames=2 + i % 3)
            elif row.kind == "audio":
                example["audio"] = rng.standard_normal(1600 + 100 * (i % 2)).astype(np.float32)
            elif row.kind == "features":
                example[row.name] = rng.standard_normal((3 + i % 4, row.backbone.feature_dim)).astype(np.float32)
            elif row.kind == "text":
                example["text"] = f"sample {i}"
        examples.append(example)
    return examples


# ------------------------------------------------------------------------------------------- config and model


def test_table_round_trips_and_names_inputs(tmp_path):
    config = make(RGB_FLOW_AUDIO)
    assert config.modalities == ["rgb", "flow", "audio"]
    assert config.interaction_components == ["redundancy", "uniqueness_rgb", "uniqueness_flow", "uniqueness_audio", "synergy"]
    model = DMILForMultimodalClassification(config)
    assert model.input_names == [
        "rgb_pixel_values", "rgb_attention_mask", "flow_pixel_values", "flow_attention_mask",
        "input_values", "input_features", "audio_attention_mask",
    ]
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.modality_table == config.modality_table
    assert loaded.config.modality("flow").temporal_pooling == "max"
    inputs = random_inputs(config)
    inputs.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, model.eval()(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "rows, match",
    [
        ([Modality("a", "image", tiny_vision_config()), Modality("a", "audio", tiny_audio_config())], "unique"),
        ([Modality("a", "image", tiny_vision_config())], "two to four"),
        ([Modality(f"m{i}", "image", tiny_vision_config()) for i in range(5)], "two to four"),
    ],
)
def test_bad_tables_are_rejected(rows, match):
    with pytest.raises(ValueError, match=match):
        make(rows)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="rgb-1", kind="video"), "identifier"),
        (dict(name="labels", kind="video"), "reserved"),
        (dict(name="rgb", kind="hologram"), "kind"),
        (dict(name="rgb", kind="image", num_frames=4), "num_frames"),
        (dict(name="rgb", kind="video", temporal_pooling="median"), "temporal_pooling"),
    ],
)
def test_bad_rows_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Modality(**kwargs)


def test_four_modalities_and_the_legacy_slots_in_one_table():
    rows = [
        Modality("text", "text", tiny_text_config()),
        Modality("vision", "image", tiny_vision_config()),
        Modality("rgb", "video", tiny_vision_config()),
        Modality("facs", "features", tiny_feature_encoder_config()),
    ]
    config = make(rows)
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    assert {"input_ids", "pixel_values", "rgb_pixel_values", "facs_input_features"} <= set(inputs)
    out = model(**inputs)
    assert out.interaction_weights.shape == (4, 6) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.backbones["facs"].parameters())


def test_video_through_an_image_backbone_ignores_padded_frames():
    config = make(VIDEO_AUDIO)
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    inputs.pop("labels")
    frames = inputs["frames_pixel_values"]
    padded = torch.cat([frames, torch.randn(4, 2, *frames.shape[2:])], dim=1)
    mask = torch.cat([torch.ones(4, 3, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = model(**inputs).logits
        long = model(**{**inputs, "frames_pixel_values": padded, "frames_attention_mask": mask}).logits
    torch.testing.assert_close(long, short, rtol=0, atol=1e-5)


def test_a_video_backbone_takes_the_clip_whole():
    config = make([Modality("clip", "video", tiny_video_config(num_frames=4)), Modality("audio", "audio", tiny_audio_config())])
    assert config.modality("clip").num_frames == 4  # the backbone's clip length, for the processor
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    assert inputs["clip_pixel_values"].shape == (4, 4, 3, 16, 16)
    assert torch.isfinite(model(**inputs).loss)
    with pytest.raises(ValueError, match="clip_pixel_values must have shape \\(batch, 4, 3, 16, 16"):
        model(**{**inputs, "clip_pixel_values": inputs["clip_pixel_values"][:, :3]})
    with pytest.raises(ValueError, match="exactly 4 frames"):
        make([Modality("clip", "video", tiny_video_config(num_frames=4), num_frames=8), Modality("audio", "audio")])


def test_bad_inputs_name_the_modality_input():
    config = make(RGB_FLOW_AUDIO)
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    with pytest.raises(ValueError, match="rgb_pixel_values must have shape \\(batch, frames, channels, height, width\\)"):
        model(**{**inputs, "rgb_pixel_values": inputs["rgb_pixel_values"][:, 0]})
    with pytest.raises(ValueError, match="flow_attention_mask must have shape \\(batch, time\\)"):
        model(**{**inputs, "flow_attention_mask": torch.ones(4, 7, dtype=torch.long)})
    with pytest.raises(ValueError, match="pixel_values was given, but this model has no vision backbone"):
        model(**inputs, pixel_values=torch.randn(4, 3, 16, 16))
    with pytest.raises(ValueError, match="rgb_attention_mask given without rgb_pixel_values"):
        model(**{k: v for k, v in inputs.items() if k != "rgb_pixel_values"})
    features = make([Modality("facs", "features", tiny_feature_encoder_config(feature_dim=6)), Modality("audio", "audio")])
    with pytest.raises(ValueError, match="facs_input_features must have feature_dim=6"):
        DMILForMultimodalClassification(features)(facs_input_features=torch.randn(2, 5, 7))


@pytest.mark.parametrize("kind", ["text", "image", "video", "audio", "features"])
def test_a_missing_modality_of_each_kind_is_ignored(kind):
    """A sample marked missing in one modality: that modality's input does not reach its prediction, its uniqueness
    gets weight 0, and the sample is predicted as if it had never had it."""
    backbone = {
        "text": tiny_text_config(), "image": tiny_vision_config(), "video": tiny_vision_config(),
        "audio": tiny_audio_config(), "features": tiny_feature_encoder_config(),
    }[kind]
    other = Modality("facs", "features", tiny_feature_encoder_config()) if kind != "features" else Modality("audio", "audio", tiny_audio_config())
    config = make([Modality("probe", kind, backbone), other])
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    inputs.pop("labels")
    mask = torch.tensor([[True, True], [False, True], [True, True], [False, True]])
    probe = [n for n in inputs if n.startswith("probe_") and "mask" not in n][0]
    changed = dict(inputs)
    changed[probe] = inputs[probe].clone()
    changed[probe][[1, 3]] = changed[probe][[0, 2]]  # other values in the missing samples' probe input
    with torch.no_grad():
        out = model(**inputs, modality_mask=mask)
        again = model(**changed, modality_mask=mask)
        alone = model(**{k: v[[1, 3]] for k, v in inputs.items() if not k.startswith("probe_")})
    torch.testing.assert_close(again.logits[[1, 3]], out.logits[[1, 3]], rtol=0, atol=1e-6)
    assert out.interaction_weights[[1, 3], 1].abs().max() == 0  # uniqueness_probe
    assert out.interaction_weights[[1, 3], -1].abs().max() == 0  # synergy needs two modalities
    torch.testing.assert_close(alone.logits, out.logits[[1, 3]], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- processor and pipeline


def test_processor_takes_frames_arrays_and_features():
    config = make([*VIDEO_AUDIO[:1], Modality("facs", "features", tiny_feature_encoder_config(feature_dim=6))])
    processor = processor_for(config)
    assert processor.modalities == ["frames", "facs"]
    frames = clip(0, frames=5)
    batch = processor(
        frames=[frames, np.stack(frames[:2]), None],
        facs=[np.ones((4, 6)), np.ones(6), np.zeros((2, 6))],
    )
    assert batch["frames_pixel_values"].shape == (3, 3, 3, 16, 16)  # num_frames=3 spread over the 5-frame clip
    assert batch["frames_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert batch["facs_input_features"].shape == (3, 4, 6)
    assert batch["facs_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert batch["modality_mask"].tolist() == [[True, True], [True, True], [False, True]]
    out = DMILForMultimodalClassification(config).eval()(**batch)
    assert torch.isfinite(out.logits).all()
    with pytest.raises(TypeError, match="unexpected argument.*'rgb'"):
        processor(rgb=[frames])
    with pytest.raises(ValueError, match="feature sizes differ"):
        processor(facs=[np.ones((2, 6)), np.ones((2, 5))])


def test_video_file_paths_decode_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for t in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * t, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    config = make(VIDEO_AUDIO)
    batch = processor_for(config)(frames=[path], audio=[np.zeros(1600, np.float32)])
    assert batch["frames_pixel_values"].shape == (1, 3, 3, 16, 16)
    # Uniform sampling keeps the first and the last of the six frames (brightness 0 and 200 of 255).
    means = batch["frames_pixel_values"][0].mean(dim=(1, 2, 3))
    assert means[0] < means[1] < means[2]
    with pytest.raises(ValueError, match="cannot read video file"):
        processor_for(config)(frames=[str(tmp_path / "missing.mp4")], audio=[np.zeros(1600, np.float32)])


@pytest.mark.parametrize("rows", [VIDEO_AUDIO, RGB_FLOW_AUDIO], ids=["video+audio", "rgb+flow+audio"])
def test_train_save_reload_and_serve_the_pipeline(tmp_path, rows):
    config = make(rows)
    processor = processor_for(config)
    examples = raw_examples(config)
    data = Dataset.from_list(examples)
    args = DMILTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
    )
    trainer = DMILTrainer(
        model=DMILForMultimodalClassification(config), args=args, train_dataset=data,
        data_collator=DMILDataCollator(processor), processing_class=processor,
    )
    trainer.train()
    final = trainer.save_final()
    pipe = pipeline("multimodal-classification", model=final)
    first = {k: v for k, v in examples[0].items() if k != "label"}
    result = pipe(first, top_k=None)
    assert sorted(r["label"] for r in result) == ["a", "b", "c"]
    assert set(result[0]["interactions"]) == set(config.interaction_components)
    # The same sample without its video: the gate gives the missing modality's uniqueness nothing (and synergy
    # nothing when a single modality is left).
    video = rows[0].name
    missing = pipe({k: v for k, v in first.items() if k != video})[0]["interactions"]
    assert missing[f"uniqueness_{video}"] == 0.0
    assert (missing["synergy"] == 0.0) == (len(rows) == 2)
    # Batched with mixed presence, equal to one by one.
    without = {k: v for k, v in first.items() if k != video}
    batch = pipe([first, without], batch_size=2)
    assert batch[0][0]["label"] == pipe(first)[0]["label"]
    assert batch[1][0]["interactions"] == pytest.approx(missing, abs=1e-5)
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert f"| {video} | video |" in card and f'"{video}": "clip.mp4"' in card


def test_lora_reaches_the_feature_encoder_and_a_video_backbone():
    from dmil_hf.training.lora import add_lora

    config = make([Modality("rgb", "video", tiny_vision_config()),
                   Modality("facs", "features", tiny_feature_encoder_config(num_hidden_layers=1))])
    model = add_lora(DMILForMultimodalClassification(config))
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert any(".backbones.facs.projection" in name for name in adapted)
    assert any(".backbones.facs.layers.layers.0.linear1" in name for name in adapted)
    assert any(".backbones.rgb." in name and name.endswith(("query", "q_proj")) for name in adapted)
    out = model(**random_inputs(config))
    out.loss.backward()
