"""Tiny, randomly initialised backbone configs (hidden 32, 2 layers) for tests, the built-in benchmark and the
CPU speed preset, one per supported family, plus matching random inputs. Nothing here touches the network."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    ASTConfig,
    BertConfig,
    CLIPVisionConfig,
    Dinov2Config,
    HubertConfig,
    PretrainedConfig,
    RobertaConfig,
    ViTConfig,
    Wav2Vec2Config,
    WhisperConfig,
)

_LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
# wav2vec2-style feature encoder with a total stride of 20 (1600 samples -> 79 frames); SpecAugment off because it
# fails on very short clips in train mode; layer-norm features (as in wav2vec2-large-lv60) so that padding a clip
# does not change its features, which group norm over the whole padded clip would.
_CONV = dict(
    feat_extract_norm="layer",
    conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2, mask_time_prob=0.0,
)

TEXT_FAMILIES = ("bert", "roberta")
VISION_FAMILIES = ("vit", "clip_vision_model", "dinov2")
AUDIO_FAMILIES = ("wav2vec2", "hubert", "audio-spectrogram-transformer", "whisper")


def tiny_text_config(family: str = "bert", vocab_size: int = 99, max_length: int = 64) -> PretrainedConfig:
    cls = {"bert": BertConfig, "roberta": RobertaConfig}[family]
    extra = {"pad_token_id": 1} if family == "roberta" else {}
    return cls(vocab_size=vocab_size, max_position_embeddings=max_length + 2, **_LAYERS, **extra)


def tiny_vision_config(family: str = "vit", image_size: int = 16, patch_size: int = 4) -> PretrainedConfig:
    if family == "vit":
        return ViTConfig(image_size=image_size, patch_size=patch_size, **_LAYERS)
    if family == "clip_vision_model":
        return CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **_LAYERS)
    if family == "dinov2":
        layers = {k: v for k, v in _LAYERS.items() if k != "intermediate_size"}
        return Dinov2Config(image_size=image_size, patch_size=patch_size, mlp_ratio=1, **layers)
    raise ValueError(f"unknown tiny vision family {family!r}; choose from {VISION_FAMILIES}")


def tiny_audio_config(family: str = "wav2vec2") -> PretrainedConfig:
    if family == "wav2vec2":
        return Wav2Vec2Config(**_LAYERS, **_CONV)
    if family == "hubert":
        return HubertConfig(**_LAYERS, **_CONV)
    if family == "audio-spectrogram-transformer":
        return ASTConfig(num_mel_bins=16, max_length=32, patch_size=8, frequency_stride=8, time_stride=8, **_LAYERS)
    if family == "whisper":
        return WhisperConfig(
            d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=37, decoder_layers=1,
            decoder_attention_heads=4, decoder_ffn_dim=37, num_mel_bins=16, max_source_positions=25, vocab_size=99,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        )
    raise ValueError(f"unknown tiny audio family {family!r}; choose from {AUDIO_FAMILIES}")


def tiny_feature_encoder_config(feature_dim: int = 6, num_hidden_layers: int = 1) -> PretrainedConfig:
    """dmil_hf's encoder of pre-extracted features, hidden 32 (a projection plus `num_hidden_layers` layers)."""
    from .models.dmil.feature_encoder_dmil import DMILFeatureEncoderConfig

    return DMILFeatureEncoderConfig(
        feature_dim=feature_dim, hidden_size=32, num_hidden_layers=num_hidden_layers, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64,
    )


def tiny_video_config(num_frames: int = 4, image_size: int = 16) -> PretrainedConfig:
    """A tiny VideoMAE (clips of exactly `num_frames` frames)."""
    from transformers import VideoMAEConfig

    return VideoMAEConfig(image_size=image_size, patch_size=8, num_frames=num_frames, tubelet_size=2, **_LAYERS)


