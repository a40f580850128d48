#!/usr/bin/env python
"""Train, evaluate or predict with a DMIL model (or a joint / ensemble baseline) on DMILTrainer, in the image of
transformers' examples/pytorch/text-classification/run_classification.py.

    accelerate launch training/run.py                                  # the default job (built-in benchmark)
    accelerate launch training/run.py --output_dir out --max_steps 10  # the same job with two values changed
    accelerate launch --mixed_precision bf16 training/run.py training/configs/base_pretrained.yaml --train_file my.csv
    python training/run.py --model_name_or_path outputs/dmil-synthetic-tiny/final --do_eval  # evaluate, train nothing
    python training/run.py my.json --stage3_learning_rate 1e-4         # a config file, one value changed
    python training/run.py --help                                      # the job, examples, options by group

HfArgumentParser over ModelArguments, DataTrainingArguments and DMILTrainingArguments (TrainingArguments plus DMIL's
stages and LoRA); a leading config file gives the base values and flags override them (`parse_arguments`, `--help`).
--do_train / --do_eval / --do_predict are false unless given; the default job's config sets the first two. At the end
each split goes through the model once (`Trainer.predict`), for the metrics, the tables, the plots and predictions.csv.
Devices, mixed precision and distribution come from `accelerate launch` through the Trainer.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from dmil_hf import DMILTrainingArguments
from dmil_hf.training.data import (
    AUTO_WORKERS_MAX, DEFAULT_COLUMNS, check_media, dataloader_workers, first_rows, load_synthetic, prepare_user_data,
    select_samples,
)

CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "synthetic_tiny.yaml"  # the default job: no config file, no data, no model named
OWN_DATA_CONFIG = CONFIGS / "own_data.yaml"  # the base of a run whose flags name the user's data or backbones

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """The model to train, evaluate or predict with: a saved DMIL model, or a new one from backbones."""

    _argument_group_name = "model options (ModelArguments)"  # HfArgumentParser's --help group; not a field

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved DMIL model (folder or Hub id) to start from, or to evaluate / predict with. Without "
                          "it a new model is built from the backbones below."},
    )
    text_model: str | None = field(default=None, metadata={"help": "Hub id or local path of the text backbone."})
    vision_model: str | None = field(default=None, metadata={"help": "Hub id or local path of the vision backbone."})
    audio_model: str | None = field(default=None, metadata={"help": "Hub id or local path of the audio backbone."})
    modality: list[str] | None = field(
        default=None,
        metadata={"help": "The modality table instead of --text_model/--vision_model/--audio_model: one "
                          "NAME:KIND:BACKBONE[:FRAMES] per modality (KIND: text, image, video, audio, features), e.g. "
                          "--modality rgb:video:google/vit-base-patch16-224:8 audio:audio:facebook/wav2vec2-base. "
                          "Each modality reads the column of its name (see --modality_column_names)."},
    )
    paradigm: str = field(default="dmil", metadata={"help": "'dmil', 'joint', 'ensemble', 'two_stage' or 'i2m2'."})
    dmil_preset: str = field(
        default="default",
        metadata={"help": "'default' (the library's DMIL) or 'reference' (DMILConfig.reference(): the authors' code)."},
    )
    latent_dim: int = field(default=128, metadata={"help": "Dimension of the decomposition's latents."})
    problem_type: str | None = field(
        default=None,
        metadata={"help": "'single_label_classification', 'multi_label_classification' or 'regression' (default: "
                          "from the label column's values: lists multi-label, floats a regression, else classes)."},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "'sdpa' or 'eager' for the backbones."})
    check_inputs: bool = field(default=True, metadata={"help": "NaN/label-range checks (one host sync per step)."})
    fast_paths: list[str] | None = field(
        default=None,
        metadata={"help": "Faster, numerically equivalent backbone computations (DMILConfig.fast_paths), e.g. "
                          "positional_conv_unfold (wav2vec2-family positional convolution)."},
    )


@dataclass
class DataTrainingArguments:
    """The data: the built-in synthetic benchmark, a `datasets` name or saved folder, or local files."""

    _argument_group_name = "data options (DataTrainingArguments)"

    dataset_name: str = field(
        default="synthetic",
        metadata={"help": "'synthetic' (the built-in interaction benchmark), a `datasets` name, or a folder written by "
                          "save_to_disk. Not used with --train_file/--validation_file/--test_file."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The `datasets` configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "A csv/json/jsonl/parquet training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A csv/json/jsonl/parquet evaluation file."})
    test_file: str | None = field(default=None, metadata={"help": "A csv/json/jsonl/parquet file to predict."})
    train_split_name: str = field(default="train", metadata={"help": "The dataset's split to train on."})
    validation_split_name: str | None = field(default=None, metadata={"help": "Split to evaluate (validation/test)."})
    test_split_name: str = field(default="test", metadata={"help": "The dataset's split that --do_predict predicts."})
    text_column_name: str = field(default=DEFAULT_COLUMNS["text_column_name"], metadata={"help": "Text column."})
    image_column_name: str = field(default=DEFAULT_COLUMNS["image_column_name"], metadata={"help": "Image column."})
    audio_column_name: str = field(default=DEFAULT_COLUMNS["audio_column_name"], metadata={"help": "Audio column."})
    label_column_name: str = field(
        default="label",
        metadata={"help": "Label column: class names or ids (single-label), lists of class names or multi-hot rows "
                          "(multi-label), or numbers (regression); the values decide the problem type unless "
                          "--problem_type names it. A csv holds a list as its JSON text, e.g. [\"odd\", \"big\"]: "
                          "a csv label column whose every labelled value is a JSON list is read as lists, as the "
                          "same column of a json/jsonl/parquet file or a `datasets` folder."},
    )
    modality_column_names: list[str] | None = field(
        default=None,
        metadata={"help": "NAME=COLUMN for a --modality whose column is not named after it, e.g. rgb=frames."},
    )
    interaction_type_column_name: str = field(default="interaction_type", metadata={"help": "Known types, if any."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the prediction set."})
    id_column_name: str | None = field(
        default=None, metadata={"help": "A column of the test data whose values identify its rows: predictions.csv "
                                "starts with it instead of the row index."},
    )
    media_check: str = field(
        default="headers", metadata={
            "help": "Before anything trains, every media file of the user's data is opened and its header read "
            "(headers), or fully decoded (full), and every problem is reported by data file, row and column; none "
            "skips the check (huge data sets).",
            "choices": ["headers", "full", "none"]},
    )
    synthetic_modalities: str = field(default="text,vision,audio", metadata={"help": "Synthetic benchmark modalities."})
    synthetic_mixture: str = field(default="half_U_half_R", metadata={"help": "Synthetic mixture name."})
    synthetic_num_labels: int = field(default=4, metadata={"help": "Synthetic benchmark classes."})
    synthetic_train_size: int = field(default=2000, metadata={"help": "Synthetic training samples."})
    synthetic_eval_size: int = field(default=600, metadata={"help": "Synthetic evaluation samples."})
    synthetic_dominant_modality: str | None = field(default=None, metadata={"help": "Cleaner modality, if any."})


# Old spellings (flags and config keys) -> the new names; accepted with a warning for one release.
DEPRECATED_NAMES = {
    "init_from": "model_name_or_path", "dataset": "dataset_name", "dataset_config": "dataset_config_name",
    "train_split": "train_split_name", "eval_split": "validation_split_name", "test_split": "test_split_name",
    "text_column": "text_column_name", "image_column": "image_column_name", "audio_column": "audio_column_name",
    "label_column": "label_column_name", "modality_column": "modality_column_names",
    "interaction_type_column": "interaction_type_column_name",
}
# Flags that name the user's data or backbones: without a config file, such a run starts from OWN_DATA_CONFIG.
OWN_DATA_FLAGS = {"train_file", "validation_file", "test_file", "text_model", "vision_model", "audio_model", "modality"}

USAGE = """accelerate launch training/run.py [CONFIG.yaml | CONFIG.json] [--OPTION VALUE ...]
       python training/run.py [CONFIG.yaml | CONFIG.json] [--OPTION VALUE ...]"""

# Help lines kept within 80 columns, the width argparse formats the options to.
DESCRIPTION = """\
Train, evaluate or predict with a DMIL model on DMILTrainer's stages. The
options are those of transformers' example scripts (run_classification.py):
--do_train, --do_eval and --do_predict are false unless given.

