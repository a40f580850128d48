"""Package data: the model-card template and the evaluate metric scripts ship inside dmil_hf, so that an installed
wheel (not only a source checkout) renders the DMIL model card and loads the metric."""

import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

import dmil_hf
from dmil_hf import DMILForMultimodalClassification, DMILTrainingArguments
from dmil_hf.hub import model_card as model_card_dmil
from dmil_hf.hub.model_card import render_model_card
from dmil_hf.testing_utils import tiny_dmil_config as make_config

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(dmil_hf.__file__).resolve().parent
TEMPLATE = "hub/templates/model_card.md"
METRIC_SCRIPT = "evaluation/interaction_metrics/interaction_metrics.py"


def package_data_ships(relative: str) -> bool:
    """Whether pyproject.toml's [tool.setuptools.package-data] has a glob matching `relative` (a path under dmil_hf/)."""
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in package_data.items():
        prefix = package.replace(".", "/").removeprefix("dmil_hf").strip("/")
        if prefix and not relative.startswith(prefix + "/"):
            continue
        inner = relative[len(prefix) + 1:] if prefix else relative
        if any(fnmatch.fnmatch(inner, pattern) for pattern in patterns):
            return True
    return False


def test_template_and_metric_script_are_package_data():
    assert (files("dmil_hf.hub") / "templates" / "model_card.md").is_file()
    assert package_data_ships(TEMPLATE) and package_data_ships(METRIC_SCRIPT)
    assert not package_data_ships("hub/templates/other.txt")  # the matcher is not vacuous
    assert not (REPO / "model_cards" / "dmil.md").exists()  # one template, inside the package


def render(tmp_path, template=None):
    model = DMILForMultimodalClassification(make_config(("text", "vision")))
    args = DMILTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], finetune_method="lora")
    return render_model_card(model, args, {1: {"eval_accuracy": 0.5}}, template=template).content


def test_render_uses_the_packaged_template(tmp_path):
    card = render(tmp_path)
    assert "A [DMIL](https://arxiv.org/abs/2606.11614) multimodal classifier built with `dmil_hf`" in card
    assert "## Backbones" in card and "| 1 | eval_accuracy | 0.5000 |" in card
    assert card == render(tmp_path, template=str(PACKAGE / TEMPLATE))
    # A template of one's own still wins.
    own = tmp_path / "own.md"
    own.write_text("---\n{{ card_data }}\n---\n\nOwn card of {{ model_name }}.\n")
    assert render(tmp_path, template=str(own)).strip().endswith("Own card of run.")


def test_a_missing_template_is_an_error_not_a_generic_card(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="model_card_template"):
        render(tmp_path, template=str(tmp_path / "no_such_template.md"))
    monkeypatch.setattr(model_card_dmil, "_DEFAULT_TEMPLATE", tmp_path / "templates" / "model_card.md")
    with pytest.raises(FileNotFoundError, match="package data"):
        render(tmp_path)


def test_built_wheel_ships_the_template_and_an_install_reads_it(tmp_path):
    pytest.importorskip("setuptools.build_meta")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "dmil_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=source, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = tmp_path / "dist" / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"dmil_hf/{TEMPLATE}", f"dmil_hf/{METRIC_SCRIPT}"} <= names, sorted(names)
        archive.extractall(tmp_path / "site")

    # A fresh process importing dmil_hf from the unpacked wheel (not the checkout) reads the template it carries.
    check = (
        "import dmil_hf, sys; from dmil_hf.hub.model_card import _template_text; from dmil_hf.evaluation import metric_path; "
        "assert dmil_hf.__file__.startswith(sys.argv[1]), dmil_hf.__file__; "
        "assert metric_path('interaction_metrics').startswith(sys.argv[1]); "
        "sys.stdout.write(_template_text(None))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path / "site")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == (PACKAGE / TEMPLATE).read_text(encoding="utf-8")
