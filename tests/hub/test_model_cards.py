"""model_cards/: the committed cards of the published checkpoints are what the current code renders from the inputs
kept beside them (no training: `make model-cards` re-renders), and `make publish` stops before any upload, with one
line, when it cannot publish (offline, no token, no Hub), or pushes each checkpoint with its card (the local fake Hub).

The checkpoints are not committed (`make model-card-runs` trains them): the publishing tests stand in for each one a
run folder holding its kept config and results, and an untrained model built from that config as its final model
and its one finished stage.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub

from dmil_hf.training.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[2]


def _cards_module():
    spec = importlib.util.spec_from_file_location("model_cards_cards", REPO / "model_cards" / "cards.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


cards = _cards_module()


def test_every_committed_card_is_what_the_code_renders_from_its_kept_inputs():
    stale = cards.stale_cards()
    assert not stale, "\n".join(stale)
    # Each published checkpoint has its card, and nothing else is in model_cards/ as a card.
    folders = {p.name for p in (REPO / "model_cards").iterdir() if (p / cards.INPUTS).is_dir()}
    assert folders == {card.name for card in cards.CARDS}


def test_a_card_that_differs_from_the_render_is_named_with_the_target_that_fixes_it(tmp_path):
    copy = tmp_path / "model_cards"
    shutil.copytree(REPO / "model_cards", copy, ignore=shutil.ignore_patterns("__pycache__"))
    name = cards.CARDS[0].name
    readme = copy / name / "README.md"
    readme.write_text(readme.read_text().replace("## Evaluation", "## Results"))
    (stale,) = cards.stale_cards(copy)
    assert f"model_cards/{name}/README.md is stale" in stale and "`make model-cards`" in stale
    # Changed inputs make it stale as well: the card follows them, and re-rendering brings it back.
    readme.write_text((REPO / "model_cards" / name / "README.md").read_text())
    results = copy / name / cards.INPUTS / cards.STAGE_RESULTS
    stages = json.loads(results.read_text())
    stages[max(stages, key=int)]["eval_accuracy"] = 0.125
    results.write_text(json.dumps(stages))
    assert len(cards.stale_cards(copy)) == 1
    cards.write_card(name, copy / name, cards_dir=copy)
    assert cards.stale_cards(copy) == [] and "| eval_accuracy | 0.1250 |" in readme.read_text()


def test_the_cards_name_their_hub_repo_and_link_their_plots():
    for card in cards.CARDS:
        text = (REPO / "model_cards" / card.name / "README.md").read_text()
        assert f'AutoModel.from_pretrained("{cards.DEFAULT_NAMESPACE}/{card.name}")' in text
        for link in [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
            assert (REPO / "model_cards" / card.name / link).is_file()
    assert "## Plots" in (REPO / "model_cards" / "dmil-synthetic-tiny" / "README.md").read_text()


# ---------------------------------------------------------------- make publish


@pytest.fixture
def checkpoints(tmp_path):
    """Stand-ins for the trained checkpoints, as `make model-card-runs` leaves them (see the module docstring)."""
    from dmil_hf import DMILConfig, DMILForMultimodalClassification

    runs = tmp_path / "runs"
    for card in cards.CARDS:
        kept = cards.kept_inputs(card.name)
        run = runs / card.run
        (run / "final").mkdir(parents=True)
        config = DMILConfig.from_dict(kept[cards.CONFIG])
        torch.manual_seed(0)
        model = DMILForMultimodalClassification(config)
        model.save_pretrained(run / "final")
        model.save_pretrained(run / "stage-1")  # a finished stage: publish pushes it to stage-1/
        RunFolder(run).mark_stage_finished(1, {}, adapter=False, global_step=1, log_history=[])
        (run / "final" / "config.json").write_text(json.dumps(kept[cards.CONFIG]))
        (run / "final" / "training_args.json").write_text(_arguments(kept[cards.ARGUMENTS]).to_json_string())
        (run / "eval_results.json").write_text(json.dumps({"stages": kept[cards.STAGE_RESULTS]}))
    return runs


def _arguments(kept: dict):
    from dataclasses import fields

    from dmil_hf import DMILTrainingArguments

    known = {f.name for f in fields(DMILTrainingArguments) if f.init}
    return DMILTrainingArguments(**{k: v for k, v in kept.items() if k in known})


def _publish(runs, *extra):
    return cards.main(["publish", "--runs", str(runs), *extra])


def test_offline_publish_stops_before_any_upload_with_one_line(checkpoints, capsys, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: pytest.fail("uploaded"))
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    assert _publish(checkpoints) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("publish: nothing uploaded: the Hub at ") and "offline mode is on" in err


def test_publish_without_a_token_or_a_hub_stops_with_one_line(checkpoints, capsys, online, monkeypatch):
    assert _publish(checkpoints) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "publish: nothing uploaded: no Hugging Face token" in err and "HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", "hf_fake")  # the token comes from the environment; the endpoint is a closed port
    assert _publish(checkpoints) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "publish: nothing uploaded: the Hub at http://127.0.0.1:" in err
    assert "is unreachable" in err


def test_publish_needs_the_checkpoints_of_the_cards(tmp_path, capsys, checkpoints):
    assert _publish(tmp_path / "nothing") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished checkpoint of dmil-synthetic-tiny" in err
    assert "`make model-card-runs`" in err
    # A checkpoint of another run than the card's (retrained, the card not re-rendered) is refused too.
    results = checkpoints / cards.CARDS[1].run / "eval_results.json"
    results.write_text(json.dumps({"stages": {"1": {"train_loss": 1.0}}}))
    assert _publish(checkpoints) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is not the run model_cards/{cards.CARDS[1].name} was rendered from" in err


def test_publish_pushes_each_checkpoint_with_its_card(tmp_path, checkpoints, capsys, online, monkeypatch):
    tokens = {"hf_fake": {"name": "someone", "orgs": ["dmil-hf"], "role": "write"}}
    with FakeHub(tmp_path / "hub", tokens=tokens) as hub:
        online(hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_fake")
        assert _publish(checkpoints) == 0
        assert _publish(checkpoints, "--namespace", "someone") == 0
    out = capsys.readouterr().out
    for card in cards.CARDS:
        assert f"published {hub.endpoint}/dmil-hf/{card.name}" in out
        committed = (REPO / "model_cards" / card.name / "README.md").read_text()
        repo = tmp_path / "hub" / "dmil-hf" / card.name
        assert (repo / "README.md").read_text() == committed
        assert (repo / "model.safetensors").is_file() and (repo / "config.json").is_file()
        for plot in (REPO / "model_cards" / card.name / "plots").iterdir():
            assert (repo / "plots" / plot.name).read_bytes() == plot.read_bytes()
        assert (repo / "stage-1" / "model.safetensors").is_file()
        # Under another namespace the card names that repo; nothing else of it changes.
        other = (tmp_path / "hub" / "someone" / card.name / "README.md").read_text()
        assert other == committed.replace(f"dmil-hf/{card.name}", f"someone/{card.name}")


def test_make_publish_offline_stops_with_one_line(checkpoints):
    # Not make's own variables: under `make test` the inner make would print "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    done = subprocess.run(["make", "--no-print-directory", "publish", f"PY={sys.executable}", f"MODEL_CARD_RUNS={checkpoints}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stdout == ""
    # Beside make's own `make: *** [Makefile:..: publish] Error 1`: the one line, and the recipe is not echoed.
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert len(lines) == 1 and lines[0].startswith("publish: nothing uploaded: the Hub at ")
