"""The real-signal benchmark's data: per-sample types mean what the docs say, splits are deterministic and apart.
(Vision + audio only: the text modality needs the MiniLM wheel, an optional extra.)"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def data():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("real_signals_data", BENCHMARKS / "real_signals_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_types_labels_and_shown_digits(data):
    labels, types, shown = data._sample(["vision", "audio"], data.resolve_mixture("balanced", ["vision", "audio"]),
                                        400, "train", seed=0)
    r, s = types == "R", types == "S"
    assert (shown[r] == labels[r, None]).all()
    assert (shown[types == "U_vision", 0] == labels[types == "U_vision"]).all()
    assert (shown[types == "U_audio", 1] == labels[types == "U_audio"]).all()
    assert ((shown[s, 0] + shown[s, 1]) % 10 == labels[s]).all()  # synergy: the sum of the two digits mod 10
    assert sorted(set(types)) == ["R", "S", "U_audio", "U_vision"]


def test_splits_are_deterministic_and_u_samples_silence_the_other_modality(data):
    first = data.make_real_signal_splits(("vision", "audio"), "balanced", 60, 30, seed=1)
    again = data.make_real_signal_splits(("vision", "audio"), "balanced", 60, 30, seed=1)
    assert np.array_equal(np.asarray(first["train"][:]["pixel_values"]), np.asarray(again["train"][:]["pixel_values"]))
    train = first["train"]
    types = np.asarray(train["interaction_type"])
    pixels = np.asarray(train[:]["pixel_values"])
    # An empty sheet in U_audio samples: background (-1) with faint noise; a digit image has ink (values near 1).
    assert pixels[types == "U_audio"].max() < 0.0 and pixels[types == "U_vision"].max() > 0.5
    corrupted = first["test_corrupted"]
    assert set(corrupted["interaction_type"]) == {"R"}
    assert corrupted.num_rows == int((np.asarray(first["test"]["interaction_type"]) == "R").sum())
    # Unseen test voices: no speaker is in both splits of the committed clips.
    clips = data.spoken_digits()
    assert not set(clips["speaker"][clips["split"] == "train"]) & set(clips["speaker"][clips["split"] == "test"])
