"""training/run.py with user data: labels of an --init_from model keep their ids, a modality whose column is missing
is an error, and a validation label unseen in training is reported before anything trains.

`main` runs in this process up to the trainer, which is replaced by one that records what it was given and stops."""


import pytest
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer

import dmil_hf
from dmil_hf import DMILForMultimodalClassification, DMILProcessor
from dmil_hf.models.dmil.processing_dmil import load_image_processor
from dmil_hf.testing_utils import import_cli, write_user_dataset

# The model's classes in the opposite order to the data's sorted labels (happy, sad).
MODEL_LABELS = {0: "sad", 1: "happy"}


class StopBeforeTraining(Exception):
    pass


class RecordingTrainer:
    """Stands in for DMILTrainer: keeps its arguments and stops the run where training would start."""

    last = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        RecordingTrainer.last = self

    def train(self, **kwargs):
        raise StopBeforeTraining


@pytest.fixture
def stop_at_training(monkeypatch):
    RecordingTrainer.last = None
    monkeypatch.setattr(dmil_hf, "DMILTrainer", RecordingTrainer)
    return RecordingTrainer


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """Tiny saved backbones and a csv (text, image, audio paths, emotion in happy/sad)."""
    folder = tmp_path_factory.mktemp("user")
    return folder, write_user_dataset(folder)


@pytest.fixture(scope="module")
def init_from(user_data):
    """A saved DMIL model and processor over the same backbones whose label ids differ from the data's order."""
    folder, backbones = user_data
    torch.manual_seed(0)
    model = DMILForMultimodalClassification.from_backbones_pretrained(
        **backbones, num_labels=2, id2label=MODEL_LABELS, label2id={v: k for k, v in MODEL_LABELS.items()},
        latent_dim=16,
    )
    processor = DMILProcessor(
        tokenizer=AutoTokenizer.from_pretrained(backbones["text"]),
        image_processor=load_image_processor(backbones["vision"]),
        feature_extractor=AutoFeatureExtractor.from_pretrained(backbones["audio"]),
    )
    saved = folder / "saved-dmil"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    return saved


def backbone_flags(backbones, modalities=("text", "vision", "audio")):
    names = {"text": "--text_model", "vision": "--vision_model", "audio": "--audio_model"}
    return [arg for m in modalities for arg in (names[m], backbones[m])]


def run_until_training(tmp_path, *args):
    run = import_cli()
    argv = [*args, "--do_train", "--latent_dim", "16", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
            "--use_cpu", "true", "--save_strategy", "no"]
    with pytest.raises(StopBeforeTraining):
        run.main(argv)
    return RecordingTrainer.last.kwargs


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, row)) for row in rows)]))
    return path


def rows_of(folder, labels):
    return [(f"red cat {i}", folder / f"img{i}.png", folder / f"clip{i}.wav", label) for i, label in enumerate(labels)]


# ----------------------------------------------------------------------------------------------------------------
# 9. --init_from keeps the model's label ids
# ----------------------------------------------------------------------------------------------------------------


def test_init_from_maps_string_labels_with_the_models_label2id(user_data, init_from, tmp_path, stop_at_training):
    folder, _ = user_data
    recorded = run_until_training(
        tmp_path, "--model_name_or_path", str(init_from), "--train_file", str(folder / "train.csv"), "--label_column_name", "emotion"
    )
    model, collator = recorded["model"], recorded["data_collator"]
    assert model.config.id2label == MODEL_LABELS
    examples = [recorded["train_dataset"][i] for i in range(4)]
    batch = collator(examples)
    assert batch["labels"].tolist() == [model.config.label2id[e["label"]] for e in examples]
    assert [MODEL_LABELS[i] for i in batch["labels"].tolist()] == [e["label"] for e in examples]


