"""`datasets` media columns written by `datasets` itself: `Image()`, `Audio()` and `Video()` (decoded or
decode=False, from embedded bytes or from paths) and `List(List(float))` feature columns, through DMILDataCollator,
DMILTrainer and training/run.py, without torchcodec (datasets' own decoder for Audio and Video).

Every source file is lossless (float32 WAV, PNG images, PNG-coded MOV clips), so a decoded batch must equal the one
the processor makes from the source arrays themselves."""

import os
import types

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, Dataset, DatasetDict, Image, List, Value, Video, load_dataset, load_from_disk
from PIL import Image as PILImage
from transformers import AutoModel, ViTImageProcessorPil, Wav2Vec2FeatureExtractor

from dmil_hf import DMILConfig, DMILDataCollator, DMILProcessor, Modality, prepare_media_columns
from dmil_hf.models.dmil.media_dmil import _check_audio, _check_video
from dmil_hf.testing_utils import tiny_audio_config, tiny_feature_encoder_config, tiny_vision_config

RATE = 8000
FEATURE_DIM = 6
N = 4
# One modality of each media kind the library takes from a dataset column.
TABLE = [
    Modality("vision", "image", tiny_vision_config()),
    Modality("rgb", "video", tiny_vision_config(), num_frames=3),
    Modality("audio", "audio", tiny_audio_config()),
    Modality("facs", "features", tiny_feature_encoder_config(feature_dim=FEATURE_DIM)),
]


def write_clip(path, frames):
    """A lossless (PNG-coded) QuickTime clip, written with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=4)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The source arrays and the files that hold them (named 000.png, 000.wav, 000.mov, ... as in a dataset folder;
    no file of these names is in the tests' working directory)."""
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    src = {"image": [], "rgb": [], "audio": [], "facs": [], "files": {"image": [], "rgb": [], "audio": []}}
    for i in range(N):
        image = rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)
        clip = rng.integers(0, 256, (2 + i, 20, 20, 3), dtype=np.uint8)
        wave = (rng.standard_normal(800 + 160 * i) * 0.1).astype(np.float32)
        files = {"image": folder / f"{i:03d}.png", "rgb": folder / f"{i:03d}.mov", "audio": folder / f"{i:03d}.wav"}
        PILImage.fromarray(image).save(files["image"])
        write_clip(files["rgb"], clip)
        sf.write(files["audio"], wave, RATE, subtype="FLOAT")
        for key, path in files.items():
            src["files"][key].append(str(path))
        src["image"].append(image)
        src["rgb"].append(clip)
        src["audio"].append(wave)
        src["facs"].append(rng.standard_normal((2 + i, FEATURE_DIM)).astype(np.float32))
    src["label"] = [i % 2 for i in range(N)]
    return src


def media_dataset(src, image=Image(), video=Video(), audio=Audio()):
    """The sources as `datasets` writes them: path columns cast to the media features (datasets' own encoding of
    paths; encoding an array would need torchcodec), and the features as a List(List(float32)) column."""
    data = Dataset.from_dict({
        "image": src["files"]["image"], "rgb": src["files"]["rgb"], "audio": src["files"]["audio"],
        "facs": [f.tolist() for f in src["facs"]], "label": src["label"],
    })
    data = data.cast_column("image", image).cast_column("rgb", video).cast_column("audio", audio)
    return data.cast_column("facs", List(List(Value("float32"))))


def saved(data, folder):
    """`data` written by save_to_disk and read back: each file's bytes embedded, only its base name kept as path."""
    data.save_to_disk(folder)
    return load_from_disk(folder)


@pytest.fixture(scope="module")
def processor():
    config = DMILConfig(modality_table=TABLE, num_labels=2, latent_dim=16)
    return DMILProcessor.for_model(config, image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}),
                                   feature_extractor=Wav2Vec2FeatureExtractor(return_attention_mask=True))


def expected_batch(processor, src, indices):
    """The processor's batch of the source arrays themselves."""
    return processor(
        vision=[src["image"][i] for i in indices], rgb=[src["rgb"][i] for i in indices],
        audio=[(src["audio"][i], RATE) for i in indices], facs=[src["facs"][i] for i in indices],
    )


def assert_same_batch(batch, expected):
    assert sorted(batch) == sorted([*expected, "labels"])
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key


