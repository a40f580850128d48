"""training/run.py: config file + overrides, the synthetic default, user csv data with file paths, and 2-process DDP."""

import json
import os
import sys

import numpy as np
import pytest
from transformers import AutoModel

from dmil_hf.testing_utils import import_cli, run_cli, write_user_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A short synthetic run: every stage, a handful of steps.
SHORT = [
    "--synthetic_train_size", "64", "--synthetic_eval_size", "32", "--synthetic_modalities", "text,vision",
    "--stage1_num_train_epochs", "1", "--stage2_num_train_epochs", "1", "--stage3_num_train_epochs", "1",
    "--per_device_train_batch_size", "16", "--save_strategy", "no", "--logging_steps", "2",
]


def test_config_file_and_overrides_are_one_parser(tmp_path):
    run = import_cli()
    config = tmp_path / "c.yaml"
    config.write_text("paradigm: joint\nstage1_learning_rate: 0.5\nlora_target_modules: [query, value]\nbf16: false\n")
    model_args, data_args, args, used = run.parse_arguments([str(config), "--stage1_learning_rate", "0.25"])
    assert used == str(config) and model_args.paradigm == "joint" and args.stage1_learning_rate == 0.25
    assert args.lora_target_modules == ["query", "value"] and data_args.dataset_name == "synthetic"
    _, _, default_args, used = run.parse_arguments([])
    assert used.endswith("synthetic_tiny.yaml") and default_args.output_dir == "outputs/dmil-synthetic-tiny"


# The run configs (training/configs/accelerate/ holds the launcher's, tested in tests/training/).
RUN_CONFIGS = sorted(n for n in os.listdir(os.path.join(REPO, "training", "configs")) if n.endswith(".yaml"))


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_shipped_config_parses(name):
    run = import_cli()
    # bf16 is refused without a GPU (rightly); every other key must parse as written.
    model_args, data_args, args, _ = run.parse_arguments(
        [os.path.join(REPO, "training", "configs", name), "--bf16", "false"]
    )
    assert args.stage_list == [1, 2, 3] and model_args.paradigm in ("dmil", "joint", "ensemble")


def test_user_data_from_disk_and_label_maps(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from dmil_hf.training import data as run_data

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    data = Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]}, features=features)
    DatasetDict(train=data, test=data.select([0])).save_to_disk(tmp_path / "ds")
    run = import_cli()
    train, evaluation = run_data.load_user_data(run.DataTrainingArguments(dataset_name=str(tmp_path / "ds")))
    assert len(train) == 3 and len(evaluation) == 1  # "test" is the evaluation split when there is no validation
    assert run_data.label_maps(train, "label") == {0: "neg", 1: "pos"}
    strings = Dataset.from_dict({"y": ["sad", "happy", "sad"]})
    assert run_data.label_maps(strings, "y") == {0: "happy", 1: "sad"}
    with pytest.raises(ValueError, match="label column 'emotion' not in the dataset"):
        run_data.label_maps(strings, "emotion")
    with pytest.raises(ValueError, match="no split 'training'"):
        run_data.load_user_data(run.DataTrainingArguments(dataset_name=str(tmp_path / "ds"), train_split_name="training"))


def test_synthetic_run_writes_final_model_and_results(tmp_path):
    out = run_cli([*SHORT, "--output_dir", str(tmp_path / "out")], tmp_path)
    assert "per-stage results" in out and "per interaction type" in out
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_accuracy_R", "eval_accuracy_U_text", "stages"} <= set(results)
    assert sorted(results["stages"]) == ["1", "2", "3"]
    model = AutoModel.from_pretrained(tmp_path / "out" / "final")
    assert model.config.modalities == ["text", "vision"] and (tmp_path / "out" / "final" / "README.md").is_file()
    # The main job's final/ serves the pipeline its model card advertises (its processor is saved with it).
    from transformers import pipeline

    pipe = pipeline("multimodal-classification", model=str(tmp_path / "out" / "final"))
    result = pipe({"text": "a1 w0 b2", "image": np.zeros((16, 16, 3), np.uint8)}, top_k=None)
    assert len(result) == model.config.num_labels and set(result[0]["interactions"]) == set(model.config.interaction_components)


