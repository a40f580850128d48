"""Synthetic interaction benchmark in native modalities, with a known interaction type per sample.

Every sample has a label ``y`` in ``{0..C-1}`` and shows each of its modalities (any two or three of text, vision and
audio) as a model-ready input. Each modality encodes two *slots*:

* slot A, **direct evidence**: a class value in ``{0..C-1}``, or *blank* (no value at all);
* slot B, a **synergy share**: a class value in ``{0..C-1}``, always present.

The interaction type of a sample decides what the slots hold:

* ``"R"`` (redundancy): every modality's slot A is ``y``; every slot B is uniform noise. Any one modality suffices.
* ``"U_<m>"`` (uniqueness of modality m): slot A of m is ``y``, slot A of every other modality is blank; every slot B
  is uniform noise. Only m carries the label; the other modalities carry *no* information about it.
* ``"S"`` (synergy): every slot A is blank; the slot-B values ``b_1..b_K`` are uniform with
  ``y = (b_1 + ... + b_K) mod C`` (the first K-1 drawn uniformly, the last one solving the equation). Any K-1 of
  them, and a fortiori any single modality, is independent of ``y``; all of them together determine it.

Labels are uniform and independent of the type, and the type shows only in the *pattern* of blanks, so no modality
leaks the label through the type.

``task="regression"`` turns the same samples into a regression with the same known types: the target is the class
value as a number, centred and scaled to [-1, 1], ``t = (2 y - (C - 1)) / (C - 1)``, plus Gaussian noise of std
``target_noise``. R, U and S keep their meaning: one modality's slot A determines t (R, U_m), or only the slot-B
shares together do (S, through the sum modulo C, so that no single modality's value correlates with t). ``labels``
then holds the float32 targets and ``label_value`` the class value y behind each.

Encodings (amplitude of every signal 1):

* **text** (``input_ids``, ``attention_mask``): ``[CLS] t_1 .. t_L [SEP]`` with ids 1 = CLS, 2 = SEP (0 is kept
  for padding and never used: all sequences have ``seq_length`` tokens). Slot A value v is the token ``3 + v``, slot B
  value v the token ``3 + C + v``; both sit at random distinct positions among filler tokens drawn uniformly from
  the ``num_filler_tokens`` ids after them. A blank slot A is simply one more filler token. Text noise p replaces each
  content token, with probability p, by a uniform slot or filler token (so it can erase a slot or add a spurious one).
* **vision** (``pixel_values``, ``3 x S x S``): a value v is a *texture*, the (v+1)-th 2-D DCT basis pattern of a
  ``vision_tile_size`` tile (4 x 4: up to 15 classes), tiled over a square of half the image side at a random
  tile-aligned position; slot A is drawn in channel 0, slot B in channel 1, channel 2 carries no signal; i.i.d.
  Gaussian noise of std ``noise`` on every pixel. Values are coded by content rather than by location on purpose:
  a randomly initialised ViT's position embeddings are near zero, so a location code is invisible to it at first
  (a linear probe on its features reads a location-coded value at chance, a texture-coded one at ~99%).
* **audio** (``input_values``, ``num_audio_samples`` at ``sampling_rate``): slot A value v is a sine at the v-th of
  C frequencies spread over 5%-45% of the Nyquist band (400-3600 Hz at 16 kHz), slot B value v a sine at the v-th
  of C frequencies over 55%-95% (4400-7600 Hz), each with a random phase; plus Gaussian noise of std ``noise``. The
  waveform is then normalised to zero mean and unit variance, as `Wav2Vec2FeatureExtractor` does.

Knobs (all in [`SyntheticInteractionSpec`]):

* ``mixture``: proportions over types, a name from ``MIXTURES`` or a dict; the key ``"U"`` is shorthand for an even
  split over ``U_<m>`` for every modality. Counts are exact (largest remainder), then shuffled.
* ``noise``: signal noise per modality (a float for all, or a dict), see the encodings.
* ``flip``: per-modality probability that a *shown* slot-A value is replaced by a uniform random class (evidence that
  is sometimes wrong). A blank stays blank; slot B is never flipped, so synergy stays exactly solvable.
* ``dominant_modality`` / ``dominance``: every *other* modality gets ``flip = max(flip, dominance)``. The dominant
  modality's evidence is then cleaner than the others', the setting in which joint training leans on it and
  under-uses the redundant evidence of the weaker modalities.

Output: a `datasets.Dataset` whose model columns (``input_ids``, ``attention_mask``, ``pixel_values``,
``input_values``, ``labels``, those of the configured modalities) come out as torch tensors, so the default collator
and the Trainer batch it as is; ``interaction_type`` and the ground-truth slots (``slot_a_<m>``, -1 for blank, and
``slot_b_<m>``) stay readable (``ds["interaction_type"]``) and are dropped by the Trainer's ``remove_unused_columns``.
The spec is stored in ``ds.info.description``. Thousands of samples take well under a second and depend only on the
seed.

Learnability with the tiny random backbones of [`tiny_config_for`] (hidden 32, 2 layers, checked on CPU): at
initialisation a linear probe on each backbone's pooled features already reads every slot (>= 99%), ensemble and
joint models reach the R/U ceilings within a few hundred steps of batch 32, and a two-modality synergy (a sum mod 4)
is partly learned by the joint model after ~1000-1500 steps. A three-modality synergy is much harder (64 share
combinations, no first-order signal at all) and is not learned within such budgets.

[`corrupt`] destroys one modality's information at test time (for robustness: accuracy on R samples with the dominant
modality corrupted); [`decode_slots`] reads the slots back from the encoded inputs, which the tests use to check the
defining properties on what the model actually sees; [`tiny_config_for`] returns a `DMILConfig` whose tiny random
backbones fit the generated inputs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
from datasets import Array2D, Array3D, Dataset, DatasetDict, DatasetInfo, Features, List, Value
from datasets.features.features import Array2DExtensionType, Array3DExtensionType

from ..models.dmil.backbones_dmil import MODALITIES
from ..models.dmil.configuration_dmil import DMILConfig
from ..testing_utils import tiny_audio_config, tiny_text_config, tiny_vision_config

PAD_TOKEN_ID, CLS_TOKEN_ID, SEP_TOKEN_ID = 0, 1, 2
_FIRST_CONTENT_ID = 3

# Columns the model consumes, per modality; `labels` is added to every dataset.
MODEL_INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("input_ids", "attention_mask"),
    "vision": ("pixel_values",),
    "audio": ("input_values",),
}

MIXTURES: dict[str, dict[str, float]] = {
    # The paper's Fig. 1 setting: half the samples answerable by one modality only, half by any modality.
    "half_U_half_R": {"U": 0.5, "R": 0.5},
    "redundancy_heavy": {"U": 0.25, "R": 0.75},
    # Synergy dominates: the ensemble cannot exceed chance on 60% of the samples.
    "synergy_heavy": {"S": 0.6, "R": 0.2, "U": 0.2},
    "balanced": {"R": 1 / 3, "U": 1 / 3, "S": 1 / 3},
}

DEFAULT_NOISE: dict[str, float] = {"text": 0.0, "vision": 0.5, "audio": 0.5}

TASKS = ("classification", "regression")

_AUDIO_BANDS = {"a": (0.05, 0.45), "b": (0.55, 0.95)}  # fractions of the Nyquist frequency


def interaction_types_for(modalities: Sequence[str]) -> list[str]:
    """The interaction types of a modality set, in reporting order: ``["R", "U_<m>"..., "S"]``."""
    return ["R", *[f"U_{m}" for m in _ordered(modalities)], "S"]


def _ordered(modalities: Sequence[str]) -> list[str]:
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must not repeat, got {list(modalities)}")
    return [m for m in MODALITIES if m in modalities]


def _per_modality(
    value: float | Mapping[str, float], modalities: Sequence[str], default: Mapping[str, float], name: str
) -> dict[str, float]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(MODALITIES)
        if unknown:
            raise ValueError(f"{name} has keys {sorted(unknown)} that are not modalities {MODALITIES}")
        out = {m: float(value.get(m, default.get(m, 0.0))) for m in modalities}
    else:
        out = {m: float(value) for m in modalities}
    if any(v < 0 for v in out.values()):
        raise ValueError(f"{name} must be non-negative, got {out}")
    return out


@dataclass
class SyntheticInteractionSpec:
    r"""Everything that defines a synthetic interaction benchmark except the sample count and the seed.

    Args:
        modalities: two or three of ``"text"``, ``"vision"``, ``"audio"`` (kept in that order).
        num_labels: number of classes C (2-16 with the default sizes).
        mixture: a name in `MIXTURES` or a dict ``{type: proportion}`` over ``"R"``, ``"S"``, ``"U"`` (even split over
            modalities) and ``"U_<m>"``; proportions are normalised.
        noise: signal noise, a float for every modality or a dict per modality (missing entries take
            `DEFAULT_NOISE`): Gaussian std for vision and audio, token-substitution probability for text.
        flip: probability that a shown slot-A value is replaced by a uniform random class (float or dict).
        dominant_modality: if set, every other modality's flip probability is raised to at least `dominance`.
        dominance: the weaker modalities' minimum flip probability when `dominant_modality` is set.
        seq_length: text length including [CLS] and [SEP].
        vocab_size: text vocabulary size (must hold 3 special, 2C slot and `num_filler_tokens` filler ids).
        num_filler_tokens: how many distinct filler tokens surround the slots. Few fillers keep the slot tokens
            readable from a random BERT's mean-pooled features (16: a linear probe reads them perfectly; 88: ~73%).
        image_size: height and width of the images (a multiple of the tiny ViT's patch size 4).
        vision_tile_size: side of the DCT texture tiles (num_labels <= vision_tile_size**2 - 1).
        num_audio_samples: waveform length; sampling_rate: its rate in Hz.
        task: ``"classification"`` (labels are the class ids y) or ``"regression"`` (labels are y scaled to [-1, 1]
            plus noise; see the module docstring).
        target_noise: std of the Gaussian noise on a regression target (0: the target is a function of the slots).

    Example:

    ```python
    >>> from dmil_hf.data import SyntheticInteractionSpec
    >>> spec = SyntheticInteractionSpec(modalities=("text", "vision"), mixture="synergy_heavy")
    >>> ds = spec.generate(100, seed=0)
    >>> sorted(set(ds["interaction_type"]))
    ['R', 'S', 'U_text', 'U_vision']
    >>> ds[0]["pixel_values"].shape
    torch.Size([3, 16, 16])
    ```
    """

    modalities: tuple[str, ...] = ("text", "vision", "audio")
    num_labels: int = 4
    mixture: str | dict[str, float] = "half_U_half_R"
    noise: float | dict[str, float] = field(default_factory=lambda: dict(DEFAULT_NOISE))
    flip: float | dict[str, float] = 0.0
    dominant_modality: str | None = None
    dominance: float = 0.3
    seq_length: int = 16
    vocab_size: int = 99
    num_filler_tokens: int = 16
    image_size: int = 16
    vision_tile_size: int = 4
    num_audio_samples: int = 1600
    sampling_rate: int = 16000
    task: str = "classification"
    target_noise: float = 0.05

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not (self.target_noise >= 0 and math.isfinite(self.target_noise)):
            raise ValueError(f"target_noise must be a finite std >= 0, got {self.target_noise}")
        self.modalities = tuple(_ordered(self.modalities))
        if not 2 <= len(self.modalities) <= 3:
            raise ValueError(f"a benchmark needs two or three modalities, got {list(self.modalities)}")
        if not 2 <= int(self.num_labels):
            raise ValueError(f"num_labels must be at least 2, got {self.num_labels}")
        self.num_labels = int(self.num_labels)
        if self.dominant_modality is not None and self.dominant_modality not in self.modalities:
            raise ValueError(f"dominant_modality {self.dominant_modality!r} is not one of {list(self.modalities)}")
        if not 0.0 <= self.dominance <= 1.0:
            raise ValueError(f"dominance is a probability, got {self.dominance}")
        if "text" in self.modalities:
            needed = _FIRST_CONTENT_ID + 2 * self.num_labels + self.num_filler_tokens
            if self.num_filler_tokens < 1 or self.vocab_size < needed:
                raise ValueError(
                    f"vocab_size={self.vocab_size} is too small: it needs 3 special + 2 x {self.num_labels} slot + "
                    f"num_filler_tokens={self.num_filler_tokens} (>= 1) filler ids = {needed}"
                )
            if self.seq_length < 4:
                raise ValueError(f"seq_length must be at least 4 ([CLS], two slots, [SEP]), got {self.seq_length}")
        if "vision" in self.modalities:
            if self.num_labels > self.vision_tile_size**2 - 1:
                raise ValueError(
                    f"vision codes classes as {self.vision_tile_size}x{self.vision_tile_size} DCT textures: at most "
                    f"{self.vision_tile_size**2 - 1} classes; raise vision_tile_size for num_labels={self.num_labels}"
                )
            if self.image_size < self.vision_tile_size:
                raise ValueError(
                    f"image_size={self.image_size} is smaller than vision_tile_size={self.vision_tile_size}"
                )
        if "audio" in self.modalities and self.num_audio_samples < 64:
            raise ValueError(f"num_audio_samples must be at least 64, got {self.num_audio_samples}")
        self.resolved_mixture()  # validate early
        for name in ("noise", "flip"):
            _per_modality(getattr(self, name), self.modalities, DEFAULT_NOISE if name == "noise" else {}, name)

    # ------------------------------------------------------------------ derived settings

    @property
    def interaction_types(self) -> list[str]:
        return interaction_types_for(self.modalities)

    def resolved_mixture(self) -> dict[str, float]:
        """The mixture as normalised proportions over the concrete types of `interaction_types`."""
        if isinstance(self.mixture, str):
            if self.mixture not in MIXTURES:
                raise ValueError(f"unknown mixture {self.mixture!r}; named mixtures: {sorted(MIXTURES)}")
            raw = MIXTURES[self.mixture]
        else:
            raw = dict(self.mixture)
        out = {t: 0.0 for t in self.interaction_types}
        for key, weight in raw.items():
            weight = float(weight)
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"mixture proportions must be finite and non-negative, got {key!r}: {weight}")
            if key == "U":
                for m in self.modalities:
                    out[f"U_{m}"] += weight / len(self.modalities)
            elif key in out:
                out[key] += weight
            else:
                raise ValueError(
                    f"mixture key {key!r} is not a type of this benchmark ({self.interaction_types} or 'U')"
                )
        total = sum(out.values())
        if total <= 0:
            raise ValueError("mixture proportions sum to zero")
        return {t: w / total for t, w in out.items()}

    def noise_for(self, modality: str) -> float:
        return _per_modality(self.noise, self.modalities, DEFAULT_NOISE, "noise")[modality]

    def flip_for(self, modality: str) -> float:
        flip = _per_modality(self.flip, self.modalities, {}, "flip")[modality]
        if self.dominant_modality is not None and modality != self.dominant_modality:
            flip = max(flip, self.dominance)
        return min(flip, 1.0)

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "modalities": list(self.modalities)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SyntheticInteractionSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "SyntheticInteractionSpec":
        """The spec a dataset was generated from (stored as JSON in its `info.description`)."""
        try:
            payload = json.loads(dataset.info.description or "")
            return cls.from_dict(payload["synthetic_interaction_spec"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError("this dataset was not made by dmil_hf.data.synthetic (no spec in its info)") from err

    def replace(self, **changes: Any) -> "SyntheticInteractionSpec":
        return replace(self, **changes)

    # ------------------------------------------------------------------ generation

    def generate(self, n_samples: int, seed: int = 0) -> Dataset:
        """`n_samples` samples, deterministic in `seed`, as a torch-formatted `datasets.Dataset`."""
        latents = sample_latents(self, n_samples, seed)
        return _build_dataset(self, latents, _encode_all(self, latents, seed))


# ---------------------------------------------------------------------- latent slots


def _rng(seed: int, stream: str) -> np.random.Generator:
    # One independent stream per purpose: the text of a sample does not change when audio is added or its noise
    # changed, and a corruption's randomness is independent of the generation's.
    return np.random.default_rng([int(seed), sum(ord(c) * 31**i for i, c in enumerate(stream)) % (2**32)])


def _exact_counts(proportions: Sequence[float], n: int) -> np.ndarray:
    raw = np.asarray(proportions, dtype=float) * n
    counts = np.floor(raw).astype(int)
    # Largest remainder: the counts sum to n and each is within one of its exact share.
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def sample_latents(spec: SyntheticInteractionSpec, n_samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels, types and slot values (before encoding). Slot A is -1 where blank; values are after flipping.

    Returns a dict with ``labels`` (n,), ``interaction_type`` (n,) strings, ``slot_a`` and ``slot_b`` (n, K) in
    the order of `spec.modalities`.
    """
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    n, k, c = int(n_samples), len(spec.modalities), spec.num_labels
    rng = _rng(seed, "latent")
    mixture = spec.resolved_mixture()
    types = np.repeat(np.array(list(mixture), dtype=object), _exact_counts(list(mixture.values()), n))
    types = types[rng.permutation(n)]
    labels = rng.integers(0, c, n)
    slot_b = rng.integers(0, c, (n, k))
    slot_a = np.full((n, k), -1, dtype=np.int64)
    is_r, is_s = types == "R", types == "S"
    slot_a[is_r] = labels[is_r, None]
    for j, m in enumerate(spec.modalities):
        is_u = types == f"U_{m}"
        slot_a[is_u, j] = labels[is_u]
    # Synergy: the last share solves the equation, so every K-1 shares stay uniform and independent of y.
    slot_b[is_s, -1] = (labels[is_s] - slot_b[is_s, :-1].sum(1)) % c
    flip_draw, flip_value = rng.random((n, k)), rng.integers(0, c, (n, k))
    for j, m in enumerate(spec.modalities):
        flipped = (slot_a[:, j] >= 0) & (flip_draw[:, j] < spec.flip_for(m))
        slot_a[flipped, j] = flip_value[flipped, j]
    latents = {
        "labels": labels.astype(np.int64), "interaction_type": types.astype(str), "slot_a": slot_a, "slot_b": slot_b,
    }
    if spec.task == "regression":
        # Its own stream: a classification and a regression of one seed share every sample and input.
        noise = _rng(seed, "target").standard_normal(n) * spec.target_noise
        latents["targets"] = (regression_target(spec, labels) + noise).astype(np.float32)
    return latents


def regression_target(spec: SyntheticInteractionSpec, values: np.ndarray) -> np.ndarray:
    """The noiseless regression target of class values y: ``(2 y - (C - 1)) / (C - 1)``, in [-1, 1]."""
    c = spec.num_labels
    return (2.0 * np.asarray(values, dtype=np.float64) - (c - 1)) / (c - 1)


# ---------------------------------------------------------------------- encoders


def _audio_frequencies(spec: SyntheticInteractionSpec, slot: str) -> np.ndarray:
    lo, hi = _AUDIO_BANDS[slot]
    nyquist = spec.sampling_rate / 2
    return np.linspace(lo * nyquist, hi * nyquist, spec.num_labels)


def _dct_tile(index: int, tile: int) -> np.ndarray:
    u, v = divmod(index, tile)
    x = (np.arange(tile) + 0.5) * np.pi / tile
    pattern = np.outer(np.cos(u * x), np.cos(v * x))
    return pattern / np.abs(pattern).max()


def _vision_region(spec: SyntheticInteractionSpec) -> int:
    # Half the image side, rounded down to whole tiles (at least one tile).
    return max(spec.image_size // 2 // spec.vision_tile_size, 1) * spec.vision_tile_size


def _vision_textures(spec: SyntheticInteractionSpec) -> np.ndarray:
    """(C, region, region): value v is the (v+1)-th 2-D DCT basis tile (the constant one skipped), tiled."""
    repeats = _vision_region(spec) // spec.vision_tile_size
    tiles = [_dct_tile(v + 1, spec.vision_tile_size) for v in range(spec.num_labels)]
    return np.stack([np.tile(t, (repeats, repeats)) for t in tiles]).astype(np.float32)


def encode_text(
    spec: SyntheticInteractionSpec, slot_a: np.ndarray, slot_b: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n, c, length = len(slot_a), spec.num_labels, spec.seq_length - 2
    first_filler = _FIRST_CONTENT_ID + 2 * c
    content = rng.integers(first_filler, first_filler + spec.num_filler_tokens, (n, length))
    positions = np.argsort(rng.random((n, length)), axis=1)[:, :2]
    rows = np.arange(n)
    content[rows, positions[:, 0]] = np.where(slot_a >= 0, _FIRST_CONTENT_ID + slot_a, content[rows, positions[:, 0]])
    content[rows, positions[:, 1]] = _FIRST_CONTENT_ID + c + slot_b
    substitute = rng.random((n, length)) < spec.noise_for("text")
    content[substitute] = rng.integers(_FIRST_CONTENT_ID, first_filler + spec.num_filler_tokens, int(substitute.sum()))
    ids = np.concatenate([np.full((n, 1), CLS_TOKEN_ID), content, np.full((n, 1), SEP_TOKEN_ID)], axis=1)
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64)}


def encode_vision(
    spec: SyntheticInteractionSpec, slot_a: np.ndarray, slot_b: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n, size, tile = len(slot_a), spec.image_size, spec.vision_tile_size
    region = _vision_region(spec)
    images = rng.standard_normal((n, 3, size, size), dtype=np.float32) * np.float32(spec.noise_for("vision"))
    textures = _vision_textures(spec)
    positions = rng.integers(0, (size - region) // tile + 1, (n, 2, 2)) * tile
    for channel, values in ((0, slot_a), (1, slot_b)):
        for i in np.flatnonzero(values >= 0):
            top, left = positions[i, channel]
            images[i, channel, top : top + region, left : left + region] += textures[values[i]]
    return {"pixel_values": images}


def encode_audio(
    spec: SyntheticInteractionSpec, slot_a: np.ndarray, slot_b: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = len(slot_a)
    t = np.arange(spec.num_audio_samples, dtype=np.float64) / spec.sampling_rate
    phases = rng.uniform(0, 2 * np.pi, (n, 2))
    freq_a = _audio_frequencies(spec, "a")[np.clip(slot_a, 0, None)]
    wave = np.sin(2 * np.pi * freq_a[:, None] * t + phases[:, :1]) * (slot_a >= 0)[:, None]
    wave += np.sin(2 * np.pi * _audio_frequencies(spec, "b")[slot_b][:, None] * t + phases[:, 1:])
    wave += rng.standard_normal(wave.shape) * spec.noise_for("audio")
    # Zero mean, unit variance per clip, as Wav2Vec2FeatureExtractor(do_normalize=True) would give.
    wave = (wave - wave.mean(1, keepdims=True)) / np.sqrt(wave.var(1, keepdims=True) + 1e-7)
    return {"input_values": wave.astype(np.float32)}


_ENCODERS = {"text": encode_text, "vision": encode_vision, "audio": encode_audio}


def _encode_all(
    spec: SyntheticInteractionSpec, latents: Mapping[str, np.ndarray], seed: int, stream: str = "encode"
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for j, m in enumerate(spec.modalities):
        out.update(_ENCODERS[m](spec, latents["slot_a"][:, j], latents["slot_b"][:, j], _rng(seed, f"{stream}-{m}")))
    return out


# ---------------------------------------------------------------------- dataset assembly


_ARRAY_FEATURES = {3: (Array2D, Array2DExtensionType), 4: (Array3D, Array3DExtensionType)}


def _feature(array: np.ndarray) -> Any:
    if array.ndim in _ARRAY_FEATURES:
        return _ARRAY_FEATURES[array.ndim][0](shape=array.shape[1:], dtype=str(array.dtype))
    feature: Any = Value(str(array.dtype))
    return List(feature, length=array.shape[1]) if array.ndim == 2 else feature


def _arrow_column(array: np.ndarray) -> pa.Array:
    """A column built straight from the numpy buffer: datasets' own encoder walks nested Python lists (~30x slower)."""
    out = pa.array(np.ascontiguousarray(array).reshape(-1))
    if array.ndim in _ARRAY_FEATURES:
        # Images as datasets' Array3D: formatting a batch of them as torch tensors is ~5x faster than nested
        # fixed-size lists, and it runs for every training batch.
        for width in reversed(array.shape[1:]):
            out = pa.ListArray.from_arrays(pa.array(np.arange(0, len(out) + 1, width, dtype=np.int32)), out)
        return pa.ExtensionArray.from_storage(_ARRAY_FEATURES[array.ndim][1](array.shape[1:], str(array.dtype)), out)
    return pa.FixedSizeListArray.from_arrays(out, array.shape[1]) if array.ndim == 2 else out


def model_columns(spec: SyntheticInteractionSpec) -> list[str]:
    """The columns a DMIL model consumes for this spec (its inputs and ``labels``)."""
    return [c for m in spec.modalities for c in MODEL_INPUT_COLUMNS[m]] + ["labels"]


def slot_columns(spec: SyntheticInteractionSpec) -> list[str]:
    """The latent slot columns (``slot_a_<m>``, ``slot_b_<m>``): ground truth for analysis, not model inputs."""
    return [f"slot_{s}_{m}" for m in spec.modalities for s in ("a", "b")]


def _build_dataset(
    spec: SyntheticInteractionSpec, latents: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
) -> Dataset:
    columns: dict[str, np.ndarray] = {**inputs, "labels": latents["labels"]}
    if spec.task == "regression":
        columns.update(labels=latents["targets"], label_value=latents["labels"])
    for j, m in enumerate(spec.modalities):
        columns[f"slot_a_{m}"] = latents["slot_a"][:, j].astype(np.int64)
        columns[f"slot_b_{m}"] = latents["slot_b"][:, j].astype(np.int64)
    arrays = {k: _arrow_column(v) for k, v in columns.items()}
    arrays["interaction_type"] = pa.array(list(latents["interaction_type"]), type=pa.string())
    features = Features({**{k: _feature(v) for k, v in columns.items()}, "interaction_type": Value("string")})
    info = DatasetInfo(
        description=json.dumps({"synthetic_interaction_spec": spec.to_dict()}, sort_keys=True), features=features
    )
    dataset = Dataset(pa.table(arrays), info=info)
    # Model columns come out as tensors, so a default collator batches them; interaction_type and the slots stay
    # readable (`ds["interaction_type"]`) and are dropped by the Trainer's remove_unused_columns.
    return dataset.with_format("torch", columns=model_columns(spec), output_all_columns=True)


def make_interaction_dataset(
    n_samples: int = 2000, seed: int = 0, spec: SyntheticInteractionSpec | None = None, **spec_kwargs: Any
) -> Dataset:
    """Generate a synthetic interaction dataset. Keyword arguments build (or override fields of) the spec.

    Example:

    ```python
    >>> from dmil_hf.data import make_interaction_dataset
    >>> ds = make_interaction_dataset(200, seed=1, modalities=("vision", "audio"), mixture={"R": 0.5, "S": 0.5})
    >>> ds.column_names[:3], ds[0]["input_values"].shape
    (['pixel_values', 'input_values', 'labels'], torch.Size([1600]))
    ```
    """
    spec = spec.replace(**spec_kwargs) if spec is not None else SyntheticInteractionSpec(**spec_kwargs)
    return spec.generate(n_samples, seed)


def make_interaction_splits(
    n_train: int = 2000,
    n_test: int = 1000,
    seed: int = 0,
    spec: SyntheticInteractionSpec | None = None,
    **spec_kwargs: Any,
) -> DatasetDict:
    """Train and test splits drawn independently from the same spec (``train`` / ``test``)."""
    spec = spec.replace(**spec_kwargs) if spec is not None else SyntheticInteractionSpec(**spec_kwargs)
    # Distinct seeds per split: the test set must not replay the training set's random streams.
    return DatasetDict(train=spec.generate(n_train, 2 * seed), test=spec.generate(n_test, 2 * seed + 1))


# ---------------------------------------------------------------------- corruption and decoding


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def corrupt(
    data: Dataset | Mapping[str, Any],
    modality: str,
    mode: str = "blank",
    seed: int = 0,
    spec: SyntheticInteractionSpec | None = None,
) -> Dataset | dict[str, Any]:
    """Destroy the information one modality carries, at test time.

    Args:
        data: a dataset from this module, or a batch dict of inputs (tensors or arrays).
        modality: the modality to corrupt.
        mode: ``"blank"`` (default) re-encodes the modality with slot A blank and a fresh uniform slot B: the input
            stays in distribution but says nothing about the label. ``"shuffle"`` permutes the modality's inputs
            across samples: in distribution, independent of each sample's label, but misleading evidence.
        seed: seed of the corruption's randomness.
        spec: needed for ``"blank"`` on a batch dict (a dataset carries its own spec).

    Returns:
        The same kind of object with that modality's inputs (and, for a dataset, its slot columns) replaced;
        ``interaction_type`` keeps the type the sample was generated with.

    Example:

    ```python
    >>> from dmil_hf.data import corrupt, make_interaction_dataset
    >>> ds = make_interaction_dataset(50, modalities=("text", "vision"), mixture="half_U_half_R")
    >>> set(corrupt(ds, "vision")["slot_a_vision"])
    {-1}
    ```
    """
    if mode not in ("blank", "shuffle"):
        raise ValueError(f"mode must be 'blank' or 'shuffle', got {mode!r}")
    if isinstance(data, Dataset):
        spec = spec or SyntheticInteractionSpec.from_dataset(data)
        if modality not in spec.modalities:
            raise ValueError(f"the dataset has no {modality} modality (it has {list(spec.modalities)})")
        table = data.with_format("numpy")[:]
        regression = spec.task == "regression"
        latents = {
            "labels": np.asarray(table["label_value" if regression else "labels"]),
            "interaction_type": np.asarray(table["interaction_type"], dtype=str),
            "slot_a": np.stack([np.asarray(table[f"slot_a_{m}"]) for m in spec.modalities], axis=1),
            "slot_b": np.stack([np.asarray(table[f"slot_b_{m}"]) for m in spec.modalities], axis=1),
        }
        if regression:
            latents["targets"] = np.asarray(table["labels"], dtype=np.float32)
        inputs = {c: np.asarray(table[c]) for m in spec.modalities for c in MODEL_INPUT_COLUMNS[m]}
        j = spec.modalities.index(modality)
        rng = _rng(seed, f"corrupt-{mode}-{modality}")
        if mode == "blank":
            latents["slot_a"][:, j] = -1
            latents["slot_b"][:, j] = rng.integers(0, spec.num_labels, len(latents["labels"]))
            inputs.update(_ENCODERS[modality](spec, latents["slot_a"][:, j], latents["slot_b"][:, j], rng))
        else:
            order = rng.permutation(len(latents["labels"]))
            latents["slot_a"][:, j], latents["slot_b"][:, j] = latents["slot_a"][order, j], latents["slot_b"][order, j]
            inputs.update({c: inputs[c][order] for c in MODEL_INPUT_COLUMNS[modality]})
        return _build_dataset(spec, latents, inputs)

    batch = dict(data)
    columns = [c for c in MODEL_INPUT_COLUMNS[modality] if c in batch]
    if not columns:
        raise ValueError(f"the batch has no {modality} inputs ({', '.join(MODEL_INPUT_COLUMNS[modality])})")
    n = len(batch[columns[0]])
    rng = _rng(seed, f"corrupt-{mode}-{modality}")
    if mode == "blank":
        if spec is None:
            raise ValueError("corrupting a batch with mode='blank' needs the spec it was generated from (spec=...)")
        new = _ENCODERS[modality](spec, np.full(n, -1), rng.integers(0, spec.num_labels, n), rng)
    else:
        order = rng.permutation(n)
        new = {c: _to_numpy(batch[c])[order] for c in columns}
    for c in columns:
        old = batch[c]
        # Keep the container and dtype the caller gave (tensor on its device, or numpy array).
        batch[c] = old.new_tensor(new[c]) if hasattr(old, "detach") else np.asarray(new[c], dtype=np.asarray(old).dtype)
    return batch


def decode_slots(
    data: Dataset | Mapping[str, Any],
    modality: str,
    spec: SyntheticInteractionSpec | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read slot A (-1 when blank) and slot B back from a modality's encoded inputs.

    A matched-filter decoder: exact for clean text, near exact for vision and audio at the default noise. It works on
    what the model sees, so properties checked on its output hold for the inputs, not only for the latents.
    """
    if isinstance(data, Dataset):
        spec = spec or SyntheticInteractionSpec.from_dataset(data)
        data = data.with_format("numpy", columns=list(MODEL_INPUT_COLUMNS[modality]))[:]
    if spec is None:
        raise ValueError("decode_slots on a batch dict needs spec=")
    c = spec.num_labels
    if modality == "text":
        content = _to_numpy(data["input_ids"])[:, 1:-1]
        a_hits = (content >= _FIRST_CONTENT_ID) & (content < _FIRST_CONTENT_ID + c)
        b_hits = (content >= _FIRST_CONTENT_ID + c) & (content < _FIRST_CONTENT_ID + 2 * c)
        first = lambda hits, offset: np.where(  # noqa: E731
            hits.any(1), content[np.arange(len(content)), hits.argmax(1)] - offset, -1
        )
        return first(a_hits, _FIRST_CONTENT_ID), np.clip(first(b_hits, _FIRST_CONTENT_ID + c), 0, None)
    if modality == "vision":
        images = _to_numpy(data["pixel_values"])[:, :2].astype(np.float64)
        tile, region = spec.vision_tile_size, _vision_region(spec)
        grid = spec.image_size // tile
        tiles = images[:, :, : grid * tile, : grid * tile].reshape(len(images), 2, grid, tile, grid, tile)
        basis = np.stack([_dct_tile(v + 1, tile) for v in range(c)])
        basis = basis / (basis**2).sum((1, 2), keepdims=True)
        # Least-squares amplitude of each texture in each tile: the DCT tiles are orthogonal, so this is exact.
        coef = np.einsum("nkitjs,vts->nkvij", tiles, basis)
        span, best = region // tile, None
        for top in range(grid - span + 1):
            for left in range(grid - span + 1):
                window = coef[..., top : top + span, left : left + span].mean((-1, -2))  # (n, 2, C)
                best = window if best is None else np.maximum(best, window)
        a = np.where(best[:, 0].max(-1) > 0.5, best[:, 0].argmax(-1), -1)
        return a, best[:, 1].argmax(-1)
    if modality == "audio":
        wave = _to_numpy(data["input_values"]).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.shape[1]), axis=1))
        bin_width = spec.sampling_rate / wave.shape[1]

        def band_energy(slot: str) -> np.ndarray:
            bins = np.rint(_audio_frequencies(spec, slot) / bin_width).astype(int)
            return np.stack([spectrum[:, max(b - 2, 0) : b + 3].max(1) for b in bins], axis=1)

        energy_a, energy_b = band_energy("a"), band_energy("b")
        # Slot B is always present, so its peak calibrates what a present tone looks like after normalisation.
        a = np.where(energy_a.max(1) > 0.3 * energy_b.max(1), energy_a.argmax(1), -1)
        return a, energy_b.argmax(1)
    raise ValueError(f"unknown modality {modality!r}")


# ---------------------------------------------------------------------- model config


def tiny_config_for(
    spec_or_dataset: SyntheticInteractionSpec | Dataset,
    paradigm: str = "dmil",
    latent_dim: int = 32,
    text_family: str = "bert",
    vision_family: str = "vit",
    audio_family: str = "wav2vec2",
    patch_size: int = 4,
    **config_kwargs: Any,
) -> DMILConfig:
    """A `DMILConfig` over tiny random backbones (hidden 32, 2 layers) that fit the benchmark's inputs.

    Example:

    ```python
    >>> from dmil_hf.data import SyntheticInteractionSpec, tiny_config_for
    >>> config = tiny_config_for(SyntheticInteractionSpec(modalities=("text", "audio")), paradigm="joint")
    >>> config.modalities, config.num_labels, config.paradigm
    (['text', 'audio'], 4, 'joint')
    ```
    """
    spec = (
        SyntheticInteractionSpec.from_dataset(spec_or_dataset)
        if isinstance(spec_or_dataset, Dataset)
        else spec_or_dataset
    )
    sub: dict[str, Any] = {}
    if "text" in spec.modalities:
        if text_family != "bert":
            # RoBERTa's padding id is 1, the benchmark's [CLS]: its position ids would treat [CLS] as padding.
            raise ValueError("the synthetic text uses BERT's special ids; use text_family='bert'")
        sub["text_config"] = tiny_text_config(text_family, vocab_size=spec.vocab_size, max_length=spec.seq_length)
    if "vision" in spec.modalities:
        if spec.image_size % patch_size:
            raise ValueError(f"image_size {spec.image_size} is not a multiple of patch_size {patch_size}")
        sub["vision_config"] = tiny_vision_config(vision_family, image_size=spec.image_size, patch_size=patch_size)
    if "audio" in spec.modalities:
        if audio_family not in ("wav2vec2", "hubert"):
            raise ValueError("the synthetic audio is a raw waveform; use audio_family='wav2vec2' or 'hubert'")
        sub["audio_config"] = tiny_audio_config(audio_family)
    if spec.task == "regression":
        # One output, the target; problem_type as transformers' regression models have it.
        labels, num_labels = {0: "target"}, 1
        config_kwargs.setdefault("problem_type", "regression")
    else:
        labels, num_labels = {i: f"class_{i}" for i in range(spec.num_labels)}, spec.num_labels
    config_kwargs.setdefault("id2label", labels)
    config_kwargs.setdefault("label2id", {v: k for k, v in labels.items()})
    return DMILConfig(**sub, paradigm=paradigm, num_labels=num_labels, latent_dim=latent_dim, **config_kwargs)



def synthetic_processor(spec: SyntheticInteractionSpec) -> Any:
    """A `DMILProcessor` for models trained on the benchmark, so that their saved folder serves the
    `multimodal-classification` pipeline like any other.

    The tokenizer is a word-level one over the benchmark's own vocabulary: `[CLS]`/`[SEP]` around the words, slot A's
    value v is the word `a<v>`, slot B's `b<v>`, fillers `w<k>` (so `"a1 w3 b2 w0"` holds A=1, B=2, as the benchmark
    encodes them). Images go through a ViT image processor of the benchmark's size and audio through a wav2vec2
    extractor at its rate, normalised per clip as the benchmark's waveforms are; the benchmark's own images and
    waveforms are drawn directly as tensors, so raw inputs given to the pipeline are processed the usual way.

        >>> processor = synthetic_processor(SyntheticInteractionSpec(modalities=("text", "audio"), num_labels=2))
        >>> processor(text=["a1 w0 b0"])["input_ids"].tolist()
        [[1, 4, 7, 5, 2]]
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast, ViTImageProcessorPil, Wav2Vec2FeatureExtractor

    from ..models.dmil.processing_dmil import DMILProcessor

    c = spec.num_labels
    words = ["[PAD]", "[CLS]", "[SEP]", *[f"a{v}" for v in range(c)], *[f"b{v}" for v in range(c)],
             *[f"w{k}" for k in range(spec.num_filler_tokens)]]
    vocab = {word: i for i, word in enumerate(words)}
    assert vocab["a0"] == _FIRST_CONTENT_ID and vocab["[CLS]"] == CLS_TOKEN_ID and vocab["[SEP]"] == SEP_TOKEN_ID
    # An unknown word reads as a filler when the vocabulary has no room for an [UNK] of its own.
    unk = "[UNK]" if len(vocab) < spec.vocab_size else "w0"
    vocab.setdefault(unk, len(vocab))
    backend = Tokenizer(WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = WhitespaceSplit()
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS_TOKEN_ID), ("[SEP]", SEP_TOKEN_ID)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=spec.seq_length, model_input_names=["input_ids", "attention_mask"],
    )
    given = set(spec.modalities)
    return DMILProcessor(
        tokenizer=tokenizer if "text" in given else None,
        image_processor=ViTImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size})
        if "vision" in given else None,
        feature_extractor=Wav2Vec2FeatureExtractor(sampling_rate=spec.sampling_rate) if "audio" in given else None,
        text_max_length=spec.seq_length,
    )

__all__ = [
    "synthetic_processor",
    "DEFAULT_NOISE",
    "MIXTURES",
    "MODEL_INPUT_COLUMNS",
    "TASKS",
    "SyntheticInteractionSpec",
    "corrupt",
    "decode_slots",
    "interaction_types_for",
    "make_interaction_dataset",
    "make_interaction_splits",
    "model_columns",
    "regression_target",
    "sample_latents",
    "slot_columns",
    "tiny_config_for",
]
