"""A saved DMIL folder loads with `trust_remote_code=True` in a process where `dmil_hf` cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from dmil_hf import DMILConfig, Modality
from dmil_hf.testing_utils import tiny_feature_encoder_config, tiny_vision_config

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.testing_utils import random_inputs
from dmil_hf.testing_utils import BLOCK_DMIL_HF
from dmil_hf.testing_utils import tiny_dmil_config as make_config

# Run with `python -I` (no PYTHONPATH, no user site, no script/cwd entry on sys.path) from a temporary cwd. The
# package may still be importable through site-packages (an editable install's .pth or finder), so the script
# first puts a blocker at the front of sys.meta_path and proves that `import dmil_hf` fails.
LOADER = BLOCK_DMIL_HF + textwrap.dedent(
    """
    import json, sys

    import torch
    from transformers import AutoConfig, AutoModel

    report = {}
    for folder in sys.argv[1:]:
        try:
            AutoModel.from_pretrained(folder)
        except ValueError as err:
            assert "trust_remote_code" in str(err), err
        else:
            raise AssertionError("loading custom code without trust_remote_code must fail")
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        saved = torch.load(folder + "/expected.pt")
        with torch.no_grad():
            out = model(**saved["inputs"])
        torch.testing.assert_close(out.logits, saved["logits"], rtol=0, atol=1e-6)
        if saved["interaction_weights"] is not None:
            torch.testing.assert_close(out.interaction_weights, saved["interaction_weights"], rtol=0, atol=1e-6)
        report[folder] = {
            "model_class": type(model).__name__, "model_module": type(model).__module__,
            "config_module": type(config).__module__, "modalities": config.modalities,
        }
    assert not [name for name in sys.modules if name == "dmil_hf" or name.startswith("dmil_hf.")]
    print("REPORT" + json.dumps(report))
    """
)


def _save_with_expected(config, folder):
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    inputs.pop("labels")
    with torch.no_grad():
        out = model(**inputs)
    model.save_pretrained(folder)
    torch.save(
        {"inputs": inputs, "logits": out.logits, "interaction_weights": out.interaction_weights}, folder / "expected.pt"
    )


def test_remote_code_load_without_the_package(tmp_path):
    folders = {
        "dmil3": make_config(),
        "joint-whisper": make_config(("text", "audio"), paradigm="joint", text="roberta", audio="whisper"),
        "ensemble-clip": make_config(("vision", "audio"), paradigm="ensemble", vision="clip_vision_model"),
        "i2m2": make_config(("text", "vision"), paradigm="i2m2"),
        "two_stage": make_config(("text", "vision"), paradigm="two_stage"),
        # A modality table: frames through a per-frame image backbone, and dmil_hf's own feature encoder.
        "video-features": DMILConfig(
            modality_table=[Modality("rgb", "video", tiny_vision_config()),
                            Modality("facs", "features", tiny_feature_encoder_config())],
            num_labels=3, latent_dim=16,
        ),
    }
    for name, config in folders.items():
        _save_with_expected(config, tmp_path / name)
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert saved["auto_map"] == {
            "AutoConfig": "configuration_dmil.DMILConfig", "AutoModel": "modeling_dmil.DMILForMultimodalClassification",
        }
        # The code travels with the weights: the model file and every sibling it imports.
        for module in ("configuration_dmil.py", "modeling_dmil.py", "backbones_dmil.py", "heads_dmil.py",
                       "inputs_dmil.py", "modalities_dmil.py", "feature_encoder_dmil.py", "stages_dmil.py",
                       "problem_types_dmil.py"):
            assert (tmp_path / name / module).is_file(), module

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(
        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, *[str(tmp_path / name) for name in folders]],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    for name, config in folders.items():
        entry = report[str(tmp_path / name)]
        assert entry["model_class"] == "DMILForMultimodalClassification"
        assert entry["model_module"].startswith("transformers_modules.") and entry["model_module"].endswith(".modeling_dmil")
        assert entry["config_module"].startswith("transformers_modules.")
        assert entry["modalities"] == config.modalities
