"""training/run.py with user data: labels of an --init_from model keep their ids, a modality whose column is missing
is an error, and a validation label unseen in training is reported before anything trains.

`main` runs in this process up to the trainer, which is replaced by one that records what it was given and stops."""


import pytest
import torch
from test_cli import _write_user_dataset, import_cli
from transformers import AutoFeatureExtractor, AutoTokenizer

import dmil_hf
from dmil_hf import DMILForMultimodalClassification, DMILProcessor
from dmil_hf.processing_dmil import load_image_processor

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
    return folder, _write_user_dataset(folder)


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
    argv = [*args, "--latent_dim", "16", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
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
        tmp_path, "--init_from", str(init_from), "--train_file", str(folder / "train.csv"), "--label_column", "emotion"
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
    recorded = run_until_training(tmp_path, "--init_from", str(init_from), "--dataset", str(tmp_path / "ds"))
    batch = recorded["data_collator"]([recorded["train_dataset"][i] for i in range(4)])
    assert [MODEL_LABELS[i] for i in batch["labels"].tolist()] == ["happy", "sad", "sad", "happy"]


def test_init_from_refuses_labels_the_model_does_not_know(user_data, init_from, tmp_path, stop_at_training):
    folder, _ = user_data
    csv = write_csv(tmp_path / "train.csv", ["text", "image", "audio", "emotion"],
                    rows_of(folder, ["happy", "sad", "angry"]))
    unknown = r"training label\(s\) \['angry'\] are not classes of the model \(its labels: \['happy', 'sad'\]"
    with pytest.raises(ValueError, match=unknown):
        run_until_training(
            tmp_path, "--init_from", str(init_from), "--train_file", str(csv), "--label_column", "emotion"
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
        run_until_training(tmp_path, *backbone_flags(backbones), "--train_file", str(csv), "--label_column", "emotion")
    assert stop_at_training.last is None


def test_column_of_a_modality_without_a_backbone_is_left_unused(user_data, tmp_path, stop_at_training):
    folder, backbones = user_data
    csv = write_csv(tmp_path / "train.csv", ["text", "image_path", "audio", "emotion"],
                    rows_of(folder, ["happy", "sad"] * 2))
    # The collator would otherwise hand the audio paths to a processor without a feature extractor.
    recorded = run_until_training(
        tmp_path, *backbone_flags(backbones, ("text", "vision")), "--train_file", str(csv),
        "--label_column", "emotion", "--image_column", "image_path",
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
                           "--validation_file", str(validation), "--label_column", "emotion")
    assert stop_at_training.last is None


def test_text_max_length_comes_from_the_text_backbone(user_data, tmp_path, stop_at_training):
    folder, backbones = user_data
    recorded = run_until_training(tmp_path, *backbone_flags(backbones), "--train_file", str(folder / "train.csv"),
                                  "--label_column", "emotion")
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
                                  "--label_column", "score")
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
                                  "--label_column", "tags")
    config = recorded["model"].config
    assert config.problem_type == "multi_label_classification" and config.id2label == {0: "calm", 1: "happy", 2: "sad"}
    batch = recorded["data_collator"]([recorded["train_dataset"][i] for i in range(3)])
    assert batch["labels"].tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert torch.isfinite(recorded["model"](**batch).loss)
