"""The synthetic interaction benchmark: determinism, mixtures, model fit, and the defining property of each type,
checked on slot values decoded from the encoded inputs (what a model sees), not only on the latents."""

from collections import Counter

import numpy as np
import pytest
import torch
from transformers import default_data_collator

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.data import (
    MIXTURES,
    SyntheticInteractionSpec,
    corrupt,
    decode_slots,
    make_interaction_dataset,
    make_interaction_splits,
    model_columns,
    tiny_config_for,
)

ALL = ("text", "vision", "audio")
C = 4


def lookup_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Held-out accuracy of the best lookup table from exact feature values to labels (majority vote per value,
    fitted on the first half, scored on the second): the Bayes-optimal classifier on discrete features, up to
    sampling error. At chance (1/C) the features carry no label information."""
    features = features.reshape(len(labels), -1)
    half = len(labels) // 2
    table: dict[tuple, Counter] = {}
    for row, y in zip(features[:half], labels[:half]):
        table.setdefault(tuple(row), Counter())[y] += 1
    fallback = Counter(labels[:half].tolist()).most_common(1)[0][0]
    guesses = [table[tuple(r)].most_common(1)[0][0] if tuple(r) in table else fallback for r in features[half:]]
    return float(np.mean(np.array(guesses) == labels[half:]))


@pytest.fixture(scope="module")
def balanced():
    spec = SyntheticInteractionSpec(modalities=ALL, mixture={"R": 0.25, "U": 0.3, "S": 0.45}, num_labels=C)
    ds = spec.generate(6000, seed=3)
    decoded = {m: decode_slots(ds, m) for m in ALL}
    return spec, ds, decoded, np.asarray(ds["labels"]), np.asarray(ds["interaction_type"])


def test_deterministic_per_seed():
    a = make_interaction_dataset(64, seed=7, mixture="balanced")
    b = make_interaction_dataset(64, seed=7, mixture="balanced")
    c = make_interaction_dataset(64, seed=8, mixture="balanced")
    for column in ("input_ids", "pixel_values", "input_values", "labels"):
        assert torch.equal(a[:][column], b[:][column])
    assert a["interaction_type"] == b["interaction_type"]
    assert not torch.equal(a[:]["pixel_values"], c[:]["pixel_values"])
    # Adding a modality does not change the others' encodings (independent random streams).
    two = make_interaction_dataset(64, seed=7, mixture="balanced", modalities=("text", "vision"))
    assert torch.equal(two[:]["labels"], a[:]["labels"])
    splits = make_interaction_splits(32, 16, seed=1, modalities=("text", "audio"))
    assert splits.num_rows == {"train": 32, "test": 16}
    assert not torch.equal(splits["train"][:16]["input_ids"], splits["test"][:]["input_ids"])


@pytest.mark.parametrize("mixture", sorted(MIXTURES) + ["custom"])
def test_mixture_proportions_are_exact(mixture):
    spec_mixture = {"R": 0.1, "U_vision": 0.3, "S": 0.6} if mixture == "custom" else mixture
    spec = SyntheticInteractionSpec(mixture=spec_mixture, modalities=("text", "vision", "audio"))
    n = 999
    counts = Counter(spec.generate(n, seed=0)["interaction_type"])
    for t, share in spec.resolved_mixture().items():
        assert abs(counts.get(t, 0) - share * n) <= 1, (t, counts)
    assert sum(counts.values()) == n


def test_mixture_u_shorthand_and_validation():
    spec = SyntheticInteractionSpec(modalities=("vision", "text"), mixture="half_U_half_R")
    assert spec.modalities == ("text", "vision")
    assert spec.resolved_mixture() == {"R": 0.5, "U_text": 0.25, "U_vision": 0.25, "S": 0.0}
    with pytest.raises(ValueError, match="U_audio"):
        SyntheticInteractionSpec(modalities=("text", "vision"), mixture={"U_audio": 1.0})
    with pytest.raises(ValueError, match="unknown mixture"):
        SyntheticInteractionSpec(mixture="nope")
    with pytest.raises(ValueError, match="two or three"):
        SyntheticInteractionSpec(modalities=("text",))
    with pytest.raises(ValueError, match="vocab_size"):
        SyntheticInteractionSpec(vocab_size=20)
    with pytest.raises(ValueError, match="dominant_modality"):
        SyntheticInteractionSpec(modalities=("text", "vision"), dominant_modality="audio")


@pytest.mark.parametrize("modalities", [("text", "vision"), ("vision", "audio"), ("text", "vision", "audio")])
def test_shapes_fit_the_tiny_configs(modalities):
    ds = make_interaction_dataset(6, seed=0, modalities=modalities, mixture="balanced")
    assert ds.column_names[: len(model_columns(SyntheticInteractionSpec(modalities=modalities)))] == model_columns(
        SyntheticInteractionSpec(modalities=modalities)
    )
    batch = default_data_collator([ds[i] for i in range(4)])
    assert "interaction_type" not in batch  # strings are skipped by the collator, but stay readable on the dataset
    assert len(ds["interaction_type"]) == 6
    config = tiny_config_for(ds, paradigm="dmil", latent_dim=8)
    assert config.modalities == list(modalities)
    model = DMILForMultimodalClassification(config).eval()
    inputs = {k: batch[k] for k in model_columns(SyntheticInteractionSpec.from_dataset(ds))}
    out = model(**inputs)
    assert out.logits.shape == (4, C) and out.loss is not None and torch.isfinite(out.loss)


def test_encodings_decode_back_to_the_slots(balanced):
    spec, ds, decoded, _, _ = balanced
    for m in spec.modalities:
        a, b = decoded[m]
        assert np.mean(a == np.asarray(ds[f"slot_a_{m}"])) == 1.0, m
        assert np.mean(b == np.asarray(ds[f"slot_b_{m}"])) == 1.0, m


def test_redundancy_every_modality_determines_y(balanced):
    spec, _, decoded, y, types = balanced
    r = types == "R"
    for m in spec.modalities:
        assert np.array_equal(decoded[m][0][r], y[r]), m


def test_uniqueness_only_its_modality_carries_y(balanced):
    spec, _, decoded, y, types = balanced
    for m in spec.modalities:
        rows = types == f"U_{m}"
        assert np.array_equal(decoded[m][0][rows], y[rows])
        others = [o for o in spec.modalities if o != m]
        for o in others:
            assert (decoded[o][0][rows] == -1).all()
        features = np.stack([decoded[o][k][rows] for o in others for k in (0, 1)], axis=1)
        assert abs(lookup_accuracy(features, y[rows]) - 1 / C) < 0.1


def test_synergy_no_single_modality_informs_y_but_all_together_do(balanced):
    spec, _, decoded, y, types = balanced
    s = types == "S"
    assert s.sum() > 2000
    for m in spec.modalities:
        a, b = decoded[m]
        assert (a[s] == -1).all()
        assert abs(lookup_accuracy(b[s], y[s]) - 1 / C) < 0.05, m
        counts = np.zeros((C, C))
        np.add.at(counts, (b[s], y[s]), 1)
        # Each share value is (close to) equally often paired with each label.
        assert (np.abs(counts / counts.sum(1, keepdims=True) - 1 / C) < 0.08).all(), counts
    # Any pair of the three shares is still independent of y; all three determine it.
    pair = np.stack([decoded["text"][1][s], decoded["vision"][1][s]], axis=1)
    assert abs(lookup_accuracy(pair, y[s]) - 1 / C) < 0.06
    total = sum(decoded[m][1][s] for m in spec.modalities)
    assert np.array_equal(total % C, y[s])


def test_corrupt_removes_the_information():
    ds = make_interaction_dataset(3000, seed=5, mixture={"R": 1.0}, modalities=("text", "vision", "audio"))
    y = np.asarray(ds["labels"])
    for m in ("text", "vision", "audio"):
        blank = corrupt(ds, m, seed=1)
        a, b = decode_slots(blank, m)
        assert (a == -1).all()
        assert abs(lookup_accuracy(np.stack([a, b], 1), y) - 1 / C) < 0.05
        assert np.array_equal(decode_slots(blank, "text" if m != "text" else "vision")[0], y)  # others untouched
        shuffled = corrupt(ds, m, mode="shuffle", seed=1)
        assert abs(lookup_accuracy(np.stack(decode_slots(shuffled, m), 1), y) - 1 / C) < 0.05
    # A batch dict can be corrupted too (tensors stay tensors).
    batch = ds[:8]
    spec = SyntheticInteractionSpec.from_dataset(ds)
    out = corrupt(batch, "audio", spec=spec)
    assert isinstance(out["input_values"], torch.Tensor) and out["input_values"].shape == (8, 1600)
    assert (decode_slots(out, "audio", spec=spec)[0] == -1).all()
    assert torch.equal(out["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match="spec"):
        corrupt(batch, "audio")


def test_dominant_modality_is_cleaner():
    spec = SyntheticInteractionSpec(mixture={"R": 1.0}, dominant_modality="vision", dominance=0.4)
    ds = spec.generate(4000, seed=2)
    y = np.asarray(ds["labels"])
    agreement = {m: float(np.mean(decode_slots(ds, m)[0] == y)) for m in spec.modalities}
    assert agreement["vision"] == 1.0
    expected = 1 - 0.4 * (C - 1) / C  # a flipped value still hits y with probability 1/C
    for m in ("text", "audio"):
        assert abs(agreement[m] - expected) < 0.03, agreement
    # Signal noise degrades the decodable evidence gradually.
    noisy = SyntheticInteractionSpec(modalities=("text", "vision"), noise={"text": 0.3, "vision": 2.0}).generate(2000, 0)
    y = np.asarray(noisy["labels"])
    types = np.asarray(noisy["interaction_type"])
    for m in ("text", "vision"):
        assert 0.3 < np.mean(decode_slots(noisy, m)[0][types == "R"] == y[types == "R"]) < 0.99


def test_spec_round_trip_and_fast_generation():
    import time

    spec = SyntheticInteractionSpec(mixture={"R": 0.5, "S": 0.5}, noise=0.3, flip={"text": 0.1})
    assert SyntheticInteractionSpec.from_dict(spec.to_dict()) == spec
    start = time.perf_counter()
    ds = spec.generate(3000, seed=0)
    assert time.perf_counter() - start < 10  # thousands of samples in seconds (typically ~0.5 s)
    assert SyntheticInteractionSpec.from_dataset(ds) == spec
