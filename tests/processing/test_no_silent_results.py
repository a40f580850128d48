"""Issue 17, the processor / collator / interaction_weights / CLI side: inputs that used to give a silently wrong
result or crash deep inside a library. Each either does the right thing or is a ValueError/TypeError naming the input,
before any backbone runs.

- a typo'd `DMILDataCollator(columns=...)` key; a modality whose field no example of a batch has (`image_path` for
  `image`); string labels without `label2id` under DMILTrainer (the model's config has it);
- ragged feature lists; images or frames of different sizes that the image processor does not resize; a VideoMAE
  saved with its own image processor or video processor, given lists of frames;
- `interaction_weights` on an empty dataset, and its default collator reading the batch's keys from the first row;
- `training/run.py --modality ...` (or any backbone flag) without data training the synthetic job instead.
"""

import json

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset
from transformers import AutoModel, ViTImageProcessorPil, Wav2Vec2FeatureExtractor

from dmil_hf import (
    DMILDataCollator,
    DMILForMultimodalClassification,
    DMILProcessor,
    DMILTrainer,
    DMILTrainingArguments,
    Modality,
)
from dmil_hf.evaluation.plots import interaction_weights
from dmil_hf.models.dmil.processing_dmil import load_image_processor
from dmil_hf.testing_utils import random_inputs, save_tiny_backbones, tiny_video_config
from dmil_hf.testing_utils import import_cli
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.testing_utils import tiny_processor as build

TVA = ("text", "vision", "audio")


def frame(height, width, value=0):
    return np.full((height, width, 3), value, np.uint8)


def rows_with_paths(n=4):
    """The CLI's csv layout (text, image_path, wav_path) as the collator receives it from a datasets table."""
    rng = np.random.default_rng(0)
    return Dataset.from_list([
        {"text": ["the cat", "a dog barks"][i % 2], "image_path": rng.integers(0, 256, (16, 16, 3)).astype(np.uint8),
         "wav_path": rng.standard_normal(1600).astype(np.float32), "label": i % 2}
        for i in range(n)
    ])


# ----------------------------------------------------------------------------------------------------------------
# The collator
# ----------------------------------------------------------------------------------------------------------------


def test_collator_refuses_columns_of_unknown_modalities(tokenizer):
    processor = build(tokenizer)
    with pytest.raises(ValueError, match=r"columns names \['rbg'\], not modalities of the processor.*'vision'"):
        DMILDataCollator(processor, columns={"rbg": "frames"})
    with pytest.raises(TypeError, match=r"columns\['vision'\] must be a field name"):
        DMILDataCollator(processor, columns={"vision": 3})
    assert DMILDataCollator(processor, columns={"vision": "frames"}).column_of("vision") == "frames"


def test_collator_refuses_a_modality_whose_field_no_example_has(tokenizer):
    processor = build(tokenizer)
    data = rows_with_paths()
    examples = [data[i] for i in range(4)]
    # Used to return a text-only batch: vision and audio silently missing from every batch.
    with pytest.raises(ValueError, match=r"field 'image', which the vision modality.*not read by this collator: "
                                         r"\['image_path', 'wav_path'\].*columns=\{'vision': 'image_path'\}"):
        DMILDataCollator(processor)(examples)
    named = DMILDataCollator(processor, columns={"vision": "image_path", "audio": "wav_path"})(examples)
    assert {"input_ids", "pixel_values", "input_values"} <= set(named) and "modality_mask" not in named
    # The three-slot keys name them too, and give the same batch.
    keyed = DMILDataCollator(processor, image_key="image_path", audio_key="wav_path")(examples)
    assert all(torch.equal(keyed[k], named[k]) for k in named)
    # Missing values (None in a datasets column) still make a missing modality, with its modality_mask.
    holey = Dataset.from_list([{**examples[0], "image_path": None}, examples[1]])
    batch = DMILDataCollator(processor, columns={"vision": "image_path", "audio": "wav_path"})(list(holey))
    assert batch["modality_mask"].tolist() == [[True, False, True], [True, True, True]]
    # A column of None only (the field is there): the modality is missing from the batch, no keys.
    none_only = [{"text": "a cat", "image": None, "audio": None, "label": 0}]
    assert "pixel_values" not in DMILDataCollator(processor)(none_only)
    # Opted into: a field left out of every example is the modality missing.
    loose = DMILDataCollator(processor, allow_missing_modalities=True)([{"text": "a cat", "label": 0}])
    assert set(loose) == {"input_ids", "attention_mask", "token_type_ids", "modality_mask", "labels"}