def _tiny_text(model_type: str) -> PretrainedConfig:
    from transformers import DebertaV2Config, DistilBertConfig, XLMRobertaConfig

    if model_type == "xlm-roberta":
        return XLMRobertaConfig(vocab_size=99, max_position_embeddings=66, pad_token_id=1, **_LAYERS)
    if model_type == "distilbert":
        return DistilBertConfig(vocab_size=99, max_position_embeddings=64, dim=32, n_layers=2, n_heads=4, hidden_dim=37)
    return DebertaV2Config(vocab_size=99, max_position_embeddings=64, **_LAYERS)


def _tiny_image(model_type: str) -> PretrainedConfig:
    from transformers import DeiTConfig, SiglipVisionConfig

    cls = {"deit": DeiTConfig, "siglip_vision_model": SiglipVisionConfig}[model_type]
    return cls(image_size=16, patch_size=4, **_LAYERS)


def _tiny_wavlm(model_type: str) -> PretrainedConfig:
    from transformers import WavLMConfig

    return WavLMConfig(num_buckets=8, max_bucket_distance=16, **_LAYERS, **_CONV)


# model_type -> (modality kind, tiny config builder): one entry per family of `backbones_dmil.BACKBONES`, so that a
# test can run every family the table describes (tests/training/test_lora.py checks that nothing in the table lacks one).
TINY_BACKBONES: dict[str, tuple[str, Callable[[str], PretrainedConfig]]] = {
    **{family: ("text", tiny_text_config) for family in TEXT_FAMILIES},
    **{family: ("text", _tiny_text) for family in ("xlm-roberta", "distilbert", "deberta-v2")},
    **{family: ("image", tiny_vision_config) for family in VISION_FAMILIES},
    **{family: ("image", _tiny_image) for family in ("deit", "siglip_vision_model")},
    "videomae": ("video", lambda model_type: tiny_video_config()),
    **{family: ("audio", tiny_audio_config) for family in AUDIO_FAMILIES},
    "wavlm": ("audio", _tiny_wavlm),
    "dmil_feature_encoder": ("features", lambda model_type: tiny_feature_encoder_config(num_hidden_layers=2)),
}


def tiny_backbone_config(model_type: str) -> tuple[str, PretrainedConfig]:
    """The modality kind and a tiny random config (hidden 32, 2 layers) of any family in the backbone table."""
    if model_type not in TINY_BACKBONES:
        raise ValueError(f"no tiny config for {model_type!r}; choose from {sorted(TINY_BACKBONES)}")
    kind, build = TINY_BACKBONES[model_type]
    return kind, build(model_type)


def random_inputs(
    config, batch_size: int = 4, seq_len: int = 8, num_samples: int = 1600, seed: int = 0, num_frames: int = 3,
) -> dict:
    """Random model inputs for every modality of a `DMILConfig`, with labels, named as the model takes them."""
    from .models.dmil.modalities_dmil import input_names

    g = torch.Generator().manual_seed(seed)
    inputs = {"labels": torch.randint(0, config.num_labels, (batch_size,), generator=g)}
    for row in config.modality_specs:
        c, prefix = row.backbone, "" if row.is_legacy_slot else f"{row.name}_"
        if row.kind == "text":
            inputs[prefix + "input_ids"] = torch.randint(3, c.vocab_size, (batch_size, seq_len), generator=g)
            inputs[prefix + "attention_mask"] = torch.ones(batch_size, seq_len, dtype=torch.long)
        elif row.kind == "image":
            inputs[prefix + "pixel_values"] = torch.randn(batch_size, c.num_channels, c.image_size, c.image_size, generator=g)
        elif row.kind == "video":
            frames = row.num_frames or num_frames
            inputs[prefix + "pixel_values"] = torch.randn(
                batch_size, frames, c.num_channels, c.image_size, c.image_size, generator=g
            )
            inputs[prefix + "attention_mask"] = torch.ones(batch_size, frames, dtype=torch.long)
        elif row.kind == "features":
            inputs[prefix + "input_features"] = torch.randn(batch_size, seq_len, c.feature_dim, generator=g)
            inputs[prefix + "attention_mask"] = torch.ones(batch_size, seq_len, dtype=torch.long)
        elif c.model_type == "audio-spectrogram-transformer":
            inputs[prefix + "input_features"] = torch.randn(batch_size, c.max_length, c.num_mel_bins, generator=g)
        elif c.model_type == "whisper":
            inputs[prefix + "input_features"] = torch.randn(
                batch_size, c.num_mel_bins, 2 * c.max_source_positions, generator=g
            )
        else:
            inputs[input_names(row).main] = torch.randn(batch_size, num_samples, generator=g)
    return inputs