VARIANTS = {
    # save_to_disk + load_from_disk, decoding features as datasets writes them by default
    "saved": lambda src, tmp: saved(media_dataset(src), tmp / "ds"),
    # ... cast to decode=False by the user before saving
    "saved, decode=False": lambda src, tmp: saved(
        media_dataset(src, Image(decode=False), Video(decode=False), Audio(decode=False)), tmp / "ds"),
    # in memory: no bytes, each value's path is the source file
    "paths": lambda src, tmp: media_dataset(src),
    # to_parquet + load_dataset("parquet"): the features kept in the file's schema
    "parquet": lambda src, tmp: (media_dataset(src).to_parquet(str(tmp / "d.parquet")),
                                 load_dataset("parquet", data_files=str(tmp / "d.parquet"), split="train"))[1],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_collator_decodes_every_media_column_to_the_source(variant, sources, processor, tmp_path):
    data = prepare_media_columns(VARIANTS[variant](sources, tmp_path))
    assert not data.features["audio"].decode and not data.features["rgb"].decode
    collator = DMILDataCollator(processor)
    batch = collator([data[i] for i in (2, 0, 3)])
    assert_same_batch(batch, expected_batch(processor, sources, (2, 0, 3)))
    assert batch["labels"].tolist() == [0, 0, 1]


def test_streamed_dataset_with_media_columns(sources, processor, tmp_path):
    """An IterableDataset (what load_dataset(..., streaming=True) returns) is cast the same way, lazily."""
    streamed = prepare_media_columns(saved(media_dataset(sources), tmp_path / "ds").to_iterable_dataset())
    assert not streamed.features["audio"].decode and not streamed.features["rgb"].decode
    batch = DMILDataCollator(processor)(list(streamed.take(3)))
    assert_same_batch(batch, expected_batch(processor, sources, range(3)))


def test_saved_media_is_read_from_its_bytes_not_its_stored_name(sources, tmp_path):
    data = prepare_media_columns(saved(media_dataset(sources), tmp_path / "ds"))
    row = data[1]
    assert row["audio"]["path"] == "001.wav" and not os.path.exists("001.wav")  # the name alone reads nothing
    wave = _check_audio(row["audio"], "audio[0]", None, RATE)
    np.testing.assert_array_equal(wave, sources["audio"][1])
    frames = _check_video(row["rgb"], "rgb[0]")
    np.testing.assert_array_equal(np.stack([np.asarray(f) for f in frames]), sources["rgb"][1])
    # Without the bytes the stored name is all there is, and the error names it.
    with pytest.raises(ValueError, match=r"audio\[0\]: cannot read audio file '001.wav'"):
        _check_audio({"bytes": None, "path": "001.wav"}, "audio[0]", None, RATE)
    with pytest.raises(ValueError, match=r"audio\[0\]: cannot read audio file bytes of '001.wav'"):
        _check_audio({"bytes": b"not audio", "path": "001.wav"}, "audio[0]", None, RATE)
    with pytest.raises(ValueError, match=r"rgb\[0\]: cannot read video file bytes of '001.mov'"):
        _check_video({"bytes": b"not video", "path": "001.mov"}, "rgb[0]")
    with pytest.raises(ValueError, match=r"rgb\[0\] is a dict without 'bytes' or 'path'"):
        _check_video({"bytes": None, "path": None}, "rgb[0]")


def test_prepare_media_columns_casts_audio_image_and_video(sources, tmp_path):
    data = media_dataset(sources, audio=Audio(sampling_rate=16000))
    data = data.add_column("frames", [[p] for p in sources["files"]["image"]])
    data = data.cast_column("frames", List(Image())).add_column("clips", [[p] for p in sources["files"]["rgb"]])
    data = data.cast_column("clips", List(Video()))
    with pytest.raises(ImportError, match="torchcodec"):  # what the Trainer's data loader would meet
        data[0]
    prepared = prepare_media_columns(DatasetDict(train=data, test=data.select([0])))
    assert isinstance(prepared, DatasetDict) and list(prepared) == ["train", "test"]
    features = prepared["train"].features
    assert features["audio"] == Audio(sampling_rate=16000, decode=False) and features["rgb"] == Video(decode=False)
    # Images too: DMIL decodes them, naming the column, row and file of a broken one.
    assert features["image"] == Image(decode=False) and features["frames"] == List(Image(decode=False))
    assert features["clips"] == List(Video(decode=False))
    assert features["facs"] == List(List(Value("float32"))) and features["label"] == Value("int64")
    row = prepared["test"][0]
    assert set(row["image"]) == {"bytes", "path"} and set(row["clips"][0]) == {"bytes", "path"}
    assert prepare_media_columns(prepared["train"]).features == features  # nothing left to cast
    examples = [{"audio": np.zeros(4)}]
    assert prepare_media_columns(examples) is examples  # not a datasets dataset: unchanged


def test_dmil_trainer_loads_batches_from_audio_and_video_columns(sources, processor, tmp_path):
    """A user's own DMILTrainer on a saved dataset: its data loaders read the media undecoded, with the Trainer's
    default remove_unused_columns=True keeping the raw columns."""
    from dmil_hf import DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments

    data = saved(media_dataset(sources), tmp_path / "ds")
    config = DMILConfig(modality_table=TABLE, num_labels=2, latent_dim=16)
    args = DMILTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=N, use_cpu=True,
                                 report_to=[], save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = DMILTrainer(model=DMILForMultimodalClassification(config), args=args, train_dataset=data,
                          eval_dataset=data, data_collator=DMILDataCollator(processor))
    assert data.features["audio"].decode  # the user's dataset is left as it was
    expected = expected_batch(processor, sources, range(N))
    for loader in (trainer.get_eval_dataloader(), trainer.get_test_dataloader(data)):
        assert_same_batch(next(iter(loader)), expected)
    batch = next(iter(trainer.get_train_dataloader()))  # shuffled
    assert batch["labels"].shape == (N,) and batch["rgb_pixel_values"].shape == (N, 3, 3, 16, 16)


def test_plain_trainer_loads_batches_from_prepared_media_columns(sources, processor, tmp_path):
    from transformers import Trainer, TrainingArguments

    from dmil_hf import DMILForMultimodalClassification

    data = saved(media_dataset(sources), tmp_path / "ds")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_eval_batch_size=N, use_cpu=True,
                             report_to=[], remove_unused_columns=False, dataloader_num_workers=0)
    model = DMILForMultimodalClassification(DMILConfig(modality_table=TABLE, num_labels=2, latent_dim=16))
    trainer = Trainer(model=model, args=args, eval_dataset=prepare_media_columns(data),
                      data_collator=DMILDataCollator(processor))
    assert_same_batch(next(iter(trainer.get_eval_dataloader())), expected_batch(processor, sources, range(N)))


