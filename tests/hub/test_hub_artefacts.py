"""What a plain `save_pretrained` / `push_to_hub` of a DMIL model leaves serves transformers' own loaders: the
"multimodal-classification" pipeline (declared in config.custom_pipelines, its code saved beside the model's) and
`AutoModel`, with dmil_hf imported and in a process that cannot import it."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModel, pipeline

from dmil_hf import MultimodalClassificationPipeline
from dmil_hf.testing_utils import BLOCK_DMIL_HF
from dmil_hf.testing_utils import tiny_model_and_processor as make_model_and_processor

TASK = "multimodal-classification"
MODALITIES = ("text", "vision")
ENTRY = {"impl": "pipeline_dmil.MultimodalClassificationPipeline", "pt": ["AutoModel"], "type": "multimodal"}


def inputs():
    rng = np.random.default_rng(3)
    return [{"text": "the cat sings", "image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8).tolist()},
            {"text": "a dog"}]


def assert_same_answers(got, want):
    assert [[entry["label"] for entry in answer] for answer in got] == [[e["label"] for e in a] for a in want]
    for answer, wanted in zip(got, want):
        for entry, e in zip(answer, wanted):
            assert entry["score"] == pytest.approx(e["score"], abs=1e-5)
            assert entry["interactions"] == pytest.approx(e["interactions"], abs=1e-5)


def as_arrays(batch):
    return [{k: (np.asarray(v, dtype=np.uint8) if k == "image" else v) for k, v in x.items()} for x in batch]


def test_a_plain_save_declares_the_pipeline_and_leaves_the_model_as_it_was(tmp_path):
    model, processor = make_model_and_processor(tmp_path, MODALITIES)
    folder = tmp_path / "plain"
    model.save_pretrained(folder)
    assert "custom_pipelines" not in model.config.__dict__  # the caller's config is left as it was
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {TASK: ENTRY}
    assert config["auto_map"]["AutoModel"] == "modeling_dmil.DMILForMultimodalClassification"
    files = set(os.listdir(folder))
    assert {"pipeline_dmil.py", "modeling_dmil.py", "configuration_dmil.py", "problem_types_dmil.py"} <= files
    # The model's own save has no processor: the pipeline says so, and takes one given to it.
    with pytest.raises(OSError, match=r"holds no DMILProcessor .*processor.save_pretrained\(folder\).*processor="):
        pipeline(TASK, model=str(folder))
    pipe = pipeline(TASK, model=str(folder), processor=processor)
    assert type(pipe) is MultimodalClassificationPipeline  # the installed package's task, no trust_remote_code
    expected = MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")(as_arrays(inputs()))
    assert_same_answers(pipe(as_arrays(inputs())), expected)
    # With the processor saved beside it (the documented second line), the folder alone serves the pipeline.
    processor.save_pretrained(folder)
    assert_same_answers(pipeline(TASK, model=str(folder))(as_arrays(inputs())), expected)
    assert type(AutoModel.from_pretrained(folder)) is type(model)


REMOTE = BLOCK_DMIL_HF + textwrap.dedent(
    """
    import json, sys

    import numpy as np
    import torch
    from transformers import AutoModel, pipeline

    report = {}
    for where in sys.argv[2:]:
        pipe = pipeline("multimodal-classification", model=where, trust_remote_code=True)
        untasked = pipeline(model=where, trust_remote_code=True)  # the task read from config.custom_pipelines
        model = AutoModel.from_pretrained(where, trust_remote_code=True).eval()
        batch = [{k: (np.asarray(v, dtype=np.uint8) if k == "image" else v) for k, v in x.items()}
                 for x in json.load(open(sys.argv[1]))]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 9, (2, 5), generator=g)
        report[where] = {
            "modules": [type(pipe).__module__, type(untasked).__module__, type(model).__module__],
            "results": pipe(batch), "untasked": untasked(batch),
            "logits": model(input_ids=ids, pixel_values=torch.zeros(2, 3, 16, 16)).logits.tolist(),
        }
    report["dmil_hf_loaded"] = any(m == "dmil_hf" or m.startswith("dmil_hf.") for m in sys.modules)
    print("RESULT:" + json.dumps(report))
    """
)


def test_a_plain_save_and_a_plain_push_serve_the_pipeline_and_automodel_without_dmil_hf(tmp_path, hub):
    model, processor = make_model_and_processor(tmp_path, MODALITIES)
    folder = tmp_path / "plain"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    model.push_to_hub("someone/plain-dmil", token="hf_fake")
    processor.push_to_hub("someone/plain-dmil", token="hf_fake")
    repo = hub.root / "someone" / "plain-dmil"
    assert json.loads((repo / "config.json").read_text())["custom_pipelines"] == {TASK: ENTRY}
    assert (repo / "pipeline_dmil.py").is_file() and (repo / "processing_dmil.py").is_file()

    expected = MultimodalClassificationPipeline(model=model, processor=processor, device="cpu")(as_arrays(inputs()))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 9, (2, 5), generator=g)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, pixel_values=torch.zeros(2, 3, 16, 16)).logits
    (tmp_path / "inputs.json").write_text(json.dumps(inputs()))
    (tmp_path / "remote.py").write_text(REMOTE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_MODULES_CACHE")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error",
               HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run(
        [sys.executable, str(tmp_path / "remote.py"), str(tmp_path / "inputs.json"), str(folder), "someone/plain-dmil"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.rpartition("RESULT:")[2])
    assert not report["dmil_hf_loaded"]
    for where in (str(folder), "someone/plain-dmil"):
        got = report[where]
        assert all(module.startswith("transformers_modules.") for module in got["modules"]), got["modules"]
        assert_same_answers(got["results"], expected)
        assert_same_answers(got["untasked"], expected)
        torch.testing.assert_close(torch.tensor(got["logits"]), logits, atol=1e-5, rtol=1e-5)