def save_tiny_backbones(folder: str, modalities: tuple[str, ...] = ("text", "vision", "audio"), seed: int = 0) -> dict:
    """Save tiny random backbones with their processors under `folder/<modality>`, as a pretrained checkpoint would
    be, and return the paths: stand-ins for Hub backbones in offline examples and tests. They are shaped like the
    families they stand for (`standin_backbone_configs`): a BERT with 512 positions and a 20-token WordPiece
    tokenizer (15 words and 5 special tokens, `model_max_length` 512), a ViT with 16-pixel patches and a 224 x 224
    image processor, a wav2vec2 with wav2vec2-base's feature encoder (50 frames a second at 16 kHz) and its feature
    extractor; only their width and depth are tiny."""
    import os

    from transformers import AutoModel, BertTokenizer, ViTImageProcessorPil, Wav2Vec2FeatureExtractor

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *STANDIN_WORDS]
    configs = standin_backbone_configs(vocab_size=len(tokens))
    paths = {}
    for modality in modalities:
        path = os.path.join(folder, modality)
        torch.manual_seed(seed)
        AutoModel.from_config(configs[modality]).save_pretrained(path)
        if modality == "text":
            # The vocabulary as a dict: transformers 5's BertTokenizer ignores `vocab_file=` (it would keep its five
            # special tokens and map every word to [UNK]).
            BertTokenizer(vocab={token: i for i, token in enumerate(tokens)},
                          model_max_length=STANDIN_TEXT_LENGTH).save_pretrained(path)
        elif modality == "vision":
            size = configs["vision"].image_size
            ViTImageProcessorPil(size={"height": size, "width": size}).save_pretrained(path)
        else:
            Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(path)
        paths[modality] = path
    return paths


# The stand-in tokenizer's words (`save_tiny_backbones`): those of `write_example_dataset` and the README's examples.
STANDIN_WORDS = ["red", "green", "blue", "loud", "quiet", "cat", "dog", "bird", "a", "the", "is", "and", "on", "in",
                 "big"]
# bert-base-uncased's positions and tokenizer limit.
STANDIN_TEXT_LENGTH = 512
# wav2vec2-base's feature encoder (also HuBERT's and WavLM's): seven convolutions with a total stride of 320 samples,
# one frame per 20 ms at 16 kHz, and a receptive field of 400 samples (25 ms).
WAV2VEC2_BASE_CONV = dict(conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                          num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)


def standin_backbone_configs(vocab_size: int = 20) -> dict[str, PretrainedConfig]:
    """The configs of `save_tiny_backbones`' stand-ins: random, width 32 and 2 layers as the unit tests' tiny
    configs, but shaped like the Hub backbones the README names (bert-base-uncased, vit-base-patch16-224,
    wav2vec2-base), so that an input gives the sequence lengths the real backbone would give it and a step costs
    what those lengths cost: BERT's 512 positions; ViT's 16-pixel patches on 224 x 224 images (196 patches and the
    [CLS] token); wav2vec2-base's convolutions, stride 320 (a one-second clip gives 49 frames, where the unit tests'
    `tiny_audio_config`, stride 20, gives 799 and spends a step's time in attention over them).

    Differences from the real configs, and why: the audio feature encoder normalises with layer norm (as
    wav2vec2-large-lv60) so that padding a clip does not change its features, which group norm over the whole
    padded clip would; SpecAugment is off because its masks are longer than a short clip."""
    return {
        "text": BertConfig(vocab_size=vocab_size, max_position_embeddings=STANDIN_TEXT_LENGTH, **_LAYERS),
        "vision": ViTConfig(image_size=224, patch_size=16, **_LAYERS),
        "audio": Wav2Vec2Config(**_LAYERS, feat_extract_norm="layer", conv_dim=(32,) * 7, **WAV2VEC2_BASE_CONV,
                                mask_time_prob=0.0),
    }


