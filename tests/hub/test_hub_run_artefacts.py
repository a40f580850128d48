"""What a DMILTrainer run leaves on the Hub works from the Hub: the stage-3 LoRA adapter loads onto the published stage-2
model with the one call docs/hub.md gives (in a process without dmil_hf, against tests/fake_hub.py) and equals the
merged model; its config names no local path; the model card's metadata (pipeline_tag, base_model, model-index through
huggingface_hub's EvalResult, datasets, the repo's name) parses back; the push command renders the card again for the
repo it pushes to; `DMILTrainer.push_to_hub` takes transformers' arguments; final/ holds no pickle."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from dmil_hf import DMILTrainer, DMILTrainingArguments
from dmil_hf.evaluation import make_compute_metrics
from dmil_hf.hub.model_card import PIPELINE_TAG, eval_dataset_description, render_model_card
from dmil_hf.hub.publisher import push_output_dir
from dmil_hf.testing_utils import BLOCK_DMIL_HF
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model


def batch(seed=2):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, 99, (4, 6), generator=g), "pixel_values": torch.randn(4, 3, 16, 16, generator=g)}


def trained(tmp_path, **args):
    model = two_modality_model()
    trainer = DMILTrainer(model=model, args=make_args(tmp_path, **args), train_dataset=make_data(8),
                          eval_dataset=make_data(8, seed=1), compute_metrics=make_compute_metrics(model.config))
    trainer.train()
    return trainer


ONE_CALL = BLOCK_DMIL_HF + textwrap.dedent(
    """
    import json, sys, torch
    from peft import PeftModel
    from transformers import AutoModel

    repo = sys.argv[1]
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(repo, subfolder="stage-2", trust_remote_code=True),
                                      repo, subfolder="adapter").eval()
    g = torch.Generator().manual_seed(2)
    batch = {"input_ids": torch.randint(3, 99, (4, 6), generator=g), "pixel_values": torch.randn(4, 3, 16, 16, generator=g)}
    with torch.no_grad():
        print("RESULT:" + json.dumps({"logits": model(**batch).logits.tolist(), "module": type(model.get_base_model()).__module__}))
    """
)


def run_without_dmil_hf(tmp_path, hub, script, *argv):
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_MODULES_CACHE")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home_fresh"), TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run([sys.executable, str(path), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.rpartition("RESULT:")[2])


def test_the_lora_adapter_loads_from_the_hub_onto_the_stage_2_model_with_one_call(tmp_path, hub):
    trainer = trained(tmp_path, push_to_hub=True, hub_model_id="dmil-lora", hub_token="hf_fake")
    repo = hub.root / "someone" / "dmil-lora"
    # A bare hub_model_id is the token user's repo: the adapter names its full id, no folder of this machine.
    for adapter in ("adapter", "stage-3/adapter"):
        config = json.loads((repo / adapter / "adapter_config.json").read_text())
        assert (config["base_model_name_or_path"], config["revision"], config["task_type"]) == (
            "someone/dmil-lora", None, None)
        card = (repo / adapter / "README.md").read_text()
        assert str(tmp_path) not in card and f'subfolder="{adapter}"' in card and 'subfolder="stage-2"' in card
    assert str(tmp_path) not in (repo / "README.md").read_text()

    report = run_without_dmil_hf(tmp_path, hub, ONE_CALL, "someone/dmil-lora")
    assert report["module"].startswith("transformers_modules.")
    merged = trainer.model.eval()  # the merged final model, as final/ holds it
    with torch.no_grad():
        expected = merged(**batch()).logits
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, atol=1e-5, rtol=1e-5)

    # The card at the repo's root: its metadata parses back with huggingface_hub, model-index included.
    card = ModelCard.load(repo / "README.md")
    assert (card.data.pipeline_tag, card.data.model_name, card.data.library_name) == (PIPELINE_TAG, "dmil-lora",
                                                                                      "transformers")
    final_metrics = trainer.stage_results[3]
    results = {(r.metric_type, r.metric_name): r for r in card.data.eval_results}
    assert set(results) == {("accuracy", "Accuracy"), ("f1", "F1 (macro)"), ("synergy_indicator", "Synergy indicator")}
    assert results[("accuracy", "Accuracy")].metric_value == pytest.approx(final_metrics["eval_accuracy"])
    assert results[("f1", "F1 (macro)")].metric_args == {"average": "macro"}
    assert {(r.task_type, r.dataset_type) for r in card.data.eval_results} == {(PIPELINE_TAG, "custom")}
    assert 'subfolder="stage-2", trust_remote_code=True)' in card.text and 'subfolder="adapter")' in card.text
    # No pickle in what was published (the Trainer's training_args.bin became JSON).
    assert not list(repo.rglob("*.bin")) and not list(repo.rglob("*.pt")) and not list(repo.rglob("*.pth"))
    assert json.loads((repo / "training_args.json").read_text())["hub_token"] == "<HUB_TOKEN>"


def card(tmp_path, output_dir="runs/dmil-x", stage_results=None, **kwargs):
    config = make_config(("text", "vision"))
    config.text_config._name_or_path = str(tmp_path / "machine" / "my-text-encoder")
    config.vision_config._name_or_path = "google/vit-base-patch16-224"
    torch.manual_seed(0)
    from dmil_hf import DMILForMultimodalClassification

    args = DMILTrainingArguments(output_dir=str(tmp_path / output_dir), use_cpu=True, report_to=[],
                                 finetune_method="lora", **kwargs.pop("args", {}))
    results = stage_results or {1: {"eval_accuracy": 0.4}, 3: {"eval_accuracy": 0.75, "eval_f1_macro": 0.5,
                                                               "eval_loss": 1.0, "eval_runtime": 2.0}}
    return render_model_card(DMILForMultimodalClassification(config), args, results, **kwargs)


def test_card_metadata_parses_back_with_huggingface_hub(tmp_path):
    written = card(tmp_path, args={"hub_model_id": "someone/dmil-x"})
    path = tmp_path / "README.md"
    written.save(path)
    data = ModelCard.load(path).data
    assert data.pipeline_tag == "other" and data.model_name == "dmil-x"
    assert data.base_model == ["google/vit-base-patch16-224"]  # the Hub backbone; the local one is in the text
    assert "the text backbone, `my-text-encoder (a local folder)` (bert)" in written.text
    assert str(tmp_path) not in written.content
    assert [(r.metric_type, r.metric_value, r.dataset_type, r.dataset_name, r.task_name) for r in data.eval_results] == [
        ("accuracy", 0.75, "custom", "unpublished evaluation data", "Multimodal classification"),
        ("f1", 0.5, "custom", "unpublished evaluation data", "Multimodal classification"),
    ]
    assert data.datasets is None  # nothing names the evaluation data
    assert "## How to use" in written.text and 'subfolder="stage-2"' in written.text  # LoRA: the adapter's one call


def test_card_arguments_fill_the_metadata_as_transformers_create_model_card_does(tmp_path):
    data = card(tmp_path, language="en", license="apache-2.0", tags=["my-tag"], model_name="Nice name",
                finetuned_from="someone/earlier-dmil", tasks="text-classification", dataset_tags="someone/my-data",
                dataset="My data", dataset_args="clean").data
    assert (data.language, data.license, data.model_name) == ("en", "apache-2.0", "Nice name")
    assert "my-tag" in data.tags and "dmil" in data.tags
    assert data.base_model == ["someone/earlier-dmil"] and data.datasets == ["someone/my-data"]
    result = data.eval_results[0]
    assert (result.task_type, result.dataset_type, result.dataset_name, result.dataset_config) == (
        "text-classification", "someone/my-data", "My data", "clean")
    with pytest.raises(TypeError, match="unknown model card argument"):
        card(tmp_path, licence="mit")


def test_a_regression_cards_model_index_has_its_own_metrics(tmp_path):
    results = {1: {"eval_mae": 0.3, "eval_mse": 0.2, "eval_pearson": 0.9, "eval_accuracy_R": 1.0}}
    config_card = card(tmp_path, stage_results=results)
    # (a regression config needs num_labels=1; the metric names alone decide what the model-index lists)
    assert [(r.metric_type, r.metric_name) for r in config_card.data.eval_results] == [
        ("mae", "MAE"), ("mse", "MSE"), ("pearsonr", "Pearson's r")]


def test_a_hub_dataset_names_itself_in_the_model_index(tmp_path):
    from datasets import Dataset, DatasetInfo, NamedSplit

    info = DatasetInfo(builder_name="someone/hub-data", config_name="small", dataset_name="hub_data")
    hub_data = Dataset.from_dict({"a": [1]}, info=info, split=NamedSplit("validation"))
    described = eval_dataset_description(hub_data)
    assert described == {"type": "someone/hub-data", "name": "hub_data", "config": "small", "split": "validation"}
    local = Dataset.from_dict({"a": [1]}, info=DatasetInfo(builder_name="csv"))
    assert eval_dataset_description(local) is None and eval_dataset_description(None) is None
    result = card(tmp_path, eval_dataset=described).data.eval_results[0]
    assert (result.dataset_type, result.dataset_config, result.dataset_split) == ("someone/hub-data", "small",
                                                                                  "validation")


def test_the_push_command_renders_the_card_and_adapter_for_the_repo_it_pushes_to(tmp_path, hub):
    trainer = trained(tmp_path)  # trained locally: the card and the adapter name the run's folder name, "run"
    trainer.create_model_card(license="mit", dataset_tags="someone/my-data")
    final = tmp_path / "run" / "final"
    assert json.loads((final / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "run"
    assert ModelCard.load(final / "README.md").data.model_name == "run"
    push_output_dir(tmp_path / "run", "dmil-later", stages=True, token="hf_fake")
    repo = hub.root / "someone" / "dmil-later"
    for adapter in ("adapter", "stage-3/adapter"):
        assert json.loads((repo / adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
            "someone/dmil-later"
    pushed = ModelCard.load(repo / "README.md")
    assert pushed.data.model_name == "dmil-later" and pushed.data.license == "mit"
    assert pushed.data.datasets == ["someone/my-data"] and pushed.data.eval_results[0].dataset_type == "someone/my-data"
    assert 'AutoModel.from_pretrained("someone/dmil-later")' in pushed.text and "Saved locally" not in pushed.text
    assert pushed.data.eval_results[0].metric_value == pytest.approx(trainer.stage_results[3]["eval_accuracy"])


@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi.create_repo / upload_folder recorded (with the token the HfApi was made with) instead of called."""
    from concurrent.futures import Future

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", self.token, repo_id, kwargs))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", self.token, kwargs["repo_id"], kwargs))
        if kwargs.get("run_as_future"):
            future = Future()
            future.set_result("commit")
            return future
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_takes_transformers_arguments(tmp_path, hub_calls):
    trainer = trained(tmp_path, hub_model_id="someone/dmil-args", hub_token="hf_args", hub_revision="main")
    assert not hub_calls  # no push_to_hub in the arguments: training uploads nothing
    result = trainer.push_to_hub("my message", token="hf_other", revision="dev", private=True, license="mit",
                                 model_name="DMIL args", tags="extra", dataset_tags="someone/d", language="en")
    assert result == "commit"
    creates = [call for call in hub_calls if call[0] == "create_repo"]
    uploads = [call for call in hub_calls if call[0] == "upload_folder"]
    assert creates == [("create_repo", "hf_other", "someone/dmil-args", {"private": True, "exist_ok": True})] * 4
    # The run as transformers' push_to_hub uploads output_dir: the stages, then the final model at the root.
    assert [(u[1], u[3]["path_in_repo"], u[3]["revision"]) for u in uploads] == [
        ("hf_other", "stage-1", "dev"), ("hf_other", "stage-2", "dev"), ("hf_other", "stage-3", "dev"),
        ("hf_other", None, "dev")]
    assert uploads[-1][3]["commit_message"] == "my message"
    data = ModelCard.load(tmp_path / "run" / "final" / "README.md").data
    assert (data.license, data.model_name, data.language, data.datasets) == ("mit", "DMIL args", "en", ["someone/d"])
    assert "extra" in data.tags
    # Stages already uploaded are not uploaded again; blocking=False returns the upload's Future.
    future = trainer.push_to_hub(blocking=False)
    assert future.result() == "commit" and hub_calls[-1][3]["run_as_future"] is True
    assert [u[3]["path_in_repo"] for u in hub_calls[len(creates) + len(uploads):] if u[0] == "upload_folder"] == [None]
    assert hub_calls[-1][1] == "hf_args" and hub_calls[-1][3]["revision"] == "main"  # back to the arguments' own
    with pytest.raises(TypeError):
        trainer.push_to_hub(licence="mit")


def test_final_holds_weights_as_safetensors_and_no_pickle(tmp_path):
    trained(tmp_path, save_strategy="steps", save_steps=1)
    run = tmp_path / "run"
    for folder in (run / "final", run / "stage-1", run / "stage-3"):
        # What is published of it: checkpoints stay behind (UPLOAD_IGNORE_PATTERNS).
        names = {p.name for p in folder.rglob("*") if p.is_file() and "checkpoint-" not in str(p.relative_to(folder))}
        assert not {name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl"))}, folder
        assert "training_args.json" in names or folder.name == "adapter"
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "adapter" / "adapter_model.safetensors").is_file()
    # Checkpoints keep what transformers' resume reads as pickles (optimizer, scheduler, RNG state) and its arguments.
    checkpoint = run / "stage-1" / "checkpoint-1"
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"} <= set(os.listdir(checkpoint))
