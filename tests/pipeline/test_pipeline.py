"""The "multimodal-classification" pipeline: every modality subset from a saved folder, missing modalities, mixed
batches, top_k, agreement with a direct model call, the remote-code load without dmil_hf, and errors."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, pipeline

from dmil_hf import DMILForMultimodalClassification, DMILProcessor, MultimodalClassificationPipeline, save_for_pipeline
from dmil_hf.testing_utils import BLOCK_DMIL_HF
from dmil_hf.testing_utils import TINY_LABELS as LABELS
from dmil_hf.testing_utils import tiny_model_and_processor as make_model_and_processor

TASK = "multimodal-classification"
SUBSETS = [("text", "vision"), ("text", "audio"), ("vision", "audio"), ("text", "vision", "audio")]
KEYS = {"text": "text", "vision": "image", "audio": "audio"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One folder per modality subset, saved the ordinary way (model and processor save_pretrained)."""
    folders = {}
    for modalities in SUBSETS:
        folder = tmp_path_factory.mktemp("-".join(modalities))
        model, processor = make_model_and_processor(folder, modalities)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[modalities] = folder
    return folders


def sample(modalities, seed=0, audio_len=1600, text="the cat sings"):
    rng = np.random.default_rng(seed)
    values = {
        "text": text,
        "vision": rng.integers(0, 256, (18, 20, 3), dtype=np.uint8),
        "audio": (0.1 * rng.standard_normal(audio_len)).astype(np.float32),
    }
    return {KEYS[m]: values[m] for m in modalities}


def check_result(result, config, top_k=1):
    assert isinstance(result, list) and len(result) == top_k
    scores = [entry["score"] for entry in result]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    for entry in result:
        assert entry["label"] in LABELS.values()
        assert isinstance(entry["score"], float)
        assert list(entry["interactions"]) == config.interaction_components
        assert sum(entry["interactions"].values()) == pytest.approx(1.0, abs=1e-5)
        assert entry["interactions"] == result[0]["interactions"]


