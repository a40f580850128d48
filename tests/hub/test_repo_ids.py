"""Hub repo ids are checked offline, with huggingface_hub's own rule, before any call to the Hub: an id with `..` or a
space, an empty one, a local path or an access token is refused naming the flag it came from and the rule (it used
to reach the Hub and come back as "forbidden" or "unreachable"); the model card's `from_pretrained(...)` snippet
gets the checked, normalised id, never the text as given."""

import importlib.util
import os
import sys

import pytest
import torch

from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainingArguments
from dmil_hf.hub.model_card import render_model_card
from dmil_hf.hub.publisher import DMILHubPreflightError, DMILHubPublisher, main, resolve_repo_id
from dmil_hf.hub.run_publisher import DMILRunPublisher
from dmil_hf.testing_utils import tiny_text_config, tiny_vision_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAD_IDS = ["someone/../dmil", "someone/my model", "someone/dmil..x", "a/b/c", "", "someone/dmil.git"]
TOKEN = "hf_" + "aB3" * 12


def args(tmp_path, **kwargs):
    return DMILTrainingArguments(**{"output_dir": str(tmp_path / "runs" / "dmil-x"), "use_cpu": True,
                                    "report_to": [], **kwargs})


@pytest.mark.parametrize("repo_id", BAD_IDS)
def test_an_invalid_repo_id_is_refused_offline_naming_the_flag_and_the_rule(repo_id, tmp_path):
    with pytest.raises(ValueError, match=r"hub_model_id \(--hub_model_id\) .*a Hub repo id is NAME or NAMESPACE/NAME"):
        args(tmp_path, hub_model_id=repo_id)
    # The publisher of `python -m dmil_hf.hub.publisher push` and of the Python API: refused before the Hub is asked
    # (offline mode, set by conftest, used to be the reason given: "unreachable").
    with pytest.raises(ValueError, match="not a valid Hub repo id") as raised:
        DMILHubPublisher(repo_id).check()
    assert not isinstance(raised.value, DMILHubPreflightError)


def test_an_empty_repo_id_from_output_dir_dot_is_the_working_folders_name(tmp_path, monkeypatch):
    """`output_dir='.'` gave the repo id '' (Path('.').name); transformers' Trainer takes the folder's own name."""
    folder = tmp_path / "dmil-here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert resolve_repo_id(None, ".") == "dmil-here"
    assert resolve_repo_id(None, "runs/..") == "dmil-here"
    with pytest.raises(ValueError, match=r"--hub_model_id is not set .* output_dir '/' names the repo: its folder's "
                                         r"name '' is not a valid Hub repo id"):
        resolve_repo_id(None, "/")


def test_a_run_folder_named_no_repo_id_is_refused_before_training_naming_hub_model_id(tmp_path):
    publisher = DMILRunPublisher.from_args(args(tmp_path, output_dir=str(tmp_path / "my run"), push_to_hub=True))
    message = r"--hub_model_id is not set \(set it to name the repo\), so output_dir .*its folder.s name .my run. is"
    with pytest.raises(ValueError, match=message) as raised:
        publisher.check()
    assert not isinstance(raised.value, DMILHubPreflightError)
    # A run that does not push still gets its card: the folder's name needs to be no repo id.
    card = render_model_card(model(), args(tmp_path, output_dir=str(tmp_path / "my run")), {})
    assert card.content.count("# my run") == 1


def test_a_token_or_a_local_path_is_no_repo_id(tmp_path):
    with pytest.raises(ValueError, match="looks like a Hugging Face access token") as raised:
        args(tmp_path, hub_model_id=TOKEN)
    assert TOKEN not in str(raised.value)
    for path in ("./outputs/dmil", "/home/me/dmil", "~/dmil"):
        with pytest.raises(ValueError, match="is a local path, not a Hub repo id"):
            args(tmp_path, hub_model_id=path)


def model():
    config = DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), num_labels=2, latent_dim=8)
    torch.manual_seed(0)
    return DMILForMultimodalClassification(config)


def test_the_cards_snippet_loads_the_checked_normalised_repo_id(tmp_path):
    card = render_model_card(model(), args(tmp_path, hub_model_id=" https://huggingface.co/someone/dmil-x "), {})
    assert 'from_pretrained("someone/dmil-x")' in card.content
    assert "huggingface.co/someone" not in card.content.split("```python")[1]
    # A bare name is pushed to the token user's namespace: the card loads the full id the pre-flight found.
    publisher = DMILRunPublisher.from_args(args(tmp_path, hub_model_id="dmil-x", push_to_hub=True))
    publisher.checked_repo_id = "me/dmil-x"
    folder = tmp_path / "final"
    folder.mkdir()
    publisher.write_card(folder, model(), args(tmp_path, hub_model_id="dmil-x"), {})
    assert 'from_pretrained("me/dmil-x")' in (folder / "README.md").read_text()


def test_the_cli_and_the_push_command_exit_2_naming_the_flag(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("dmil_run_script_repo_ids", os.path.join(REPO, "training", "run.py"))
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run
    spec.loader.exec_module(run)
    status = run.cli(["--hub_model_id", "someone/../dmil", "--push_to_hub", "true", "--do_train",
                      "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true"])
    assert status == 2
    assert "hub_model_id (--hub_model_id) 'someone/../dmil' is not a valid Hub repo id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(tmp_path / "out"), "--repo_id", "someone/my model"])
    assert exit_.value.code == 2
    assert "--repo_id 'someone/my model' is not a valid Hub repo id" in capsys.readouterr().err