def test_trainer_maps_string_labels_through_the_model_config(tokenizer, tmp_path):
    processor = build(tokenizer, ("text", "vision"))
    collator = DMILDataCollator(processor)
    examples = [{"text": "a cat", "image": frame(16, 16), "label": "dog"},
                {"text": "a dog", "image": frame(16, 16), "label": "cat"}]
    with pytest.raises(ValueError, match="none given: pass label2id=model.config.label2id"):
        collator(examples)
    model = DMILForMultimodalClassification(make_config(("text", "vision"), num_labels=2, id2label={0: "cat", 1: "dog"}))
    args = DMILTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no")
    trainer = DMILTrainer(model=model, args=args, data_collator=collator)
    assert trainer.data_collator.label2id == {"cat": 0, "dog": 1}
    assert trainer.data_collator(examples)["labels"].tolist() == [1, 0]
    assert collator.label2id is None  # the caller's collator is left as it was
    # interaction_weights maps them the same way.
    gate = interaction_weights(model, Dataset.from_list(examples), data_collator=collator)
    assert gate["labels"].tolist() == [1, 0]
    # A collator's own label2id wins; a config with transformers' default names (LABEL_0, ...) gives none.
    own = DMILDataCollator(processor, label2id={"cat": 1, "dog": 0})
    assert DMILTrainer(model=model, args=args, data_collator=own).data_collator.label2id == {"cat": 1, "dog": 0}
    unnamed = DMILForMultimodalClassification(make_config(("text", "vision"), num_labels=2))
    assert DMILTrainer(model=unnamed, args=args, data_collator=collator).data_collator.label2id is None


# ----------------------------------------------------------------------------------------------------------------
# The processor: ragged features, images and frames of different sizes, VideoMAE's processors
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unresized():
    """rgb (video) and vision (image) through an image processor that does not resize."""
    return DMILProcessor(image_processor=ViTImageProcessorPil(do_resize=False),
                         modality_table=[Modality("rgb", "video"), Modality("vision", "image"),
                                         Modality("facs", "features")])


def test_ragged_feature_lists_are_named(unresized):
    with pytest.raises(ValueError, match=r"facs\[1\]: the steps have different sizes \(step 0 has 2 values, step 1 "
                                         r"has 3 values\)"):
        unresized(facs=[[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0, 5.0]]])
    with pytest.raises(ValueError, match=r"facs\[0\]: the steps have different sizes \(step 0 has 2 values, step 1 "
                                         r"has a single number\)"):
        unresized(facs=[[[1.0, 2.0], 3.0]])
    with pytest.raises(ValueError, match=r"facs\[0\] must be a \(steps, dim\) array of numbers, got a ragged"):
        unresized(facs=[[[[1.0], [2.0, 3.0]]]])
    # Rectangular lists still make (batch, steps, dim) with the mask.
    batch = unresized(facs=[[[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0]])
    assert batch["facs_input_features"][1].tolist() == [[1.0, 2.0], [0.0, 0.0]]
    assert batch["facs_attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_frames_and_images_of_different_sizes_are_named(unresized):
    with pytest.raises(ValueError, match=r"^rgb\[2\]: frames have different sizes after the image processor "
                                         r"\(rgb\[2\] frame 1: 16x20 pixels -> \(3, 16, 20\); rgb\[0\] frame 0: 16x16"):
        unresized(rgb=[[frame(16, 16)], [frame(16, 16)], [frame(16, 16), frame(16, 20)]])
    with pytest.raises(ValueError, match=r"^images\[1\]: images have different sizes .*do_resize=True"):
        unresized(vision=[frame(16, 16), frame(20, 16)])
    # One size: each frame is the image processor's own output for it, in place; a missing clip is all padding.
    clips = [[frame(8, 8, 10), frame(8, 8, 200)], None, [frame(8, 8, 90)]]
    batch = unresized(rgb=clips, facs=[[1.0]] * 3)
    single = ViTImageProcessorPil(do_resize=False)
    for i, t, image in [(0, 0, clips[0][0]), (0, 1, clips[0][1]), (2, 0, clips[2][0])]:
        expected = torch.as_tensor(single(image, return_tensors="np")["pixel_values"][0])
        torch.testing.assert_close(batch["rgb_pixel_values"][i, t], expected, atol=0, rtol=0)
    assert batch["rgb_attention_mask"].tolist() == [[1, 1], [0, 0], [1, 0]]
    assert not batch["rgb_pixel_values"][1].any() and not batch["rgb_pixel_values"][2, 1].any()


@pytest.fixture(scope="module")
def videomae_folders(tmp_path_factory):
    """A tiny VideoMAE (clips of 4 frames) saved with its image processor, the same one saved with a video processor
    only (written as VideoMAEVideoProcessor writes it: that class needs torchvision), and a tiny wav2vec2."""
    root = tmp_path_factory.mktemp("videomae")
    settings = {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}}
    torch.manual_seed(0)
    backbone = AutoModel.from_config(tiny_video_config(num_frames=4, image_size=16))
    backbone.save_pretrained(root / "image")
    transformers.VideoMAEImageProcessorPil(**settings).save_pretrained(root / "image")
    backbone.save_pretrained(root / "video")
    (root / "video" / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "VideoMAEVideoProcessor", "do_resize": True, "do_center_crop": True,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_sample_frames": False, **settings,
    }))
    audio = save_tiny_backbones(str(root / "backbones"), ("audio",))["audio"]
    return root, audio