Config file rule: a leading CONFIG.yaml or CONFIG.json (keys: the option names
below) gives the base values, and the options given on the command line
override them one by one (`none` unsets an option whose unset value is None).
Without a config file:
  - no data and no model named: the default job,
    training/configs/synthetic_tiny.yaml (DMIL on the built-in synthetic
    benchmark with tiny backbones, on CPU, about ten minutes); it sets
    do_train and do_eval, so a bare `run.py` trains and evaluates;
  - data or backbones named (--train_file, --validation_file, --test_file,
    --dataset_name other than synthetic, --text_model, --vision_model,
    --audio_model, --modality): training/configs/own_data.yaml (stage learning
    rates, epochs, batch size, logging and evaluation for your own data);
  - only --model_name_or_path: the options' defaults, on the built-in
    benchmark (e.g. --do_eval scores a model trained on it, training nothing).

Your csv (text, image-path, audio-path, label columns), on the own-data job:

  python training/run.py --do_train --do_eval --train_file train.csv \\
      --validation_file val.csv --text_model backbones/text \\
      --vision_model backbones/vision --audio_model backbones/audio \\
      --image_column_name image_path --audio_column_name wav_path

Evaluate and predict with a saved model, training nothing (--do_predict
writes predictions.csv: each row's prediction, score and interaction weights):

  python training/run.py --model_name_or_path outputs/dmil-own-data/final \\
      --do_eval --do_predict --validation_file val.csv --test_file test.csv \\
      --image_column_name image_path --audio_column_name wav_path

The same csv on CPU with BERT-base, ViT-B/16 and wav2vec2-base (the
base_pretrained job without bf16):

  accelerate launch --cpu --num_processes 1 --num_machines 1 \\
      --mixed_precision no --dynamo_backend no \\
      training/run.py training/configs/base_pretrained.yaml \\
      --bf16 false --use_cpu true --do_train --do_eval \\
      --train_file train.csv --validation_file val.csv \\
      --image_column_name image_path --audio_column_name wav_path

Old option names (--init_from, --dataset, --label_column, --image_column, ...)
still work for one release, with a warning naming the new one. User errors end
with the message and exit status 2; Ctrl-C says how to resume.
"""

DMIL_GROUP = "DMIL training options (added to TrainingArguments by DMILTrainingArguments)"
DMIL_GROUP_DESCRIPTION = textwrap.fill(
    "A stage's stageK_* option left unset falls back to the TrainingArguments option of that name "
    "(num_train_epochs, max_steps, learning_rate).", width=78,
)
TRAINER_GROUP = "transformers TrainingArguments options (the Trainer's own)"
MODE_HELP = {
    "do_train": "Train the stages of --stages (a new model, or --model_name_or_path's).",
    "do_eval": "Evaluate the final (or --model_name_or_path) model on the validation split and write "
               "eval_results.json and the plots.",
    "do_predict": "Predict the test split (--test_file, --test_split_name) and write predictions.csv (each row's "
                  "prediction, its score, its label if any, its interaction weights) and predict_results.json.",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the description as written (its example commands keep their lines) and each option's default."""


def worker_count(text: str) -> int | None:
    """A --dataloader_num_workers value: a number of processes, or None for `auto` (`dataloader_workers`)."""
    if text.strip().lower() == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a number of processes (0 or more) or 'auto', got {text!r}")
    return count


def _or_none(convert):
    """`convert`, except that `none` / `null` (any case) is None: a flag's way to unset a config file's value."""

    def parse(text: str):
        return None if text.strip().lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its error messages
    return parse


def make_parser() -> HfArgumentParser:
    """HfArgumentParser over ModelArguments, DataTrainingArguments and DMILTrainingArguments, with --help grouped
    (model, data, DMIL training, TrainingArguments), `none` for the options whose unset value is None, and
    `--dataloader_num_workers auto`."""
    dataclass_types = (ModelArguments, DataTrainingArguments, DMILTrainingArguments)
    parser = HfArgumentParser(dataclass_types, usage=USAGE, description=DESCRIPTION, formatter_class=HelpFormatter)
    for name, help_text in MODE_HELP.items():
        parser._option_string_actions[f"--{name}"].help = help_text
    workers = parser._option_string_actions["--dataloader_num_workers"]
    workers.type, workers.default = worker_count, "auto"  # a string default goes through `type`: auto arrives as None
    workers.help = (f"Data loading processes per training process. 'auto': min({AUTO_WORKERS_MAX}, this machine's "
                    "CPUs per training process - 1). A number above the CPU count is lowered to it.")
    defaults = {f.name: f.default for dtype in dataclass_types for f in dataclasses.fields(dtype) if f.init}
    for action in parser._actions:
        if defaults.get(action.dest, 0) is None and action.type and not action.choices:
            action.type = _or_none(action.type)
    # DMILTrainingArguments has no group of its own (one would mix DMIL's fields with the Trainer's): its options
    # move from the general list into two groups. Help reads `_group_actions`; parsing does not.
    trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    dmil_group = parser.add_argument_group(DMIL_GROUP, DMIL_GROUP_DESCRIPTION)
    trainer_group = parser.add_argument_group(TRAINER_GROUP)
    dmil_fields = {f.name for f in dataclasses.fields(DMILTrainingArguments)}
    for action in [a for a in parser._optionals._group_actions if a.dest in dmil_fields]:
        parser._optionals._group_actions.remove(action)
        (trainer_group if action.dest in trainer_fields else dmil_group)._group_actions.append(action)
    return parser


def _new_name(name: str, where: str) -> str:
    """`name` with a deprecated spelling replaced by the new one, with a warning saying so."""
    new = DEPRECATED_NAMES.get(name.replace("-", "_"))
    if new is None:
        return name
    logger.warning("%s%s is deprecated and will be removed in the next release: use %s%s", where, name, where, new)
    return new


def rename_deprecated(argv: list[str]) -> list[str]:
    """The flags with old spellings (`--init_from`, `--dataset`, `--label_column`, ...) turned into the new ones."""
    renamed = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = f"--{_new_name(name, '--')}{sep}{value}"
        renamed.append(arg)
    return renamed


def split_config_file(argv: list[str]) -> tuple[str | None, list[str]]:
    """The job's config file and the flags that override it: a leading `.yaml`/`.yml`/`.json` argument; else the
    own-data job when the flags name the user's data or backbones; else no file when they name a model
    (`--model_name_or_path`: the options' defaults, on the built-in benchmark); else the default job. `--help` reads
    no file: it lists the options' own defaults."""
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        return argv[0], argv[1:]
    if {"-h", "--help"} & set(argv):
        return None, argv
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--dataset_name", default="synthetic")
    names = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    if names & OWN_DATA_FLAGS or peek.parse_known_args(argv)[0].dataset_name != "synthetic":
        return str(OWN_DATA_CONFIG), argv
    if "model_name_or_path" in names:
        return None, argv
    return str(DEFAULT_CONFIG), argv


def config_values(config_file: str, parser: HfArgumentParser) -> dict:
    """A config file's values (YAML is a superset of JSON), old key names renamed, unknown keys refused."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file} not found")
    with open(config_file) as f:
        values = {_new_name(key, "config key "): value for key, value in (yaml.safe_load(f) or {}).items()}
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_file}: unknown option(s) {unknown}; the keys are the names of run.py's options")
    return values


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataTrainingArguments, DMILTrainingArguments, str | None]:
    """The run's arguments and its config file (`split_config_file`): the file's values are the parser's defaults,
    so each flag given overrides its one value."""
    config_file, flags = split_config_file(rename_deprecated(argv))
    parser = make_parser()
    if config_file:
        parser.set_defaults(**config_values(config_file, parser))
    namespace, unknown = parser.parse_known_args(flags)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    for dest, value in vars(namespace).items():
        if isinstance(value, list) and None in value:  # `--modality none`: unset; `--modality a none` is an error
            if len(value) > 1:
                parser.error(f"--{dest}: none unsets the option, it cannot be one of several values")
            setattr(namespace, dest, None)
    # Resolved before TrainingArguments sees it: its __post_init__ checks settings against the worker count.
    namespace.dataloader_num_workers = dataloader_workers(namespace.dataloader_num_workers)
    model_args, data_args, training_args = (
        dtype(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(dtype) if f.init})
        for dtype in parser.dataclass_types
    )
    # TrainingArguments turns do_eval on whenever eval_strategy is not "no"; here --do_eval is the final evaluation
    # (and a run without training's only work), so the value given stands.
    training_args.do_eval = namespace.do_eval
    training_args.resume_from_checkpoint = resume_value(training_args.resume_from_checkpoint)
    return model_args, data_args, training_args, config_file


def resume_value(flag: str | None) -> str | bool | None:
    """What `--resume_from_checkpoint` asks DMILTrainer.train for: `true` resumes the whole run (finished stages
    loaded), `false` nothing, anything else is a checkpoint: a path, or one on the Hub (`hf://USER/NAME/last-checkpoint`,
    docs/hub.md) (TrainingArguments types the field as a string)."""
    if flag is None or flag.strip().lower() == "false":
        return None
    return True if flag.strip().lower() == "true" else flag


# The files a run writes to output_dir besides the model.
EVAL_RESULTS, PREDICT_RESULTS, PREDICTIONS = "eval_results.json", "predict_results.json", "predictions.csv"


def check_modes(model_args: ModelArguments, training_args: DMILTrainingArguments) -> None:
    """--do_train / --do_eval / --do_predict, checked before anything loads. A run that does not train evaluates or
    predicts with --model_name_or_path's saved model and writes nothing but its result files, none of which it may
    overwrite (unless --overwrite_output_dir)."""
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ValueError("nothing to do: give --do_train, --do_eval and/or --do_predict (each is false unless given)")
    if training_args.do_train:
        return
    if not model_args.model_name_or_path:
        raise ValueError("--do_eval / --do_predict without --do_train need a saved model: give it with "
                         "--model_name_or_path PATH (e.g. OUTPUT_DIR/final of an earlier run)")
    if training_args.resume_from_checkpoint:
        raise ValueError("--resume_from_checkpoint continues training: it needs --do_train")
    written = [EVAL_RESULTS] * training_args.do_eval + [PREDICT_RESULTS, PREDICTIONS] * training_args.do_predict
    existing = [name for name in written if os.path.exists(os.path.join(training_args.output_dir, name))]
    if existing and not training_args.overwrite_output_dir:
        raise ValueError(
            f"output_dir {training_args.output_dir} already holds {', '.join(existing)}: give another --output_dir, "
            "or --overwrite_output_dir to replace the result files there (nothing else in it is touched)"
        )


def claim_result_files(training_args: DMILTrainingArguments) -> None:
    """A run that does not train writes only result files: check before anything loads that it can write them, and
    under --overwrite_output_dir remove every result file an earlier run left (a predict_results.json of another model
    must not sit beside this run's predictions.csv). A training run's folder is the trainer's (DMILTrainer.train)."""
    from dmil_hf.training.run_folder import RunFolder, check_writable

    if training_args.do_train or not training_args.should_save:
        return
    check_writable(training_args.output_dir)
    if training_args.overwrite_output_dir:
        for path in RunFolder(training_args.output_dir).result_files():
            logger.warning("--overwrite_output_dir: deleting %s, left by an earlier run", path)
            os.remove(path)


def check_splits(training_args: DMILTrainingArguments, evaluation, test) -> None:
    """The splits the modes need, before anything trains. Without an evaluation split, the config's eval_strategy is
    turned off, with a warning (the Trainer would refuse it)."""
    if training_args.do_predict and test is None:
        raise ValueError("--do_predict needs data to predict: give --test_file (or a dataset with a --test_split_name "
                         "split, 'test' by default)")
    if training_args.do_predict and len(test) == 0:
        raise ValueError("--do_predict: the dataset's test split has no rows (--test_split_name)")
    if evaluation is None and training_args.do_eval and not training_args.do_train:
        raise ValueError("--do_eval needs an evaluation split: give --validation_file (or --validation_split_name)")
    if evaluation is None and training_args.eval_strategy != "no":
        if training_args.do_train:
            logger.warning("no evaluation data: nothing is evaluated during training (eval_strategy %s -> no)",
                           training_args.eval_strategy.value)
        from transformers.trainer_utils import IntervalStrategy

        training_args.eval_strategy = IntervalStrategy.NO


def run_title(config) -> str:
    """What the console calls the run: DMIL, or the baseline it is (a paradigm without an interaction gate)."""
    return "DMIL" if config.paradigm == "dmil" else f"{config.paradigm} baseline"


def print_stage_table(config, stage_results: dict) -> None:
    """The per-stage table of a training run: each stage's losses and the evaluation it ended with."""
    if not stage_results:
        return
    bce = any("eval_bce_final" in m for m in stage_results.values())
    columns = (
        [("eval MSE of the prediction", "eval_mse"), ("eval MAE", "eval_mae"), ("eval Pearson r", "eval_pearson")]
        if config.problem_type == "regression" else
        [(f"eval {'BCE' if bce else 'CE'} of the prediction", "eval_bce_final" if bce else "eval_ce_final"),
         ("eval accuracy", "eval_accuracy"), ("eval macro-F1", "eval_f1_macro")]
    )
    print(f"\n== {run_title(config)} run: per-stage results ==")
    print("| stage | train loss (all terms) | eval loss (all terms) | " + " | ".join(c for c, _ in columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for stage, m in sorted(stage_results.items()):
        cells = [m.get("train_loss"), m.get("eval_loss"), *[m.get(key) for _, key in columns]]
        print(f"| {stage} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    if len(stage_results) > 1:
        print("(A stage's loss sums every term it counts, and stage 3 counts the most, so losses grow from stage to "
              "stage; the prediction's CE is comparable across stages.)")


def print_results(config, metrics: dict, prefix: str, rows: int) -> None:
    """The final model's result on one split (`prefix`: eval or predict), from its one prediction pass: the metric
    per interaction type (with DMIL's mean gate weights) and the headline metrics."""
    from dmil_hf.evaluation import per_type_summary

    components = config.interaction_components if config.paradigm == "dmil" else []
    metric = "mae" if config.problem_type == "regression" else "accuracy"
    table = per_type_summary(metrics, components, prefix=f"{prefix}_", metric=metric)
    if table:
        gates_title = " and mean gate weights" if components else ""
        print(f"\n== final model, {prefix} split: {metric}{gates_title} per interaction type ==")
        print(f"| type | {metric} |" + "".join(f" gate {c} |" for c in components))
        print("|---|---|" + "---|" * len(components))
        for kind, value, gates in table:
            print(f"| {kind} | {value:.4f} |" + "".join(" - |" if g is None else f" {g:.3f} |" for g in gates))
    keys = ("accuracy", "f1_micro", "f1_macro", "synergy_indicator", "mae", "pearson")
    headline = [f"{prefix}_{k}={metrics[f'{prefix}_{k}']:.4f}" for k in keys if f"{prefix}_{k}" in metrics]
    if headline:
        print(f"\nfinal model on {rows} {prefix} rows: {', '.join(headline)}")


def setup_logging() -> None:
    """This script's and dmil_hf's messages from INFO up on stderr; transformers' follow the Trainer's --log_level."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    logging.getLogger("dmil_hf").setLevel(logging.INFO)
    # transformers' own bars (writing and loading weights) would nest inside a stage's training bar on the console.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


# Where main() trains, for the resume line after Ctrl-C (None before parsing, and for a run that does not train).
RUN_FOLDER: dict[str, str | None] = {"output_dir": None}
# User errors: a wrong column, an unseen label, a missing file, a bad option value.
# A diverged run (a learning rate too high) and an output folder that cannot be written are the user's to fix too.
USER_ERRORS = (ValueError, FileNotFoundError, ArithmeticError, OSError)


def write_json(path: str, values: dict) -> str:
    with open(path, "w") as f:
        json.dump(values, f, indent=2, default=float)
    return path


def data_preparation(training_args: TrainingArguments):
    """The context the data and the model are prepared in: the main process first (it fills the `datasets` cache
    that the others then read), except under DeepSpeed ZeRO-3. There transformers builds every model inside
    `deepspeed.zero.Init` (the Trainer's arguments register the ZeRO-3 config, whatever accelerate's
    `zero3_init_flag` says), which partitions each parameter as it is created: a collective that every process must
    enter together, so one process building the model while the others wait at the barrier would wait forever."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    return training_args.main_process_first(desc="dataset preparation")


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    model_args, data_args, training_args, config_file = parse_arguments(sys.argv[1:] if argv is None else argv)
    check_modes(model_args, training_args)
    claim_result_files(training_args)
    RUN_FOLDER["output_dir"] = training_args.output_dir if training_args.do_train else None
    from transformers import AutoModel, set_seed

    from dmil_hf import DMILForMultimodalClassification, DMILTrainer
    from dmil_hf.evaluation import make_compute_metrics
    from dmil_hf.evaluation.plots import save_plots
    from dmil_hf.evaluation.predictions import write_predictions
    from dmil_hf.hub.publisher import DMILHubUploadError

    set_seed(training_args.seed)
    collator = None
    with data_preparation(training_args):
        if data_args.dataset_name == "synthetic" and not (
            data_args.train_file or data_args.validation_file or data_args.test_file
        ):
            train, evaluation, config, processor = load_synthetic(data_args, model_args, training_args.seed)
            train, evaluation = select_samples(train, evaluation, data_args)
            test = first_rows(evaluation, data_args.max_predict_samples)  # the benchmark's held-out split
            # From the config through AutoModel (not the class's constructor): under DeepSpeed ZeRO-3 transformers
            # then builds the whole model inside one zero.Init and initializes it gathered, where the constructor
            # would initialize the already partitioned backbones again (empty tensors on all but one process).
            model = (DMILForMultimodalClassification.from_pretrained(model_args.model_name_or_path)
                     if model_args.model_name_or_path else AutoModel.from_config(config))
        else:
            model, processor, collator, splits = prepare_user_data(model_args, data_args, training_args.do_train)
            train, evaluation, test = splits["training"], splits["validation"], splits["test"]
            training_args.remove_unused_columns = False  # the collator reads the raw columns
    check_splits(training_args, evaluation, test)
    if collator is not None and collator.columns:  # the user's data: its media files opened before anything trains
        check_media(data_args, model.config, collator.columns,
                    {"training": train, "validation": evaluation, "test": test})
    if data_args.id_column_name is not None and (test is None or data_args.id_column_name not in test.column_names):
        raise ValueError(f"--id_column_name {data_args.id_column_name!r} is not a column of the test data "
                         f"(columns: {test.column_names if test is not None else 'no test data'})")

    def interaction_types(dataset):
        column = data_args.interaction_type_column_name
        return dataset[column] if dataset is not None and column in dataset.column_names else None

    def metrics_for(dataset):
        return make_compute_metrics(model.config, interaction_types=interaction_types(dataset))

    trainer = DMILTrainer(
        model=model, args=training_args, train_dataset=train if training_args.do_train else None,
        eval_dataset=evaluation, data_collator=collator, processing_class=processor,
        compute_metrics=metrics_for(evaluation) if evaluation is not None else None,
        # The run identity records the training data by its file's content (a Hub dataset or the synthetic one by
        # the dataset itself).
        data_files={"train": data_args.train_file} if data_args.train_file else None,
    )
    modes = [name for name in ("train", "eval", "predict") if getattr(training_args, f"do_{name}")]
    print(f"\n{run_title(model.config)} run on {', '.join(model.config.modalities)}: {', '.join(modes)}; "
          f"config {config_file or 'none (options only)'}", flush=True)
    # An upload that fails after training ends train() with DMILHubUploadError once every stage is saved: the run is
    # finished and reported here, then fails with that error, which names the command to push it.
    push_error = final_dir = None
    results = {}
    if training_args.do_train:
        try:
            trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        except DMILHubUploadError as err:
            push_error = err
        # train() writes final/ once the model is complete; a run of fewer stages (--stages 1,2) gets one here too.
        final_dir = trainer.final_dir or trainer.save_final(os.path.join(training_args.output_dir, "final"))
        results["stages"] = {str(k): v for k, v in trainer.stage_results.items()}
    # One pass per split: each PredictionOutput gives the metrics, the tables, the plots and predictions.csv.
    predictions = {}
    for prefix, dataset, wanted in (("eval", evaluation, training_args.do_eval),
                                    ("predict", test, training_args.do_predict)):
        if wanted and dataset is not None:
            trainer.compute_metrics = metrics_for(dataset)
            predictions[prefix] = trainer.predict(dataset, metric_key_prefix=prefix)
    eval_output, predict_output = predictions.get("eval"), predictions.get("predict")
    metrics = {**(eval_output.metrics if eval_output else {}), **results}
    written = []
    if trainer.is_world_process_zero():
        out = training_args.output_dir
        os.makedirs(out, exist_ok=True)
        if training_args.do_train or eval_output:
            written.append(write_json(os.path.join(out, EVAL_RESULTS), metrics))
        if eval_output:
            plots = save_plots(eval_output, model.config, os.path.join(final_dir or out, "plots"),
                               log_history=trainer.run_log_history, interaction_types=interaction_types(evaluation))
            if plots and final_dir:
                trainer.write_model_card(final_dir)  # the card written with final/ links the plots drawn since
            written += plots
        if predict_output:
            written.append(os.path.join(out, PREDICTIONS))
            id_column = data_args.id_column_name
            write_predictions(predict_output, model.config, written[-1],
                              ids=test[id_column] if id_column else None, id_name=id_column or "id")
            if predict_output.label_ids is not None:  # test metrics need the test labels
                written.append(write_json(os.path.join(out, PREDICT_RESULTS), predict_output.metrics))
        print_stage_table(model.config, trainer.stage_results if training_args.do_train else {})
        for prefix, dataset in (("eval", evaluation), ("predict", test)):
            if prefix in predictions:
                print_results(model.config, predictions[prefix].metrics, prefix, len(dataset))
        model_line = (f"final model: {final_dir}" if final_dir
                      else f"model: {model_args.model_name_or_path} (not trained)")
        print(f"\nconfig: {config_file or 'none'}; {model_line}; results: {', '.join(written) or 'none'}")
    if push_error is not None:
        raise push_error
    # The final evaluation's metrics, with the stages' (training) and the test split's (--do_predict) under their keys.
    return {**metrics, "predict": predict_output.metrics} if predict_output else metrics


def cli(argv: list[str] | None = None) -> int:
    """main() as a command: a user error ends with its message and exit status 2, Ctrl-C with one line saying how to
    resume (exit status 130)."""
    try:
        main(argv)
    except KeyboardInterrupt:
        folder = RUN_FOLDER["output_dir"]
        if int(os.environ.get("RANK", "0")) == 0:
            print("\ninterrupted" + (f": continue with the same command and --resume_from_checkpoint true "
                                     f"--output_dir {folder}" if folder else ""), file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