def test_init_from_maps_class_label_names_with_the_models_label2id(user_data, init_from, tmp_path, stop_at_training):
    from datasets import ClassLabel, Dataset, DatasetDict

    folder, _ = user_data
    names = ["happy", "sad"]  # ClassLabel ids: happy 0, sad 1; the model's: sad 0, happy 1
    rows = rows_of(folder, ["happy", "sad", "sad", "happy"])
    data = Dataset.from_dict({"text": [r[0] for r in rows], "image": [str(r[1]) for r in rows],
                              "audio": [str(r[2]) for r in rows], "label": [names.index(r[3]) for r in rows]})
    data = data.cast_column("label", ClassLabel(names=names))
    DatasetDict(train=data).save_to_disk(tmp_path / "ds")
    recorded = run_until_training(tmp_path, "--model_name_or_path", str(init_from), "--dataset_name", str(tmp_path / "ds"))
    batch = recorded["data_collator"]([recorded["train_dataset"][i] for i in range(4)])
    assert [MODEL_LABELS[i] for i in batch["labels"].tolist()] == ["happy", "sad", "sad", "happy"]


def test_init_from_refuses_labels_the_model_does_not_know(user_data, init_from, tmp_path, stop_at_training):
    folder, _ = user_data
    csv = write_csv(tmp_path / "train.csv", ["text", "image", "audio", "emotion"],
                    rows_of(folder, ["happy", "sad", "angry"]))
    unknown = r"training label\(s\) \['angry'\] are not classes of the model \(its labels: \['happy', 'sad'\]"
    with pytest.raises(ValueError, match=unknown):
        run_until_training(
            tmp_path, "--model_name_or_path", str(init_from), "--train_file", str(csv), "--label_column_name", "emotion"
        )
    assert stop_at_training.last is None


# ----------------------------------------------------------------------------------------------------------------
# 10. A configured modality needs its column
# ----------------------------------------------------------------------------------------------------------------


def test_configured_modality_without_its_column_is_an_error(user_data, tmp_path, stop_at_training):
    folder, backbones = user_data
    csv = write_csv(tmp_path / "train.csv", ["text", "image_path", "audio", "emotion"],
                    rows_of(folder, ["happy", "sad"] * 2))
    with pytest.raises(ValueError, match=(
        r"the training data has no 'image' column for the model's vision backbone \(columns: "
        r"\['text', 'image_path', 'audio', 'emotion'\]\); set --image_column"
    )):
        run_until_training(tmp_path, *backbone_flags(backbones), "--train_file", str(csv), "--label_column_name", "emotion")
    assert stop_at_training.last is None


def test_column_of_a_modality_without_a_backbone_is_left_unused(user_data, tmp_path, stop_at_training):
    folder, backbones = user_data
    csv = write_csv(tmp_path / "train.csv", ["text", "image_path", "audio", "emotion"],
                    rows_of(folder, ["happy", "sad"] * 2))
    # The collator would otherwise hand the audio paths to a processor without a feature extractor.
    recorded = run_until_training(
        tmp_path, *backbone_flags(backbones, ("text", "vision")), "--train_file", str(csv),
        "--label_column_name", "emotion", "--image_column_name", "image_path",
    )
    assert recorded["model"].config.modalities == ["text", "vision"]
    assert "audio" not in recorded["train_dataset"].column_names
    batch = recorded["data_collator"]([recorded["train_dataset"][i] for i in range(2)])
    assert "pixel_values" in batch and "modality_mask" not in batch


# ----------------------------------------------------------------------------------------------------------------
# 11. Validation labels unseen in training
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_labels, eval_labels, unseen", [
    (["happy", "sad"] * 2, ["happy", "angry"], "['angry']"),
    ([0, 1] * 2, [1, 2], "[2]"),
    ([0, 2] * 2, [1], "[1]"),  # a class id of the model (0..2) that training never shows
])
def test_validation_label_unseen_in_training_is_an_error_before_training(
    user_data, tmp_path, stop_at_training, train_labels, eval_labels, unseen
):
    folder, backbones = user_data
    header = ["text", "image", "audio", "emotion"]
    train = write_csv(tmp_path / "train.csv", header, rows_of(folder, train_labels))
    validation = write_csv(tmp_path / "validation.csv", header, rows_of(folder, eval_labels))
    with pytest.raises(ValueError, match=r"label\(s\) " + unseen.replace("[", r"\[").replace("]", r"\]")):
        run_until_training(tmp_path, *backbone_flags(backbones), "--train_file", str(train),
                           "--validation_file", str(validation), "--label_column_name", "emotion")
    assert stop_at_training.last is None