# The example dataset's classes, each with the word, colour and tone that show it (`write_example_dataset`).
EXAMPLE_CLASSES = {"cat": ("cat", (220, 40, 40), 300.0), "dog": ("dog", (40, 200, 40), 900.0),
                   "bird": ("bird", (40, 40, 220), 2000.0)}


def write_example_dataset(
    folder: str, num_rows: int = 60, seed: int = 0, sampling_rate: int = 16000, clip_seconds: float = 0.1,
) -> dict:
    """Write a small dataset of your-own-data shape under `folder`: `train.csv` and `validation.csv` with a sentence
    (`text`), a PNG path (`image_path`), a WAV path (`wav_path`) and a string label (`label`: cat, dog or bird), the
    files under `folder/media/`. Returns the csv paths.

    Each row shows its label in one, two or all three modalities (the label's word, colour, tone); a modality that
    does not is neutral (a sentence without a class word, a grey image, a noise clip), so that the rows mix
    redundant and unique evidence and no single modality gets every row right. `num_rows` go to training and a
    third as many, drawn the same way, to validation. The clips last `clip_seconds` (0.1 s: 4 frames of a
    wav2vec2-shaped backbone; a longer clip costs what your own recordings would)."""
    import csv
    import os

    import numpy as np
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(seed)
    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    names = list(EXAMPLE_CLASSES)
    fillers = ["a", "the", "big", "is", "on", "in", "and"]
    t = np.arange(int(clip_seconds * sampling_rate)) / sampling_rate
    paths = {}
    for split, rows in (("train", num_rows), ("validation", max(3, num_rows // 3))):
        records = []
        for i in range(rows):
            label = names[i % len(names)]
            word, colour, tone = EXAMPLE_CLASSES[label]
            shows = rng.random(3) < 0.6
            if not shows.any():
                shows[rng.integers(3)] = True
            filler = list(rng.choice(fillers, size=3))
            text = " ".join([*filler[:2], word, filler[2]] if shows[0] else filler)
            pixel = np.array(colour if shows[1] else (128, 128, 128), dtype=np.float32)
            image = np.clip(pixel + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            wave = 0.3 * np.sin(2 * np.pi * tone * t) if shows[2] else np.zeros_like(t)
            wave = (wave + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
            image_path = os.path.join(media, f"{split}-{i}.png")
            wav_path = os.path.join(media, f"{split}-{i}.wav")
            Image.fromarray(image).save(image_path)
            soundfile.write(wav_path, wave, sampling_rate)
            records.append({"text": text, "image_path": image_path, "wav_path": wav_path, "label": label})
        paths[split] = os.path.join(folder, f"{split}.csv")
        with open(paths[split], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared by the test suite (tests/<area>/test_*.py): no test module imports another, so what several of them
# build (a tiny DMIL config, a tiny processor, a short DMILTrainer run, the CLI script) lives here. dmil_hf's own
# modules are imported inside the functions: testing_utils is imported by dmil_hf.data, below the model and trainer.

from transformers import TrainerCallback  # noqa: E402


def tiny_dmil_config(
    modalities: tuple[str, ...] = ("text", "vision", "audio"),
    paradigm: str = "dmil",
    num_labels: int = 3,
    latent_dim: int = 16,
    **kwargs,
):
    """A DMILConfig over tiny BERT / ViT / wav2vec2 backbones (override a family with text="roberta" etc.)."""
    from .models.dmil.configuration_dmil import DMILConfig

    defaults = {"text": "bert", "vision": "vit", "audio": "wav2vec2"}
    families = {m: kwargs.pop(m, family) for m, family in defaults.items()}
    builders = {"text": tiny_text_config, "vision": tiny_vision_config, "audio": tiny_audio_config}
    sub = {f"{m}_config": builders[m](families[m]) for m in modalities}
    return DMILConfig(**sub, paradigm=paradigm, num_labels=num_labels, latent_dim=latent_dim, **kwargs)


# Put first in a subprocess script that must work from saved remote code alone: dmil_hf may be installed (editable) in
# the test environment, so the script blocks the name on sys.meta_path and proves that the import fails.
BLOCK_DMIL_HF = """
import sys as _sys


class _BlockDmilHf:
    def find_spec(self, name, path=None, target=None):
        if name == "dmil_hf" or name.startswith("dmil_hf."):
            raise ImportError(f"{name} is blocked: this process must work from saved remote code alone")


_sys.meta_path.insert(0, _BlockDmilHf())
try:
    import dmil_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("dmil_hf is importable here: the test would prove nothing")
"""


def tiny_tokenizer(
    folder, words: tuple[str, ...] = ("a", "the", "cat", "dog", "bird", "sings"), model_max_length: int = 64
):
    """A WordPiece BertTokenizer over five special tokens and `words`, its vocabulary written to `folder/vocab.txt`."""
    import os

    from transformers import BertTokenizer

    vocab = os.path.join(folder, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # BertTokenizer(vocab_file=...) silently ignores the file on transformers 5 (5 special tokens only); vocab= reads
    # it.
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def tiny_image_processor():
    """A ViT image processor to 16 x 16 pixels, the size of `tiny_vision_config`."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": 16, "width": 16})


def tiny_feature_extractor(return_attention_mask: bool = True):
    """A wav2vec2 feature extractor; the attention mask keeps padded audio out of the pooled features."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(return_attention_mask=return_attention_mask)


def tiny_processor(tokenizer, modalities: tuple[str, ...] = ("text", "vision", "audio")):
    """A DMILProcessor over `tokenizer` and the tiny image processor and feature extractor, for `modalities`."""
    from .models.dmil.processing_dmil import DMILProcessor

    return DMILProcessor(
        tokenizer=tokenizer if "text" in modalities else None,
        image_processor=tiny_image_processor() if "vision" in modalities else None,
        feature_extractor=tiny_feature_extractor() if "audio" in modalities else None,
    )


TINY_LABELS = {0: "cat", 1: "dog", 2: "bird"}


def tiny_model_and_processor(folder, modalities: tuple[str, ...], paradigm: str = "dmil"):
    """A tiny DMIL model labelled cat / dog / bird and its processor (the tokenizer's vocabulary written to
    `folder`)."""
    from .models.dmil.modeling_dmil import DMILForMultimodalClassification

    torch.manual_seed(0)
    config = tiny_dmil_config(
        modalities, paradigm=paradigm, id2label=TINY_LABELS, label2id={v: k for k, v in TINY_LABELS.items()}
    )
    if "audio" in modalities:
        # Layer-norm feature encoder, as in the wav2vec2 checkpoints that use an attention mask: the group-norm one
        # (wav2vec2-base) normalises over padded samples too, so its outputs depend on the batch's padding.
        config.audio_config.feat_extract_norm = "layer"
    model = DMILForMultimodalClassification(config)
    return model, tiny_processor(tiny_tokenizer(folder) if "text" in modalities else None, modalities)


def tiny_training_dataset(n: int = 16, seed: int = 0, num_labels: int = 3):
    """`n` random text + vision rows (input_ids, pixel_values, labels) for the tiny backbones, as a
    `datasets.Dataset`."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({
        "input_ids": torch.randint(3, 99, (n, 6), generator=g).tolist(),
        "pixel_values": torch.randn(n, 3, 16, 16, generator=g).tolist(),
        "labels": torch.randint(0, num_labels, (n,), generator=g).tolist(),
    })


def tiny_training_arguments(tmp_path, **kwargs):
    """DMILTrainingArguments for a short CPU run in `tmp_path/run`: 2 steps a stage, no saving, no reporting, LoRA in
    stage 3; `kwargs` override."""
    from .training.trainer import DMILTrainingArguments

    defaults = dict(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0, stage2_learning_rate=1e-2,
        stage3_learning_rate=1e-2, dataloader_num_workers=0, finetune_method="lora",
    )
    defaults.update(kwargs)
    return DMILTrainingArguments(**defaults)


def tiny_two_modality_model(**kwargs):
    """A seeded DMILForMultimodalClassification over tiny text + vision backbones (`kwargs` go to the config)."""
    from .models.dmil.modeling_dmil import DMILForMultimodalClassification

    torch.manual_seed(0)
    return DMILForMultimodalClassification(tiny_dmil_config(("text", "vision"), **kwargs))


class TrainingInterrupted(Exception):
    """Raised by `InterruptAt`: a stand-in for a crash or Ctrl-C in the middle of a stage."""


class InterruptAt(TrainerCallback):
    """Raise `TrainingInterrupted` at the end of optimizer step `step` of stage `stage`. `trainer_ref` is a one-item
    list holding the trainer (filled in after the trainer is built, since the callback is passed to it)."""

    def __init__(self, trainer_ref: list, stage: int, step: int):
        self.trainer_ref, self.stage, self.step = trainer_ref, stage, step

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer_ref[0].stage == self.stage and state.global_step == self.step:
            raise TrainingInterrupted


def repo_root() -> str:
    """The source checkout this dmil_hf was imported from (the folder holding `training/run.py`)."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "training", "run.py")):
        raise FileNotFoundError(
            f"{root} is not a dmil_hf source checkout (no training/run.py): the CLI ships with the repository"
        )
    return root


def import_cli():
    """The CLI module `training/run.py` (a script, not part of the package), imported in-process."""
    import os
    import sys

    sys.path.insert(0, os.path.join(repo_root(), "training"))
    try:
        import run
    finally:
        sys.path.pop(0)
    return run


def run_cli(args: list[str], tmp_path, launcher: tuple[str, ...] = (), timeout: int = 400) -> str:
    """Run `training/run.py args` in a subprocess (offline, in `tmp_path`, with its own HF_HOME), through `launcher`
    (e.g. `accelerate launch ...`) if given; assert it succeeds and return its stdout."""
    import os
    import subprocess
    import sys

    repo = repo_root()
    script = os.path.join(repo, "training", "run.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": repo, "HF_HOME": str(tmp_path / "hf_home")}
    cmd = [*launcher, script, *args] if launcher else [sys.executable, script, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def write_user_dataset(tmp_path) -> dict:
    """Locally saved 'pretrained' tiny backbones with their processors under `tmp_path/<modality>`, and
    `tmp_path/train.csv` of text, image paths, wav paths and an `emotion` label (happy / sad); returns the backbone
    paths."""
    import numpy as np
    import soundfile as sf
    from PIL import Image
    from transformers import AutoModel, BertTokenizer, ViTImageProcessorPil, Wav2Vec2FeatureExtractor

    config = tiny_dmil_config(("text", "vision", "audio"))
    words = ["red", "green", "blue", "loud", "quiet", "cat"]
    backbones = {}
    for modality in ("text", "vision", "audio"):
        folder = tmp_path / modality
        torch.manual_seed(0)
        AutoModel.from_config(config.backbone_config(modality)).save_pretrained(folder)
        backbones[modality] = str(folder)
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(backbones["text"])
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(backbones["vision"])
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(backbones["audio"])
    rng = np.random.default_rng(0)
    rows = ["text,image,audio,emotion"]
    for i in range(24):
        label = ["happy", "sad"][i % 2]
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
        sf.write(tmp_path / f"clip{i}.wav", rng.standard_normal(800 + 40 * i).astype("float32") * 0.1, 8000)
        image, clip = tmp_path / f"img{i}.png", tmp_path / f"clip{i}.wav"
        rows.append(f"{words[i % 6]} {words[(i + 1) % 6]},{image},{clip},{label}")
    (tmp_path / "train.csv").write_text("\n".join(rows))
    return backbones
