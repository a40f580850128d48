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
# test can run every family the table describes (tests/test_lora.py checks that nothing in the table lacks one).
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
