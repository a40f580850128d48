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


@pytest.fixture(scope="module")
def bench(data):
    spec = importlib.util.spec_from_file_location("bench_real_signals", BENCHMARKS / "real_signals.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_save_models_keeps_each_run_and_changes_no_number(bench, tmp_path):
    """`--save_models DIR` (what `make model-card-runs` publishes from): every library method's run is kept, with its
    final model, its card scoring the clean test split and eval_results.json, and the report's rows are the ones of
    a run that keeps nothing."""
    import json

    argv = ["--seeds", "0", "--steps", "3", "--batch-size", "8", "--n-train", "24", "--n-test", "16",
            "--mixtures", "balanced", "--methods", "ensemble,i2m2,dmil"]

    def rows(extra):
        settings, args = bench.parse_settings(argv + extra)
        report = bench.run_benchmark(settings, log=lambda line: None, save_models=args.save_models)
        return [{k: v for k, v in row.items() if k != "train_time_s"} for row in report["per_seed"]]

    kept = tmp_path / "models"
    assert json.dumps(rows(["--save_models", str(kept)]), sort_keys=True) == json.dumps(rows([]), sort_keys=True)
    for method in ("ensemble", "i2m2", "dmil"):
        run = kept / "balanced" / "seed0" / method
        card = (run / "final" / "README.md").read_text()
        assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "training_args.json").is_file()
        results = json.loads((run / "eval_results.json").read_text())
        last = max(results["stages"], key=int)
        assert results["stages"][last]["eval_accuracy"] == results["eval_accuracy"]
        assert f"| {last} | eval_accuracy | {results['eval_accuracy']:.4f} |" in card
        assert "| U_vision |" in card and "No evaluation set was given" not in card
    assert (kept / "balanced" / "seed0" / "dmil" / "final" / "plots" / "interaction_weights.png").is_file()
    # With its processor (`pipeline_processor`), the kept model serves the pipeline on raw inputs.
    from PIL import Image
    from transformers import pipeline

    pipe = pipeline("multimodal-classification", model=str(kept / "balanced" / "seed0" / "dmil" / "final"))
    image = Image.fromarray(np.full((8, 8), 255, np.uint8))
    (result,) = pipe({"image": image, "audio": np.zeros(6000, np.float32)})
    assert result["label"] in [str(d) for d in range(10)] and set(result["interactions"]) == {
        "redundancy", "uniqueness_vision", "uniqueness_audio", "synergy"}
    # A folder that holds runs already is refused before anything trains.
    with pytest.raises(SystemExit):
        bench.parse_settings(argv + ["--save_models", str(kept)])


def test_the_pipeline_processor_encodes_raw_inputs_as_the_benchmark_does(data):
    """A kept model's processor: an 8x8 digit image in 0..255 and an 8 kHz clip become the inputs the benchmark
    trained on (`encode_images`, `normalise_waveforms`), up to the image's rounding to 8 bits."""
    from PIL import Image

    from dmil_hf import DMILConfig

    config = DMILConfig(**{f"{m}_config": c for m, c in data.backbone_configs(("vision", "audio")).items()},
                        num_labels=10)
    processor = data.pipeline_processor(config)
    images, _ = data.image_pools()["test"]
    clips = data.spoken_digits()["waveforms"][:2]
    pil = [Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)) for image in images[:2]]
    batch = processor(images=pil, audio=[(clip, data.SAMPLING_RATE) for clip in clips])
    np.testing.assert_allclose(batch["pixel_values"].numpy(), data.encode_images(images[:2]), atol=1.001 / 255)
    expected = data.normalise_waveforms(clips.astype(np.float32) / 32768)  # int16 PCM, as the processor reads it
    np.testing.assert_allclose(batch["input_values"].numpy(), expected, atol=1e-4)