def test_user_csv_with_file_paths_and_pretrained_backbones(tmp_path):
    backbones = write_user_dataset(tmp_path)
    out_dir = tmp_path / "out"
    run_cli([
        "--do_train", "--text_model", backbones["text"], "--vision_model", backbones["vision"], "--audio_model", backbones["audio"],
        "--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "train.csv"),
        "--label_column_name", "emotion", "--latent_dim", "16", "--output_dir", str(out_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
    ], tmp_path)
    final = out_dir / "final"
    model = AutoModel.from_pretrained(final)
    assert model.config.id2label == {0: "happy", 1: "sad"}
    assert (final / "processor_config.json").is_file() and (final / "pipeline_dmil.py").is_file()
    from transformers import pipeline

    pipe = pipeline("multimodal-classification", model=str(final))
    result = pipe({"text": "red cat", "image": str(tmp_path / "img0.png"), "audio": str(tmp_path / "clip0.wav")})
    assert result[0]["label"] in ("happy", "sad") and set(result[0]["interactions"]) == set(model.config.interaction_components)


def test_modality_table_on_the_command_line_rgb_flow_audio(tmp_path):
    """--modality NAME:KIND:BACKBONE[:FRAMES]: two video modalities of one image backbone and audio, from a JSON file
    whose video columns hold lists of frame files (one named after its modality, one through --modality_column_names)."""
    backbones = write_user_dataset(tmp_path)
    rows = []
    for i in range(12):
        frames = [str(tmp_path / f"img{(i + t) % 24}.png") for t in range(2 + i % 3)]
        rows.append({"rgb": frames, "optical_flow": frames[::-1], "audio": str(tmp_path / f"clip{i}.wav"),
                     "label": ["happy", "sad"][i % 2]})
    (tmp_path / "video.json").write_text("\n".join(json.dumps(row) for row in rows))
    out_dir = tmp_path / "out"
    run_cli([
        "--modality", f"rgb:video:{backbones['vision']}:3", f"flow:video:{backbones['vision']}",
        f"audio:audio:{backbones['audio']}", "--modality_column_names", "flow=optical_flow", "--do_train",
        "--train_file", str(tmp_path / "video.json"), "--latent_dim", "16", "--output_dir", str(out_dir),
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none",
        "--use_cpu", "true",
    ], tmp_path)
    model = AutoModel.from_pretrained(out_dir / "final")
    assert model.config.modalities == ["rgb", "flow", "audio"] and model.config.modality("rgb").num_frames == 3
    from transformers import pipeline

    pipe = pipeline("multimodal-classification", model=str(out_dir / "final"))
    result = pipe({"rgb": rows[0]["rgb"], "flow": rows[0]["optical_flow"], "audio": rows[0]["audio"]})
    assert set(result[0]["interactions"]) == set(model.config.interaction_components)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux CI")
def test_two_cpu_processes_ddp(tmp_path):
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29561"]
    os.environ["ACCELERATE_USE_CPU"] = "1"
    try:
        out = run_cli([*SHORT, "--output_dir", str(tmp_path / "ddp")], tmp_path, launcher=launcher, timeout=500)
    finally:
        os.environ.pop("ACCELERATE_USE_CPU")
    assert "per-stage results" in out
    state = json.loads((tmp_path / "ddp" / "stage-1" / "dmil_stage.json").read_text())
    assert state["stage"] == 1
    # 64 samples, 16 per device, 2 processes: 2 optimizer steps per epoch (one process would take 4).
    assert state["metrics"]["train_steps_per_second"] > 0
    assert state["global_step"] == 2
    assert not (tmp_path / "ddp" / "final" / "training_args.bin").exists()  # final/ holds JSON arguments, no pickle
