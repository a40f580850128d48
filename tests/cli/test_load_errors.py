"""training/run.py's errors for data files and models that are not there name the flag and the file and say what
was expected: an empty or header-only data file (datasets said `Instruction "test" corresponds to no data!`), a
--model_name_or_path or backbone folder that does not exist (transformers said "Repo id must be in the form ..."), a
Hub id not in the offline cache. Each ends the command with exit status 2 and the message."""

import importlib.util
import os
import sys

import pytest

from dmil_hf.testing_utils import save_tiny_backbones

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "training", "run.py")


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("dmil_run_script_load_errors", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script defines them
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_backbones(str(tmp_path_factory.mktemp("backbones")), ("text", "vision"))


def cli_error(run, capsys, argv):
    """The CLI's exit status and its error line."""
    status = run.cli([*argv, "--output_dir", "unused-out", "--report_to", "none", "--use_cpu", "true"])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "text,label\n", "text,label\n\n\n"], ids=["empty", "header", "header-blank"])
@pytest.mark.parametrize("flag", ["--train_file", "--validation_file", "--test_file"])
def test_an_empty_or_header_only_csv_names_its_flag_and_file(run, backbones, tmp_path, capsys, flag, content):
    good = tmp_path / "good.csv"
    good.write_text("text,label\nred cat,a\nblue dog,b\n")
    empty = tmp_path / "empty.csv"
    empty.write_text(content)
    files = {"--train_file": good, "--validation_file": good, "--test_file": good, flag: empty}
    argv = ["--text_model", backbones["text"], "--do_train", "--do_predict", "--latent_dim", "16",
            *[arg for item in files.items() for arg in map(str, item)]]
    status, err = cli_error(run, capsys, argv)
    assert status == 2
    assert f"{flag} {empty} has no rows" in err and "corresponds to no data" not in err


def test_an_empty_jsonl_or_parquet_file_names_its_flag_and_file(run, tmp_path):
    import datasets

    from dmil_hf.training.data import EmptyDataError, load_data_file

    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("\n\n")
    with pytest.raises(EmptyDataError, match=r"--test_file .*test\.jsonl has no rows \(expected one JSON object"):
        load_data_file(str(jsonl), "--test_file")
    parquet = tmp_path / "test.parquet"
    datasets.Dataset.from_dict({"text": ["a"], "label": ["b"]}).select([]).to_parquet(str(parquet))
    with pytest.raises(EmptyDataError, match=r"--test_file .*test\.parquet has no rows"):
        load_data_file(str(parquet), "--test_file")
    with pytest.raises(FileNotFoundError, match=r"--test_file .*missing\.csv: no such file"):
        load_data_file(str(tmp_path / "missing.csv"), "--test_file")


def test_a_model_folder_that_does_not_exist_says_so(run, tmp_path, capsys):
    """transformers takes a path it cannot find for a Hub repo id: "Repo id must be in the form ..."."""
    csv = tmp_path / "val.csv"
    csv.write_text("text,label\nred cat,a\n")
    missing = tmp_path / "runs" / "final"
    for model in (str(missing), "./outputs/final", "outputs/run/final"):
        argv = ["--model_name_or_path", model, "--do_eval", "--validation_file", str(csv)]
        status, err = cli_error(run, capsys, argv)
        assert status == 2 and f"--model_name_or_path {model}: no such folder" in err, err
        assert "Repo id must be" not in err
    # On the built-in benchmark (no data files) too.
    status, err = cli_error(run, capsys, ["--model_name_or_path", str(missing), "--do_eval"])
    assert status == 2 and f"({missing}: no such folder)" in err and "Repo id must be" not in err, err


def test_a_hub_id_not_in_the_offline_cache_says_so(run, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    csv = tmp_path / "val.csv"
    csv.write_text("text,label\nred cat,a\n")
    status, err = cli_error(run, capsys, ["--model_name_or_path", "someone/no-such-dmil-model", "--do_eval",
                                          "--validation_file", str(csv)])
    assert status == 2
    assert "no such folder, and the Hub repo 'someone/no-such-dmil-model' is not in the offline cache" in err


def test_a_folder_without_config_json_is_no_saved_model(run, tmp_path, capsys):
    csv = tmp_path / "val.csv"
    csv.write_text("text,label\nred cat,a\n")
    (tmp_path / "not-a-model").mkdir()
    status, err = cli_error(run, capsys, ["--model_name_or_path", str(tmp_path / "not-a-model"), "--do_eval",
                                          "--validation_file", str(csv)])
    assert status == 2 and "the folder holds no config.json" in err


@pytest.mark.parametrize("flag", ["--text_model", "--vision_model", "--audio_model", "--modality"])
def test_a_backbone_folder_that_does_not_exist_names_its_flag(run, backbones, tmp_path, capsys, flag):
    csv = tmp_path / "train.csv"
    csv.write_text("text,image,audio,label\nred cat,x.png,x.wav,a\nblue dog,y.png,y.wav,b\n")
    missing = str(tmp_path / "no-backbone")
    backbone = ["--modality", f"image:image:{missing}"] if flag == "--modality" else [flag, missing]
    text = {"--modality": ["--modality", f"text:text:{backbones['text']}"], "--text_model": []}.get(
        flag, ["--text_model", backbones["text"]])
    status, err = cli_error(run, capsys, [*text, *backbone, "--do_train", "--train_file", str(csv),
                                          "--media_check", "none"])
    assert status == 2
    named = "--modality image:image:..." if flag == "--modality" else flag
    assert f"{named} {missing}: no such folder" in err, err


def test_an_empty_split_of_a_dataset_is_named(run, backbones, tmp_path, capsys, monkeypatch):
    """A dataset's split without rows (one of the Hub's; datasets cannot load an empty split saved with save_to_disk,
    so the folder's load is stood in for) is named, not met by the Trainer as an empty dataloader."""
    import datasets

    rows = datasets.Dataset.from_dict({"text": ["red cat", "blue dog"], "image": ["x.png", "y.png"],
                                       "label": ["a", "b"]})
    (tmp_path / "ds").mkdir()
    for empty, flags, named in (("validation", [], "'validation' split of --dataset_name"),
                                ("test", ["--do_predict"], "the dataset's test split has no rows")):
        splits = {"train": rows, "validation": rows, "test": rows, empty: rows.select([])}
        monkeypatch.setattr(datasets, "load_from_disk", lambda path, splits=splits: datasets.DatasetDict(splits))
        status, err = cli_error(run, capsys, ["--text_model", backbones["text"], "--vision_model", backbones["vision"],
                                              "--dataset_name", str(tmp_path / "ds"), "--do_train", *flags,
                                              "--latent_dim", "16", "--media_check", "none"])
        assert status == 2 and named in err and "has no rows" in err, err