def test_video_column_of_image_frames(sources, processor, tmp_path):
    """A clip stored as a List(Image()) column of frame files: its frames decode with PIL, as images do."""
    paths = sources["files"]["image"]
    data = Dataset.from_dict({"frames": [[paths[i], paths[(i + 1) % N]] for i in range(N)], "label": [0] * N})
    data = saved(data.cast_column("frames", List(Image())), tmp_path / "ds")
    batch = DMILDataCollator(processor, columns={"rgb": "frames"}, allow_missing_modalities=True)([data[0], data[2]])
    images = sources["image"]
    expected = processor(rgb=[[images[0], images[1]], [images[2], images[3]]])
    for key in ("rgb_pixel_values", "rgb_attention_mask"):
        assert torch.equal(batch[key], expected[key]), key


def test_cli_trains_on_a_saved_dataset_with_media_columns(sources, tmp_path):
    from dmil_hf.testing_utils import import_cli

    backbones = {}
    for name, config in (("vision", tiny_vision_config()), ("audio", tiny_audio_config()),
                         ("facs", tiny_feature_encoder_config(feature_dim=FEATURE_DIM))):
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(tmp_path / name)
        backbones[name] = str(tmp_path / name)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(backbones["vision"])
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(backbones["audio"])
    data = media_dataset(sources).rename_column("rgb", "clip")
    DatasetDict(train=data, validation=data.select([1, 2])).save_to_disk(tmp_path / "ds")
    run = import_cli()
    metrics = run.main([
        "--do_train", "--do_eval", "--dataset_name", str(tmp_path / "ds"),
        "--modality", f"vision:image:{backbones['vision']}", f"rgb:video:{backbones['vision']}:2",
        f"audio:audio:{backbones['audio']}", f"facs:features:{backbones['facs']}", "--modality_column_names", "rgb=clip",
        "--latent_dim", "16", "--max_steps", "1", "--per_device_train_batch_size", str(N),
        "--output_dir", str(tmp_path / "out"), "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true",
    ])
    assert sorted(metrics["stages"]) == ["1", "2", "3"] and np.isfinite(metrics["eval_loss"])
    model = AutoModel.from_pretrained(tmp_path / "out" / "final")
    assert model.config.modalities == ["vision", "rgb", "audio", "facs"]
    # The gate's plot ran the collator over the validation split too (DMILTrainer.save_plots).
    assert (tmp_path / "out" / "final" / "plots" / "interaction_weights.png").is_file()


class AudioDecoderStandIn:
    """torchcodec's AudioDecoder as far as DMIL uses it (torchcodec is not installable here): `get_all_samples()`
    returns AudioSamples with `data` (channels, samples) and `sample_rate`."""

    def __init__(self, wave, rate):
        self.samples = types.SimpleNamespace(data=torch.from_numpy(np.stack([wave, wave])), sample_rate=rate)

    def get_all_samples(self):
        return self.samples


class VideoDecoderStandIn:
    """torchcodec's VideoDecoder as far as DMIL uses it: indexing gives frames, (frames, C, H, W) by default."""

    def __init__(self, clip):
        self.frames = torch.from_numpy(clip).permute(0, 3, 1, 2)

    def get_frames_in_range(self, start, stop):  # pragma: no cover - only its presence marks a video decoder
        raise AssertionError("not called")

    def __getitem__(self, key):
        return self.frames[key]


def test_collator_takes_torchcodec_decoded_values(sources, processor):
    """Where torchcodec is installed, a decoding Audio()/Video() column gives decoder objects: their samples and frames
    are the same as the files'."""
    examples = [{"image": sources["image"][i], "rgb": VideoDecoderStandIn(sources["rgb"][i]),
                 "audio": AudioDecoderStandIn(sources["audio"][i], RATE), "facs": sources["facs"][i],
                 "label": i % 2} for i in (1, 3)]
    assert_same_batch(DMILDataCollator(processor)(examples), expected_batch(processor, sources, (1, 3)))