@pytest.mark.parametrize("saved_with", ["image", "video"], ids=["image-processor", "video-processor"])
def test_videomae_folder_processor_takes_lists_of_frames(videomae_folders, saved_with):
    root, audio = videomae_folders
    table = [Modality("rgb", "video", str(root / saved_with)), Modality("audio", "audio", audio)]
    processor = DMILProcessor.from_backbones_pretrained(modality_table=table)
    assert type(processor.image_processor).__name__.startswith("VideoMAEImageProcessor")
    assert processor.modality_table[0]["num_frames"] == 4  # the backbone's clip length, as in the model's config
    rng = np.random.default_rng(0)
    clips = [[rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(n)] for n in (6, 3)]
    batch = processor(rgb=clips, audio=[np.zeros(1600, np.float32)] * 2)
    assert batch["rgb_pixel_values"].shape == (2, 4, 3, 16, 16)
    assert batch["rgb_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # Each clip is the VideoMAE processor's own output for that clip (6 frames sampled to 4: 0, 2, 3, 5).
    own = processor.image_processor
    kept = [clips[0][t] for t in (0, 2, 3, 5)]
    torch.testing.assert_close(batch["rgb_pixel_values"][0], torch.as_tensor(own(kept, return_tensors="np")
                                                                               ["pixel_values"][0]), atol=0, rtol=0)
    torch.testing.assert_close(batch["rgb_pixel_values"][1, :3], torch.as_tensor(own(clips[1], return_tensors="np")
                                                                                   ["pixel_values"][0]), atol=0, rtol=0)
    model = DMILForMultimodalClassification.from_backbones_pretrained(modality_table=table, num_labels=2).eval()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_a_video_processor_without_an_image_processor_family_is_named(tmp_path):
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"video_processor_type": "NoSuchVideoProcessor"}))
    with pytest.raises(ValueError, match="has a video processor \\(NoSuchVideoProcessor\\) and no image processor"):
        load_image_processor(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# interaction_weights
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_vision_model():
    torch.manual_seed(0)
    return DMILForMultimodalClassification(make_config(("text", "vision"), num_labels=2)).eval()


def model_rows(model, n=4):
    inputs = random_inputs(model.config, batch_size=n, seq_len=6)
    return [{k: v[i].numpy() for k, v in inputs.items()} for i in range(n)]


def test_interaction_weights_refuses_an_empty_dataset(text_vision_model):
    with pytest.raises(ValueError, match="interaction_weights got an empty dataset"):
        interaction_weights(text_vision_model, Dataset.from_dict({"input_ids": []}))


def test_interaction_weights_default_collator_reads_every_row(text_vision_model):
    model, rows = text_vision_model, model_rows(text_vision_model)
    # Equal to the model on the stacked rows.
    gate = interaction_weights(model, rows, batch_size=4)
    stacked = {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0] if k != "labels"}
    with torch.no_grad():
        expected = model(**stacked).interaction_weights.numpy()
    np.testing.assert_array_equal(gate["weights"], expected)
    assert gate["labels"].tolist() == [int(r["labels"]) for r in rows]
    # The first row without pixel_values: its keys used to decide the batch, and the later rows' images were dropped.
    first_without = [{k: v for k, v in rows[0].items() if k != "pixel_values"}, *rows[1:]]
    with pytest.raises(ValueError, match="dataset row 0 has no 'pixel_values', which other rows have"):
        interaction_weights(model, first_without, batch_size=4)
    # ... and a later row without them used to fail with a KeyError.
    with pytest.raises(ValueError, match="dataset row 2 has no 'pixel_values'"):
        interaction_weights(model, [*rows[:2], first_without[0] | {}, rows[3]], batch_size=4)
    # A modality missing from the whole dataset needs a modality_mask saying so.
    text_only = [{k: v for k, v in r.items() if k != "pixel_values"} for r in rows]
    with pytest.raises(ValueError, match=r"dataset rows 0\.\.3 have no \['pixel_values'\] input\(s\) of the model"):
        interaction_weights(model, text_only, batch_size=4)
    masked = [{**r, "modality_mask": np.array([True, False])} for r in text_only]
    assert interaction_weights(model, masked)["weights"][:, 2].tolist() == [0.0] * 4  # no uniqueness_vision
    with pytest.raises(ValueError, match="none of the model's inputs .*DMILDataCollator"):
        interaction_weights(model, [{"text": "a cat", "image_path": "x.png"}])


# ----------------------------------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [
    ["--modality", "rgb:video:some/vit:8", "audio:audio:some/wav2vec2"],
    ["--text_model", "some/bert", "--vision_model", "some/vit"],
    ["--model_name_or_path", "some/dmil"],
])
def test_cli_model_flags_without_data_are_refused(tmp_path, flags):
    run = import_cli()
    with pytest.raises(ValueError, match=r"--(modality|text_model|model_name_or_path).* but no data was given.*--train_file"):
        # (Small and short, as the run it used to start instead was the synthetic one.)
        run.main([*flags, "--do_train", "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true",
                  "--synthetic_train_size", "16", "--synthetic_eval_size", "8", "--max_steps", "1", "--stages", "1"])
    assert not (tmp_path / "out").exists()
