"""training/run.py reads a label column's format the same way whatever holds it: lists of class names in a csv (as
the text of JSON lists), a JSON lines file, a parquet file or a saved `datasets` folder make the same multi-label
model, with the same classes and the same predictions.csv; a model saved with id2label only evaluates and predicts.

`main` runs in this process on tiny saved backbones (text and vision), training one step of stage 1."""

import csv
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from dmil_hf import DMILForMultimodalClassification, DMILProcessor
from dmil_hf.models.dmil.processing_dmil import load_image_processor
from dmil_hf.testing_utils import save_tiny_backbones

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "training", "run.py")
TAGS = [["odd", "big"], ["even"], ["odd"], ["even", "big"], [], ["odd", "big"]]
QUICK = ["--stages", "1", "--max_steps", "1", "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "3",
         "--latent_dim", "16", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
         "--disable_tqdm", "true", "--logging_strategy", "no", "--eval_strategy", "no"]


@pytest.fixture(scope="module")
def run():
    """training/run.py (a script, not part of the package) as a module."""
    spec = importlib.util.spec_from_file_location("dmil_run_script_labels", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script defines them
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny backbones and the rows (text, image path, list of tags) every format below holds."""
    folder = tmp_path_factory.mktemp("labels")
    backbones = save_tiny_backbones(str(folder), ("text", "vision"))
    rng = np.random.default_rng(0)
    rows = []
    for i, tags in enumerate(TAGS):
        image = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(image)
        rows.append({"text": ["red cat", "a big dog", "the bird"][i % 3], "image": str(image), "tags": tags})
    return folder, backbones, rows


def write_format(folder, rows, kind):
    """`rows` as a csv (the tags as JSON text), a JSON lines file, a parquet file or a save_to_disk folder."""
    import datasets

    path = folder / {"csv": "data.csv", "jsonl": "data.jsonl", "parquet": "data.parquet", "disk": "data"}[kind]
    if kind == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "image", "tags"])
            writer.writeheader()
            writer.writerows({**row, "tags": json.dumps(row["tags"])} for row in rows)
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(row) for row in rows))
    else:
        dataset = datasets.Dataset.from_list(rows)
        if kind == "parquet":
            dataset.to_parquet(str(path))
        else:
            datasets.DatasetDict(train=dataset, validation=dataset, test=dataset).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "disk"])
def test_the_same_labels_in_every_format_make_the_same_model_and_predictions(run, data, tmp_path, kind):
    """A csv whose label column held JSON lists trained a single-label model over 5 "combination" classes
    (`["odd", "big"]`, `[]`, ...), and `--problem_type multi_label_classification` refused its string column."""
    folder, backbones, rows = data
    path = write_format(tmp_path, rows, kind)
    files = (["--dataset_name", str(path)] if kind == "disk"
             else ["--train_file", str(path), "--validation_file", str(path), "--test_file", str(path)])
    out = tmp_path / "out"
    run.main(["--text_model", backbones["text"], "--vision_model", backbones["vision"], *files,
              "--label_column_name", "tags", "--do_train", "--do_predict", "--output_dir", str(out), *QUICK])
    config = DMILForMultimodalClassification.config_class.from_pretrained(out / "final")
    assert config.problem_type == "multi_label_classification"
    assert config.id2label == {0: "big", 1: "even", 2: "odd"}
    with open(out / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:6] == ["index", "prediction", "score_big", "score_even", "score_odd", "label"]
    assert [json.loads(r["label"]) for r in table] == [sorted(tags) for tags in TAGS]


def test_problem_type_multi_label_reads_a_csvs_json_lists(run, data, tmp_path):
    folder, backbones, rows = data
    path = write_format(tmp_path, rows, "csv")
    model_args, data_args, _, _ = run.parse_arguments([
        "--text_model", backbones["text"], "--vision_model", backbones["vision"], "--train_file", str(path),
        "--label_column_name", "tags", "--problem_type", "multi_label_classification", "--latent_dim", "16"])
    model, _, collator, splits = run.prepare_user_data(model_args, data_args)
    assert model.config.id2label == {0: "big", 1: "even", 2: "odd"}
    batch = collator([splits["training"][i] for i in range(2)])
    assert batch["labels"].tolist() == [[1, 0, 1], [0, 1, 0]]


def test_a_csv_column_of_json_lists_and_other_text_stays_text(run, data, tmp_path, caplog):
    """Only a column whose every labelled value is a JSON list is read as lists: a class named `[draft]` beside
    plain class names stays a class, with a warning naming the row that is no list."""
    from dmil_hf.training.data import load_data_file

    path = tmp_path / "mixed.csv"
    path.write_text('text,label\na,"[""x""]"\nb,plain\nc,\n')
    dataset = load_data_file(str(path), "--train_file", "label")
    assert dataset["label"] == ['["x"]', "plain", None]
    assert "row 1 ('plain') is not one" in caplog.text
    lists = tmp_path / "lists.csv"
    lists.write_text('text,label\na,"[1, 0, 1]"\nb,\nc,[]\n')
    dataset = load_data_file(str(lists), "--train_file", "label")
    assert dataset["label"] == [[1, 0, 1], None, []]


@pytest.fixture(scope="module")
def id2label_only_model(data, tmp_path_factory):
    """A model saved as the README's Python example saves one: id2label given, label2id left None."""
    folder, backbones, _ = data
    torch.manual_seed(0)
    model = DMILForMultimodalClassification.from_backbones_pretrained(
        text=backbones["text"], vision=backbones["vision"], num_labels=2, id2label={0: "cat", 1: "dog"}, latent_dim=16)
    processor = DMILProcessor.for_model(model.config, tokenizer=AutoTokenizer.from_pretrained(backbones["text"]),
                                        image_processor=load_image_processor(backbones["vision"]))
    saved = tmp_path_factory.mktemp("id2label-only")
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text())["label2id"] is None
    return saved


def test_eval_and_predict_with_a_model_saved_with_id2label_only(run, data, id2label_only_model, tmp_path):
    """`--do_eval` / `--do_predict` crashed with `TypeError: argument of type 'NoneType' is not iterable`."""
    _, _, rows = data
    path = tmp_path / "val.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "image", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "image": r["image"], "label": ["cat", "dog"][i % 2]}
                         for i, r in enumerate(rows))
    out = tmp_path / "out"
    metrics = run.main(["--model_name_or_path", str(id2label_only_model), "--do_eval", "--do_predict",
                        "--validation_file", str(path), "--test_file", str(path), "--output_dir", str(out),
                        "--report_to", "none", "--use_cpu", "true", "--per_device_eval_batch_size", "3"])
    assert "eval_accuracy" in metrics
    with open(out / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["label"] for r in table] == ["cat", "dog"] * 3
    assert {r["prediction"] for r in table} <= {"cat", "dog"}
