"""training/run.py speaks transformers' example-script conventions: --do_* false unless given (as --help says), a
config file with flags on top, --model_name_or_path and --dataset_name, the old spellings warned about by name, user
errors as a message with exit status 2, Ctrl-C as one resume line, and one prediction pass per split at the end."""

import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import torch

import dmil_hf
from dmil_hf import DMILForMultimodalClassification, DMILTrainer
from dmil_hf.data import SyntheticInteractionSpec, tiny_config_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "training", "run.py")
# The default job shrunk to seconds: two modalities, a few rows, one step a stage.
TINY = ["--synthetic_modalities", "text,vision", "--synthetic_train_size", "16", "--synthetic_eval_size", "12",
        "--max_steps", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def run():
    """training/run.py (a script, not part of the package) as a module."""
    spec = importlib.util.spec_from_file_location("dmil_run_script", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script defines them
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark_model(tmp_path_factory):
    """A saved model of the built-in benchmark (text + vision), as the default job would leave in final/."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    spec = SyntheticInteractionSpec(modalities=("text", "vision"))
    DMILForMultimodalClassification(tiny_config_for(spec, latent_dim=16)).save_pretrained(folder)
    return folder


class CountingTrainer(DMILTrainer):
    """DMILTrainer that records train() calls and every evaluation pass (evaluate() and predict() both run
    evaluation_loop) made after training returned, with the rows it went over."""

    trained = 0
    passes_after_training: list = []

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        CountingTrainer.trained += 1
        return output

    def evaluation_loop(self, dataloader, description, *args, **kwargs):
        if CountingTrainer.trained or not self.args.do_train:
            CountingTrainer.passes_after_training.append((kwargs.get("metric_key_prefix"), len(dataloader.dataset)))
        return super().evaluation_loop(dataloader, description, *args, **kwargs)


@pytest.fixture
def counting(monkeypatch):
    CountingTrainer.trained, CountingTrainer.passes_after_training = 0, []
    monkeypatch.setattr(dmil_hf, "DMILTrainer", CountingTrainer)
    return CountingTrainer


def test_help_says_the_modes_are_false_by_default_and_states_the_config_file_rule(run, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.parse_arguments(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for mode in ("do_train", "do_eval", "do_predict"):
        entry = text[text.index(f"  --{mode} [", text.index("\noptions:")):]
        assert "(default: False)" in entry[:entry.index("\n  --", 3)], mode
    flat = " ".join(text.split())
    assert "--do_train, --do_eval and --do_predict are false unless given" in flat
    assert "a leading CONFIG.yaml or CONFIG.json" in flat and "override them one by one" in flat
    assert "training/configs/synthetic_tiny.yaml" in flat and "it sets do_train and do_eval" in flat


def test_modes_default_to_false_and_the_default_job_sets_train_and_eval(run):
    _, _, args, config = run.parse_arguments(["--model_name_or_path", "m"])
    assert config is None and (args.do_train, args.do_eval, args.do_predict) == (False, False, False)
    _, _, args, config = run.parse_arguments(["--output_dir", "out", "--max_steps", "10"])
    assert config == str(run.DEFAULT_CONFIG) and (args.do_train, args.do_eval, args.do_predict) == (True, True, False)
    # A flag on top of the default job's config file overrides its value.
    assert run.parse_arguments(["--do_eval", "false"])[2].do_eval is False


def test_model_name_or_path_and_dataset_name_are_accepted(run, tmp_path):
    model_args, data_args, _, config = run.parse_arguments(
        ["--model_name_or_path", "some/dmil", "--dataset_name", str(tmp_path), "--dataset_config_name", "clean",
         "--do_eval", "--max_predict_samples", "3", "--validation_split_name", "dev"]
    )
    assert model_args.model_name_or_path == "some/dmil" and config == str(run.OWN_DATA_CONFIG)
    assert (data_args.dataset_name, data_args.dataset_config_name) == (str(tmp_path), "clean")
    assert (data_args.max_predict_samples, data_args.validation_split_name) == (3, "dev")


def test_a_bare_do_eval_with_a_model_evaluates_it_and_trains_nothing(run, benchmark_model, counting, tmp_path):
    out = tmp_path / "out"
    metrics = run.main(["--model_name_or_path", str(benchmark_model), "--do_eval", *TINY, "--output_dir", str(out)])
    assert counting.trained == 0 and "stages" not in metrics and "eval_accuracy" in metrics
    assert counting.passes_after_training == [("eval", 12)]  # the benchmark's validation split, once
    assert sorted(os.listdir(out)) == ["eval_results.json", "plots"]  # no stage folder, no final/: results only


def test_the_end_of_run_passes_once_over_each_split(run, counting, tmp_path, capsys):
    """At the end of a training run, the evaluation split and the test split each go through the model once: one
    Trainer.predict per split feeds the metrics, the tables, the plots and predictions.csv."""
    out = tmp_path / "out"
    metrics = run.main([*TINY, "--do_predict", "--max_predict_samples", "5", "--output_dir", str(out)])
    assert counting.trained == 1
    assert counting.passes_after_training == [("eval", 12), ("predict", 5)]
    assert sorted(metrics["stages"]) == ["1", "2", "3"] and "predict_accuracy" in metrics["predict"]
    assert {"eval_results.json", "predictions.csv", "predict_results.json", "final"} <= set(os.listdir(out))
    console = capsys.readouterr().out
    # Each result printed once: the final model's headline line per split, the per-type table per split.
    assert console.count("final model on 12 eval rows: eval_accuracy=") == 1
    assert console.count("final model on 5 predict rows: predict_accuracy=") == 1
    assert console.count("== final model, eval split:") == 1


@pytest.mark.parametrize("old, new, value", [
    ("init_from", "model_name_or_path", "some/dmil"),
    ("dataset", "dataset_name", "my_data"),
    ("label_column", "label_column_name", "emotion"),
    ("image_column", "image_column_name", "frame_path"),
    ("modality_column", "modality_column_names", "rgb=frames"),
])
def test_an_old_flag_still_works_with_a_warning_naming_the_new_one(run, caplog, old, new, value):
    with caplog.at_level(logging.WARNING, logger=run.logger.name):
        parsed = run.parse_arguments([f"--{old}", value])
    fields = {k: v for part in parsed[:2] for k, v in vars(part).items()}
    assert fields[new] in (value, [value])
    assert f"--{old} is deprecated" in caplog.text and f"use --{new}" in caplog.text


def test_an_old_config_key_still_works_with_a_warning(run, caplog, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("dataset: synthetic\nlabel_column: y\n")
    with caplog.at_level(logging.WARNING, logger=run.logger.name):
        _, data_args, _, _ = run.parse_arguments([str(config)])
    assert data_args.label_column_name == "y" and "use config key label_column_name" in caplog.text
    config.write_text("no_such_option: 1\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['no_such_option'\]"):
        run.parse_arguments([str(config)])


@pytest.mark.parametrize("argv, message", [
    (["--do_train", "--train_file", "/nowhere/train.csv", "--text_model", "x"], "/nowhere/train.csv"),
    (["--output_dir", "out", "--do_train", "false", "--do_eval", "false"], "nothing to do: give --do_train"),
])
def test_a_user_error_exits_2_with_its_message_and_no_traceback(tmp_path, argv, message):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO, "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run([sys.executable, RUN, *argv], env=env, capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_ends_with_one_line_saying_how_to_resume(run, monkeypatch, tmp_path, capsys):
    class Interrupted(DMILTrainer):
        def train(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(dmil_hf, "DMILTrainer", Interrupted)
    out = tmp_path / "out"
    assert run.cli([*TINY, "--output_dir", str(out)]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    resume = f"interrupted: continue with the same command and --resume_from_checkpoint true --output_dir {out}"
    assert lines[-1] == resume
    assert sum("interrupted" in line for line in lines) == 1