def assert_same_results(got, want, tol=1e-5):
    assert [e["label"] for e in got] == [e["label"] for e in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        assert a["score"] == pytest.approx(b["score"], abs=tol)
        if "interactions" in b:
            assert a["interactions"] == pytest.approx(b["interactions"], abs=tol)


@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
def test_pipeline_from_saved_folder_on_each_subset(saved, modalities):
    pipe = pipeline(TASK, model=str(saved[modalities]))
    assert isinstance(pipe, MultimodalClassificationPipeline)
    assert isinstance(pipe.processor, DMILProcessor) and pipe.processor.modalities == list(modalities)
    assert not pipe.model.training
    result = pipe(sample(modalities))
    check_result(result, pipe.model.config)
    assert all(v > 0 for v in result[0]["interactions"].values())  # every component available


def test_pipeline_scores_equal_a_direct_model_call(saved):
    modalities = ("text", "vision", "audio")
    pipe = pipeline(TASK, model=str(saved[modalities]))
    inputs = sample(modalities)
    result = pipe(inputs, top_k=None)

    processor = AutoProcessor.from_pretrained(saved[modalities])
    model = DMILForMultimodalClassification.from_pretrained(saved[modalities]).eval()
    with torch.no_grad():
        out = model(**processor(text=inputs["text"], images=inputs["image"], audio=inputs["audio"]))
    probs = out.logits[0].softmax(-1)
    order = probs.argsort(descending=True).tolist()
    assert [entry["label"] for entry in result] == [LABELS[i] for i in order]
    for entry, index in zip(result, order):
        assert entry["score"] == pytest.approx(probs[index].item(), abs=1e-6)
        expected = dict(zip(model.config.interaction_components, out.interaction_weights[0].tolist()))
        assert entry["interactions"] == pytest.approx(expected, abs=1e-6)


def test_missing_modalities_are_renormalised_away(saved):
    pipe = pipeline(TASK, model=str(saved[("text", "vision", "audio")]))
    only_text = pipe({"text": "the cat"})[0]["interactions"]
    assert only_text["uniqueness_vision"] == only_text["uniqueness_audio"] == only_text["synergy"] == 0
    assert only_text["redundancy"] + only_text["uniqueness_text"] == pytest.approx(1.0, abs=1e-5)
    text_image = pipe({"text": "the cat", "image": sample(["vision"])["image"], "audio": None})[0]["interactions"]
    assert text_image["uniqueness_audio"] == 0 and text_image["synergy"] > 0


def test_batch_size_2_with_mixed_presence_matches_one_by_one(saved):
    pipe = pipeline(TASK, model=str(saved[("text", "vision", "audio")]))
    inputs = [
        sample(("text", "vision", "audio"), seed=1, audio_len=1600),
        sample(("text",), seed=2, text="a dog"),
        sample(("vision", "audio"), seed=3, audio_len=1200),
        sample(("audio",), seed=4, audio_len=800),
        sample(("text", "vision"), seed=5, text="the bird sings the bird sings"),
    ]
    one_by_one = [pipe(x, top_k=None) for x in inputs]
    batched = pipe(inputs, batch_size=2, top_k=None)  # batches of 2, 2 and 1
    assert len(batched) == len(inputs)
    for single, from_batch in zip(one_by_one, batched):
        assert_same_results(from_batch, single)
    assert batched[1][0]["interactions"]["uniqueness_vision"] == 0  # the text-only sample stays text-only
    assert pipe([]) == []


def test_bfloat16_model_gets_inputs_in_its_dtype(saved):
    folder = str(saved[("vision", "audio")])
    x = [sample(("vision", "audio"), seed=6), sample(("audio",), seed=7, audio_len=1000)]
    full = pipeline(TASK, model=folder)(x, batch_size=2, top_k=None)
    half = pipeline(TASK, model=folder, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    for got, want in zip(half(x, batch_size=2, top_k=None), full):
        assert sorted(e["label"] for e in got) == sorted(e["label"] for e in want)
        assert {e["label"]: e["score"] for e in got} == pytest.approx({e["label"]: e["score"] for e in want}, abs=3e-2)


def test_top_k(saved):
    pipe = pipeline(TASK, model=str(saved[("text", "vision")]))
    x = sample(("text", "vision"))
    config = pipe.model.config
    check_result(pipe(x), config, top_k=1)  # default: the best label, as text-classification
    check_result(pipe(x, top_k=2), config, top_k=2)
    everything = pipe(x, top_k=None)
    check_result(everything, config, top_k=3)
    assert sum(e["score"] for e in everything) == pytest.approx(1.0, abs=1e-5)
    assert len(pipe(x, top_k=10)) == 3
    assert [len(r) for r in pipe([x, x], top_k=2)] == [2, 2]
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive int or None"):
            pipe(x, top_k=bad)


@pytest.mark.parametrize("paradigm", ["joint", "ensemble", "two_stage", "i2m2"])
def test_baselines_have_no_interactions_and_hand_built_models_run_in_eval(tmp_path, paradigm):
    model, processor = make_model_and_processor(tmp_path, ("text", "audio"), paradigm=paradigm)
    assert model.training
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")
    assert not model.training  # dropout off: repeated calls agree
    x = sample(("text", "audio"))
    first, second = pipe(x, top_k=None), pipe(x, top_k=None)
    assert first == second
    assert all(set(entry) == {"label", "score"} for entry in first)


def test_errors(saved):
    pipe = pipeline(TASK, model=str(saved[("text", "vision")]))
    with pytest.raises(TypeError, match="inputs must be a dict"):
        pipe("the cat")
    with pytest.raises(ValueError, match=r"unknown input key\(s\) \['images'\]"):
        pipe({"text": "a", "images": sample(["vision"])["image"]})
    with pytest.raises(ValueError, match=r"unknown input key\(s\) \['content', 'role'\]"):
        pipe({"role": "user", "content": "the cat"})
    with pytest.raises(ValueError, match="the input has 'audio', but this model has no audio backbone"):
        pipe({"text": "a", "audio": np.zeros(1600, np.float32)})
    with pytest.raises(ValueError, match="none of the model's modalities"):
        pipe({"text": None})
    with pytest.raises(TypeError, match=r"images\[0\] must be a PIL image"):
        pipe({"image": 3})
    with pytest.raises(TypeError, match="only top_k and function_to_apply are accepted"):
        pipe({"text": "a"}, temperature=2.0)
    with pytest.raises(TypeError, match="inputs must be a dict"):
        pipe([{"text": "a"}, "b"], batch_size=2)


def test_pipeline_needs_a_processor_covering_the_model(tmp_path):
    model, processor = make_model_and_processor(tmp_path, ("text", "vision"))
    with pytest.raises(ValueError, match="needs a DMILProcessor"):
        MultimodalClassificationPipeline(model=model, device="cpu")
    text_only = DMILProcessor(tokenizer=processor.tokenizer)
    with pytest.raises(ValueError, match=r"no sub-processor for \['vision'\]"):
        MultimodalClassificationPipeline(model=model, processor=text_only, device="cpu")


# ----------------------------------------------------------------------------------------------------------------
# Remote code: a fresh process that cannot import dmil_hf
# ----------------------------------------------------------------------------------------------------------------

REMOTE_SCRIPT = BLOCK_DMIL_HF + textwrap.dedent(
    """
    import json, sys

    import numpy as np
    from transformers import pipeline

    folder, inputs_file = sys.argv[1], sys.argv[2]
    try:
        pipeline("multimodal-classification", model=folder, trust_remote_code=False)  # False: no y/N prompt
        refused = False
    except ValueError as err:
        refused = "trust_remote_code" in str(err)
    pipe = pipeline("multimodal-classification", model=folder, trust_remote_code=True)
    untasked = pipeline(model=folder, trust_remote_code=True)  # the task comes from config.custom_pipelines
    raw = json.load(open(inputs_file))
    inputs = [{k: (np.asarray(v, dtype=np.uint8 if k == "image" else np.float32) if k != "text" else v)
               for k, v in x.items()} for x in raw]
    print("RESULT:" + json.dumps({
        "refused_without_trust": refused,
        "modules": [type(pipe).__module__, type(pipe.model).__module__, type(pipe.processor).__module__],
        "dmil_hf_loaded": any(m == "dmil_hf" or m.startswith("dmil_hf.") for m in sys.modules),
        "results": pipe(inputs, batch_size=2, top_k=None),
        "untasked": untasked(inputs[0]),
    }))
    """
)


def test_remote_code_pipeline_in_a_process_without_dmil_hf(tmp_path):
    modalities = ("text", "vision", "audio")
    model, processor = make_model_and_processor(tmp_path, modalities)
    model.train()
    folder = tmp_path / "dmil-remote"
    save_for_pipeline(model, processor, folder)
    assert model.training and not hasattr(model.config, "custom_pipelines")  # the caller's model is untouched

    files = set(os.listdir(folder))
    assert {"pipeline_dmil.py", "processing_dmil.py", "modeling_dmil.py", "configuration_dmil.py"} <= files
    assert "preprocessor_config.json" not in files  # one processor_config.json holds both sub-configs
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_dmil.MultimodalClassificationPipeline"
    saved_processor = json.loads((folder / "processor_config.json").read_text())
    assert {"image_processor", "feature_extractor"} <= set(saved_processor)

    # With the package installed, the same folder needs no trust_remote_code: the local registry serves the task.
    local = pipeline(TASK, model=str(folder))
    assert type(local) is MultimodalClassificationPipeline and type(local.model).__module__.startswith("dmil_hf.")

    inputs = [sample(modalities, seed=1), sample(("text",), seed=2), sample(("vision", "audio"), seed=3, audio_len=900)]
    expected = MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")(inputs, top_k=None)
    inputs_file = tmp_path / "inputs.json"
    as_json = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in x.items()} for x in inputs]
    inputs_file.write_text(json.dumps(as_json))
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_MODULES_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), str(inputs_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.rpartition("RESULT:")[2])
    assert report["refused_without_trust"]
    assert not report["dmil_hf_loaded"]
    assert all(module.startswith("transformers_modules.") for module in report["modules"]), report["modules"]
    assert_same_results(report["untasked"], expected[0][:1])
    assert len(report["results"]) == len(expected)
    for got, want in zip(report["results"], expected):
        assert_same_results(got, want)