def test_text_max_length_comes_from_the_text_backbone(user_data, tmp_path, stop_at_training):
    folder, backbones = user_data
    recorded = run_until_training(tmp_path, *backbone_flags(backbones), "--train_file", str(folder / "train.csv"),
                                  "--label_column_name", "emotion")
    processor = recorded["processing_class"]
    assert processor.text_max_length == 66  # the tiny BERT's max_position_embeddings


# ----------------------------------------------------------------------------------------------------------------
# Problem types from the label column
# ----------------------------------------------------------------------------------------------------------------


def test_regression_and_multi_label_data_set_the_problem_type(user_data, tmp_path, stop_at_training):
    import json

    folder, backbones = user_data
    csv = write_csv(tmp_path / "train.csv", ["text", "image", "audio", "score"], rows_of(folder, [0.5, -1.25, 2.0, 0.0]))
    recorded = run_until_training(tmp_path, *backbone_flags(backbones, ("text", "vision")), "--train_file", str(csv),
                                  "--label_column_name", "score")
    config = recorded["model"].config
    assert (config.problem_type, config.num_labels) == ("regression", 1)
    batch = recorded["data_collator"]([recorded["train_dataset"][i] for i in range(2)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, -1.25]
    assert torch.isfinite(recorded["model"](**batch).loss)

    rows = [{"text": t, "image": str(i), "audio": str(a), "tags": tags}
            for (t, i, a, _), tags in zip(rows_of(folder, [0] * 3), [["sad", "calm"], [], ["happy"]])]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    recorded = run_until_training(tmp_path, *backbone_flags(backbones, ("text", "vision")), "--train_file", str(jsonl),
                                  "--label_column_name", "tags")
    config = recorded["model"].config
    assert config.problem_type == "multi_label_classification" and config.id2label == {0: "calm", 1: "happy", 2: "sad"}
    batch = recorded["data_collator"]([recorded["train_dataset"][i] for i in range(3)])
    assert batch["labels"].tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert torch.isfinite(recorded["model"](**batch).loss)


# ----------------------------------------------------------------------------------------------------------------
# --do_predict: a test split without labels, and predictions.csv for every problem type
# ----------------------------------------------------------------------------------------------------------------


def test_a_test_file_without_labels_beside_labelled_files_is_predicted_without_labels(user_data, tmp_path):
    """One load_dataset over every file gave the test split the training file's label column, all None, which the
    label check then refused ("test label(s) [None] are not classes of the model"); and a .jsonl test file beside a
    .csv training file was read as csv."""
    folder, backbones = user_data
    train = write_csv(tmp_path / "train.csv", ["text", "image", "audio", "label"], rows_of(folder, ["happy", "sad"]))
    test = write_csv(tmp_path / "test.csv", ["text", "image", "audio"], [row[:3] for row in rows_of(folder, [0, 0])])
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("\n".join(f'{{"text": "a cat", "image": "{i}", "audio": "{a}"}}'
                               for _, i, a, _ in rows_of(folder, [0, 0, 0])))
    run = import_cli()
    for test_file, rows in ((test, 2), (jsonl, 3)):
        model_args, data_args, _, _ = run.parse_arguments([
            *backbone_flags(backbones), "--train_file", str(train), "--validation_file", str(train),
            "--test_file", str(test_file), "--do_predict", "true", "--latent_dim", "16",
        ])
        _, _, _, splits = run.prepare_user_data(model_args, data_args)
        assert "label" not in splits["test"].column_names and len(splits["test"]) == rows
        assert splits["training"]["label"] == ["happy", "sad"]


def test_a_saved_test_split_of_class_label_minus_one_has_no_labels(user_data, tmp_path):
    """A Hub-style test split (GLUE's) keeps the label column with -1, `datasets`' "no label", in every row."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    folder, backbones = user_data
    features = Features({"text": Value("string"), "image": Value("string"), "audio": Value("string"),
                         "label": ClassLabel(names=["happy", "sad"])})
    rows = rows_of(folder, [0, 1])

    def split(labels):
        return Dataset.from_dict({"text": [r[0] for r in rows], "image": [str(r[1]) for r in rows],
                                  "audio": [str(r[2]) for r in rows], "label": labels}, features=features)

    DatasetDict(train=split([0, 1]), validation=split([1, 0]), test=split([-1, -1])).save_to_disk(tmp_path / "ds")
    run = import_cli()
    model_args, data_args, _, _ = run.parse_arguments([*backbone_flags(backbones), "--dataset_name", str(tmp_path / "ds"),
                                                       "--do_predict", "true", "--latent_dim", "16"])
    _, _, _, splits = run.prepare_user_data(model_args, data_args)
    assert "label" not in splits["test"].column_names
    from dmil_hf.training.data import has_labels

    assert has_labels(split([-1, 0])) and not has_labels(split([-1, -1]))


def _predictions(run, tmp_path, config, logits, labels, weights=None):
    import csv
    import types

    import numpy as np

    outputs = {"logits": np.asarray(logits, dtype=np.float32)}
    if weights is not None:
        outputs["interaction_weights"] = np.asarray(weights, dtype=np.float32)
    path = tmp_path / f"{config.problem_type}.csv"
    from dmil_hf.evaluation.predictions import write_predictions

    write_predictions(types.SimpleNamespace(predictions=outputs, label_ids=labels), config, str(path))
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predictions_csv_reads_each_problem_type_as_the_pipeline_does(tmp_path):
    """predictions.csv used the softmax for every problem type: a regression wrote `target, 1.0` for every row and a
    multi-label task the single best label, and both crashed on their labels (KeyError, TypeError)."""
    import json

    import numpy as np

    from dmil_hf import DMILConfig
    from dmil_hf.testing_utils import tiny_text_config, tiny_vision_config

    def config(problem_type, names, paradigm="dmil"):
        return DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), paradigm=paradigm,
                          num_labels=len(names), id2label=dict(enumerate(names)), problem_type=problem_type)

    run = import_cli()
    weights = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]
    single = config("single_label_classification", ["cat", "dog"])
    rows = _predictions(run, tmp_path, single, [[2.0, 0.0], [0.0, 1.0]], np.array([0, 0]), weights)
    components = [f"interaction_{c}" for c in single.interaction_components]
    assert list(rows[0]) == ["index", "prediction", "score", "label", *components]
    assert [(r["prediction"], r["label"]) for r in rows] == [("cat", "cat"), ("dog", "cat")]
    assert float(rows[0]["score"]) == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    assert float(rows[1][components[0]]) == pytest.approx(0.4)

    multi = config("multi_label_classification", ["cat", "dog", "pet"])
    rows = _predictions(run, tmp_path, multi, [[2.0, -1.0, 0.5], [-3.0, -1.0, -0.2]],
                        np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), weights)
    assert list(rows[0])[:6] == ["index", "prediction", "score_cat", "score_dog", "score_pet", "label"]
    assert [json.loads(r["prediction"]) for r in rows] == [["cat", "pet"], []]  # sigmoid above 1/2, as the metrics
    assert [json.loads(r["label"]) for r in rows] == [["cat", "pet"], ["dog", "pet"]]
    assert float(rows[0]["score_dog"]) == pytest.approx(1 / (1 + np.exp(1.0)), abs=1e-6)

    regression = config("regression", ["target"], paradigm="joint")  # a baseline: no interaction columns
    rows = _predictions(run, tmp_path, regression, [[0.25], [-1.5]], np.array([0.5, -1.0]))
    assert list(rows[0]) == ["index", "prediction", "label"]
    assert [(float(r["prediction"]), float(r["label"])) for r in rows] == [(0.25, 0.5), (-1.5, -1.0)]
    two = config("regression", ["valence", "arousal"], paradigm="joint")
    rows = _predictions(run, tmp_path, two, [[0.25, 1.0], [-1.5, 2.0]], None)
    assert list(rows[0]) == ["index", "prediction_valence", "prediction_arousal"]
    assert float(rows[1]["prediction_arousal"]) == 2.0
