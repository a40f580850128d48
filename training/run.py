#!/usr/bin/env python
"""Train a DMIL model (or a joint / ensemble baseline) with DMILTrainer.

    accelerate launch training/run.py                                  # built-in synthetic benchmark, tiny backbones
    accelerate launch training/run.py --output_dir out --max_steps 10  # the same job with two values changed
    accelerate launch --mixed_precision bf16 training/run.py training/configs/base_pretrained.yaml --train_file my.csv
    python training/run.py my.json --stage3_learning_rate 1e-4         # plain python works too
    python training/run.py --help                                      # the job, an example, options by group

A job is a config file plus flags. A leading `.yaml`/`.yml`/`.json` file is the base; without one the base is the
own-data job, `training/configs/own_data.yaml`, when the flags name the user's data or backbones (`OWN_JOB_FLAGS`), else
the default job, `training/configs/synthetic_tiny.yaml`. Flags override the base's values one by one, and `none` unsets
an option whose unset value is None (`RunArgumentParser`).

Modes, as in transformers' example scripts: `--do_train` (on by default here), `--do_eval` (on: the final evaluation)
and `--do_predict` (off: predictions.csv of the test split, `--test_file` or `--test_split`). `--do_train false`
evaluates and/or predicts with `--init_from`'s saved model and writes nothing but its result files. The script has no Accelerate code of its own: devices, mixed
precision (`--bf16 true`) and distribution (DDP/FSDP/DeepSpeed) come from `accelerate launch` through the Trainer.
`--dataloader_num_workers` not set (or `auto`) is derived from the machine's CPU count (`dataloader_workers`).

Data: the built-in synthetic interaction benchmark (`--dataset synthetic`), a Hub dataset name, a folder written by
`datasets.save_to_disk`, or local csv/json/parquet files (`--train_file`, `--validation_file`) with text, image-path
and audio-path columns (names set by `--text_column`, `--image_column`, `--audio_column`, `--label_column`).
Raw columns are turned into model inputs by a `DMILProcessor` built from the backbones' own processors. Each of the
model's modalities must have its column (a column of a modality without a backbone is left unused). The model's
label2id is the one label map: built from the training labels for a new model, the saved one with `--init_from`; every
label must be one of its classes, and every validation label must occur in the training data.

Runs: an `--output_dir` that already holds a run is refused. `--resume_from_checkpoint true` continues it (finished
stages are loaded, the interrupted one resumes from its last complete checkpoint), `--resume_from_checkpoint PATH`
resumes from that checkpoint, and `--overwrite_output_dir true` deletes the earlier run's stages and final model first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from transformers import HfArgumentParser

if TYPE_CHECKING:  # imported where used, so that parsing arguments stays quick
    from datasets import Dataset
    from transformers import PretrainedConfig

    from dmil_hf import DMILTrainingArguments

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "synthetic_tiny.yaml"

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    _argument_group_name = "model options (ModelArguments)"  # HfArgumentParser's --help group; not a field

    text_model: str | None = field(default=None, metadata={"help": "Hub id or local path of the text backbone."})
    vision_model: str | None = field(default=None, metadata={"help": "Hub id or local path of the vision backbone."})
    audio_model: str | None = field(default=None, metadata={"help": "Hub id or local path of the audio backbone."})
    modality: list[str] | None = field(
        default=None,
        metadata={
            "help": "The modality table instead of --text_model/--vision_model/--audio_model: one NAME:KIND:BACKBONE "
            "per modality (KIND: text, image, video, audio, features; BACKBONE: Hub id or local path), with "
            "':FRAMES' for a video's frame count, e.g. --modality rgb:video:google/vit-base-patch16-224:8 "
            "flow:video:google/vit-base-patch16-224:8 audio:audio:facebook/wav2vec2-base. Each modality reads the "
            "column of its name (see --modality_column)."
        },
    )
    init_from: str | None = field(default=None, metadata={"help": "A saved DMIL model to start from instead."})
    paradigm: str = field(
        default="dmil",
        metadata={"help": "'dmil', 'joint', 'ensemble', 'two_stage' or 'i2m2' (dmil_hf.models.dmil.configuration_dmil.PARADIGMS)."},
    )
    dmil_preset: str = field(
        default="default",
        metadata={"help": "'default' (the library's DMIL) or 'reference' (DMILConfig.reference(): the authors' code)."},
    )
    latent_dim: int = field(default=128, metadata={"help": "Dimension of the decomposition's latents."})
    problem_type: str | None = field(
        default=None,
        metadata={"help": "'single_label_classification', 'multi_label_classification' or 'regression' (default: "
                          "from the label column: numbers with a fraction or float features a regression, lists "
                          "multi-hot rows or class names, otherwise class ids or names)."},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. 'sdpa' or 'eager' for the backbones."})
    check_inputs: bool = field(default=True, metadata={"help": "NaN/label-range checks (one host sync per step)."})
    fast_paths: list[str] | None = field(
        default=None,
        metadata={"help": "Faster, numerically equivalent backbone computations (DMILConfig.fast_paths), e.g. "
                          "positional_conv_unfold (wav2vec2-family positional convolution)."},
    )


@dataclass
class DataArguments:
    _argument_group_name = "data options (DataArguments)"

    dataset: str = field(
        default="synthetic",
        metadata={"help": "'synthetic', a Hub dataset name, or a load_from_disk folder. Ignored with --train_file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Local csv/json/parquet training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local csv/json/parquet evaluation file."})
    test_file: str | None = field(
        default=None, metadata={"help": "Local csv/json/parquet file that --do_predict predicts (labels optional)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate on (default: validation/test)."})
    test_split: str = field(
        default="test", metadata={"help": "Split that --do_predict predicts (a Hub dataset, a load_from_disk folder)."}
    )
    text_column: str = field(default="text", metadata={"help": "Column with the text."})
    image_column: str = field(default="image", metadata={"help": "Column with images or image paths."})
    audio_column: str = field(default="audio", metadata={"help": "Column with waveforms or audio paths."})
    label_column: str = field(default="label", metadata={"help": "Column with the class (id or name)."})
    modality_column: list[str] | None = field(
        default=None,
        metadata={"help": "NAME=COLUMN for a --modality whose column is not named after it, e.g. rgb=frames."},
    )
    interaction_type_column: str = field(
        default="interaction_type", metadata={"help": "Optional column with known interaction types, for metrics."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    synthetic_modalities: str = field(default="text,vision,audio", metadata={"help": "Synthetic benchmark modalities."})
    synthetic_mixture: str = field(default="half_U_half_R", metadata={"help": "Synthetic mixture name."})
    synthetic_num_labels: int = field(default=4, metadata={"help": "Synthetic benchmark classes."})
    synthetic_train_size: int = field(default=2000, metadata={"help": "Synthetic training samples."})
    synthetic_eval_size: int = field(default=600, metadata={"help": "Synthetic evaluation samples."})
    synthetic_dominant_modality: str | None = field(default=None, metadata={"help": "Cleaner modality, if any."})


def _to_cli(values: dict) -> list[str]:
    """Turn a config file's mapping into flags, so the file and the command line go through one parser. A `null`
    leaves the option at its default: None for the options that take `none` (`RunArgumentParser`)."""
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


USAGE = """accelerate launch training/run.py [CONFIG.yaml | CONFIG.json] [--OPTION VALUE ...]
       python training/run.py [CONFIG.yaml | CONFIG.json] [--OPTION VALUE ...]"""

# Help lines kept within 80 columns, the width argparse formats the options to.
DESCRIPTION = """\
Train a DMIL model (or a joint / ensemble baseline) with DMILTrainer's three
stages.

A job is a config file plus options. A leading CONFIG.yaml or CONFIG.json
(keys: the option names below) is the base. Without one, options that name
your data or backbones (--train_file, --validation_file, --test_file,
--dataset other than synthetic, --text_model, --vision_model, --audio_model,
--modality, --init_from) start from the own-data job,
training/configs/own_data.yaml (stage learning rates 2e-4 / 3e-3 / 2e-4,
10 / 5 / 5 epochs, batch size 8, the loss logged ~20 times a stage, the
validation set scored every epoch); any other run is the default job,
training/configs/synthetic_tiny.yaml: DMIL on the built-in synthetic benchmark
with tiny backbones, on CPU, in about ten minutes. The options given override
the base's values one by one, and `none` unsets an option whose unset value is
None. Ready jobs: training/configs/*.yaml.

Your csv (text, image-path, audio-path, label columns), on the own-data job:

  python training/run.py --train_file train.csv \\
      --validation_file val.csv --text_model backbones/text \\
      --vision_model backbones/vision --audio_model backbones/audio \\
      --image_column image_path --audio_column wav_path

Evaluate and predict with a saved model, training nothing (--do_predict
writes predictions.csv: each row's label, score and interaction weights):

  python training/run.py --init_from outputs/dmil-own-data/final \\
      --do_train false --do_predict true --validation_file val.csv \\
      --test_file test.csv --image_column image_path --audio_column wav_path

The same csv on CPU with BERT-base, ViT-B/16 and wav2vec2-base (the
base_pretrained job without bf16):

  accelerate launch --cpu --num_processes 1 --num_machines 1 \\
      --mixed_precision no --dynamo_backend no \\
      training/run.py training/configs/base_pretrained.yaml \\
      --bf16 false --use_cpu true \\
      --train_file train.csv --validation_file val.csv \\
      --text_column text --image_column image_path \\
      --audio_column wav_path --label_column label

On a GPU: `accelerate launch --mixed_precision bf16 training/run.py
training/configs/base_pretrained.yaml` and the data options.

The options, by group: model, data, DMIL training, then transformers'
TrainingArguments.
"""

DMIL_GROUP = "DMIL training options (added to TrainingArguments by DMILTrainingArguments)"
# Wrapped here: the raw description formatter keeps a group description's lines as they are.
DMIL_GROUP_DESCRIPTION = textwrap.fill(
    "A stage's stageK_* option left unset falls back to the TrainingArguments option of that name "
    "(num_train_epochs, max_steps, learning_rate).", width=78,
)
TRAINER_GROUP = "transformers TrainingArguments options (the Trainer's own)"
TRAINER_GROUP_DESCRIPTION = textwrap.fill(
    "As in any transformers training script. Every stage trains with these, except for what a DMIL stage option "
    "above sets. Devices, mixed precision and distribution also come from `accelerate launch`.", width=78,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the description as written (its example command keeps its lines) and each option's default."""


# The most data loader workers `auto` starts per training process: enough to decode a batch's images and audio ahead
# of the step; more only take cores (and memory) from the training process.
AUTO_WORKERS_MAX = 4


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


def dataloader_workers(requested: int | None) -> int:
    """The --dataloader_num_workers to train with on this machine.

    `auto` (None): min(AUTO_WORKERS_MAX, CPUs per training process - 1), at least 0, and logged. The training process
    keeps a core for itself, and the processes launched together on this machine (`LOCAL_WORLD_SIZE`, set by
    `accelerate launch` / torchrun) share its CPUs. A number is kept, but lowered to `os.cpu_count()` with a warning:
    more workers than cores only compete with training for them, and torch's DataLoader warns each time it starts
    them.
    """
    cpus = os.cpu_count() or 1
    if requested is None:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        workers = max(0, min(AUTO_WORKERS_MAX, cpus // processes - 1))
        logger.info("dataloader_num_workers=%d (auto: %d CPUs, %d training process(es) on this machine)",
                    workers, cpus, processes)
        return workers
    if requested > cpus:
        logger.warning("dataloader_num_workers=%d is more than this machine's %d CPUs; using %d",
                       requested, cpus, cpus)
        return cpus
    return requested


# What a flag says to unset an option whose unset value is None (any case): Python's and YAML/JSON's spellings.
NONE_WORDS = frozenset({"none", "null"})


def _or_none(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert`, except that a word of NONE_WORDS is None."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() in NONE_WORDS else convert(text)

    # argparse names the type in its error messages ("invalid float value: 'x'").
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _union_members(hint: Any) -> tuple:
    """The members of a `X | Y` / `Union[X, Y]` type hint, or `(hint,)`."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


class RunArgumentParser(HfArgumentParser):
    """HfArgumentParser over this script's ModelArguments, DataArguments and DMILTrainingArguments, made to take a
    config file's values and then override them with flags, option by option.

    Flags follow the config file's values in one argument list, and argparse keeps an option's last value. On top of
    HfArgumentParser:
    - an option whose unset value is None takes `none` (or `null`) for None, so that a flag can unset a value the
      config file set (`--save_total_limit none`, `--modality none`); HfArgumentParser offers no way to;
    - an option typed `str | list[str]` (`report_to`, `optim_target_modules`) takes several values, which
      HfArgumentParser types as one string, so that a config file's list (`report_to: [tensorboard, wandb]`) and the
      same flag parse. One value still arrives as the string it was.

    `--dataloader_num_workers` takes `auto`, its default: a number derived from the machine (`dataloader_workers`).

    Its --help leads with the usage, the job's config file and an example, and lists the options by group: model,
    data, DMIL training, then transformers' TrainingArguments.
    """

    def __init__(self) -> None:
        from dmil_hf import DMILTrainingArguments

        dataclass_types = (ModelArguments, DataArguments, DMILTrainingArguments)
        super().__init__(dataclass_types, usage=USAGE, description=DESCRIPTION, formatter_class=HelpFormatter)
        self._group_training_options(DMILTrainingArguments)
        # The script trains and evaluates unless told not to (transformers' example scripts do neither by default,
        # but this one has a default job to run with no arguments at all); --do_predict stays off.
        for name, help_text in (
            ("do_train", "Train (the stages of --stages). false: evaluate and/or predict with --init_from's saved "
                         "model; nothing is trained, saved or overwritten."),
            ("do_eval", "Evaluate the final (or --init_from) model on the evaluation split (--validation_file, "
                        "--eval_split) and write eval_results.json."),
            ("do_predict", "Predict the test split (--test_file, --test_split) and write predictions.csv (each "
                           "row's prediction with its score, per-label scores or value by problem type, its label "
                           "if any, its interaction weights) and predict_results.json."),
        ):
            action = self._option_string_actions[f"--{name}"]
            action.default, action.help = name != "do_predict", help_text
        workers = self._option_string_actions["--dataloader_num_workers"]
        # A string default goes through `type` when the option is not given: "auto" arrives as None.
        workers.type, workers.default = worker_count, "auto"
        workers.help = (
            f"Data loading processes per training process. 'auto': min({AUTO_WORKERS_MAX}, this machine's CPUs per "
            "training process - 1). A number above the machine's CPU count is lowered to it."
        )
        # HfArgumentParser narrows each field's type in place (e.g. `None | str | list[str]` to `str`): read the hints.
        hints = {name: hint for dtype in dataclass_types for name, hint in typing.get_type_hints(dtype).items()}
        self._lists_or_none: set[str] = set()
        self._strings_or_lists: set[str] = set()
        for dtype in dataclass_types:
            for field_ in dataclasses.fields(dtype):
                action = self._option_string_actions.get(f"--{field_.name}")
                if not field_.init or action is None:
                    continue
                members = _union_members(hints[field_.name])
                if field_.default is None and type(None) in members and action.type and not action.choices:
                    action.type = _or_none(action.type)
                    if action.nargs == "+":
                        self._lists_or_none.add(action.dest)
                if str in members and any(typing.get_origin(m) is list for m in members):
                    action.nargs = "+"
                    self._strings_or_lists.add(action.dest)

    def _group_training_options(self, training_type: type[DMILTrainingArguments]) -> None:
        """Move `training_type`'s options into two help groups after the model and data ones: the fields DMIL adds
        to TrainingArguments, then TrainingArguments' own.

        DMILTrainingArguments has no `_argument_group_name` (a group for it would mix both kinds), so HfArgumentParser
        leaves its options among the parser's general ones, listed before every group. Help lists a group's
        `_group_actions` in the order of the parser's `_action_groups`; parsing does not read either.
        """
        from transformers import TrainingArguments

        trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        dmil_fields = {f.name for f in dataclasses.fields(training_type)} - trainer_fields
        dmil_group = self.add_argument_group(DMIL_GROUP, DMIL_GROUP_DESCRIPTION)
        trainer_group = self.add_argument_group(TRAINER_GROUP, TRAINER_GROUP_DESCRIPTION)
        general = self._optionals._group_actions
        for action in list(general):
            group = dmil_group if action.dest in dmil_fields else trainer_group if action.dest in trainer_fields else None
            if group is not None:
                general.remove(action)
                group._group_actions.append(action)

    def parse_known_args(
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's parse (every other parse method goes through it), then the values argparse cannot settle
        option by option: `none` among a list's values, one value of a `str | list[str]` option, the worker count."""
        namespace, remaining = super().parse_known_args(args, namespace)
        for dest in self._lists_or_none:
            values = getattr(namespace, dest, None)
            if isinstance(values, list) and None in values:
                if len(values) > 1:
                    self.error(f"--{dest}: none unsets the option, it cannot be one of several values")
                setattr(namespace, dest, None)
        for dest in self._strings_or_lists:
            values = getattr(namespace, dest, None)
            if isinstance(values, list) and len(values) == 1:
                setattr(namespace, dest, values[0])
        # Resolved before TrainingArguments sees it: its __post_init__ checks settings against the worker count.
        namespace.dataloader_num_workers = dataloader_workers(namespace.dataloader_num_workers)
        return namespace, remaining


# Flags that name the user's own data or model: a run with one of them and no config file is not a variant of the
# default (synthetic, tiny, CPU) job; it starts from the own-data job instead (`OWN_DATA_CONFIG`).
OWN_JOB_FLAGS = ("--train_file", "--validation_file", "--test_file", "--text_model", "--vision_model", "--audio_model",
                 "--modality", "--init_from")
OWN_DATA_CONFIG = Path(__file__).resolve().parent / "configs" / "own_data.yaml"


def split_config_file(argv: list[str]) -> tuple[str, list[str]]:
    """The job's config file and the flags that override it: a leading `.yaml`/`.yml`/`.json` argument; else, when
    the flags name the user's own data or backbones (`OWN_JOB_FLAGS`, or a `--dataset` other than synthetic), the
    own-data job (`OWN_DATA_CONFIG`: stage learning rates, batch size, logging and evaluation for DMIL on a real
    dataset, nothing of the synthetic job's tiny latent size, CPU device or LoRA); else the default job
    (`DEFAULT_CONFIG`), so that flags alone change the default job instead of replacing it."""
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        return argv[0], argv[1:]
    names = {arg.split("=", 1)[0].replace("-", "_").replace("__", "--", 1) for arg in argv if arg.startswith("--")}
    # The --dataset value argparse would keep: the last one, given as `--dataset X` or `--dataset=X`.
    dataset = "synthetic"
    for i, arg in enumerate(argv):
        if arg == "--dataset" and i + 1 < len(argv):
            dataset = argv[i + 1]
        elif arg.startswith("--dataset="):
            dataset = arg.split("=", 1)[1]
    if names & set(OWN_JOB_FLAGS) or dataset != "synthetic":
        return str(OWN_DATA_CONFIG), argv
    return str(DEFAULT_CONFIG), argv


def config_flags(config_file: str) -> list[str]:
    """The config file's values as flags."""
    with open(config_file) as f:
        return _to_cli(yaml.safe_load(f) or {})  # YAML is a superset of JSON


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, DMILTrainingArguments, str]:
    """The run's arguments and its config file: the file's values (`split_config_file`), overridden by the flags."""
    config_file, flags = split_config_file(argv)
    parser = RunArgumentParser()
    # Later flags win in argparse, so command-line overrides follow the file's values.
    base = config_flags(config_file) if config_file else []
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=base + flags)
    # TrainingArguments turns do_eval on whenever eval_strategy is not "no"; here --do_eval is the final evaluation
    # (and a run without training's only one), so the value given stands.
    # argparse's own parse: this parser's would derive (and log) the worker count a second time.
    training_args.do_eval = HfArgumentParser.parse_known_args(parser, base + flags)[0].do_eval
    training_args.resume_from_checkpoint = resume_value(training_args.resume_from_checkpoint)
    return model_args, data_args, training_args, config_file


def resume_value(flag: str | None) -> str | bool | None:
    """What `--resume_from_checkpoint` asks DMILTrainer.train for: `true` is its resume of the whole run (skip
    finished stages), `false` no resume, anything else a checkpoint path. TrainingArguments types the field as a
    string, so without this `true` would reach the trainer as a path named "true"."""
    if flag is None or flag.strip().lower() == "false":
        return None
    return True if flag.strip().lower() == "true" else flag


def preset_kwargs(model_args: ModelArguments) -> dict:
    """DMILConfig values of the chosen DMIL preset (the library default needs none) and of the speed levers."""
    from dmil_hf.models.dmil.configuration_dmil import REFERENCE_PRESET

    presets = {"default": {}, "reference": dict(REFERENCE_PRESET)}
    if model_args.dmil_preset not in presets:
        raise ValueError(f"--dmil_preset must be one of {sorted(presets)}, got {model_args.dmil_preset!r}")
    # Speed levers are not part of a preset: they change how the backbones compute, not what the model is.
    levers = {"fast_paths": list(model_args.fast_paths)} if model_args.fast_paths else {}
    return {**presets[model_args.dmil_preset], **levers}


# ModelArguments fields that name the user's backbones or model, which the synthetic benchmark (its own tiny model
# and data) cannot use. A saved model of the benchmark itself (--init_from) is the exception: `synthetic_misfit`.
USER_MODEL_FIELDS = ("modality", "text_model", "vision_model", "audio_model", "init_from")
# Backbone config fields that the benchmark's generated inputs depend on: token ids, image size and channels.
SYNTHETIC_INPUT_FIELDS = ("model_type", "vocab_size", "image_size", "num_channels")


def synthetic_misfit(path: str, expected: PretrainedConfig) -> str | None:
    """Why the saved model at `path` cannot take the synthetic benchmark's data built for `expected` (the tiny
    config of the --synthetic_* options), or None when it can: the same modalities, classes and input sizes, as a
    model trained on the benchmark with those options has."""
    from dmil_hf import DMILConfig

    try:
        saved = DMILConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        return f"it does not load as a DMIL model ({type(err).__name__})"
    if list(saved.modalities) != list(expected.modalities):
        return f"its modalities are {saved.modalities}, the benchmark's {expected.modalities} (--synthetic_modalities)"
    if saved.num_labels != expected.num_labels:
        return f"it has {saved.num_labels} labels, the benchmark {expected.num_labels} (--synthetic_num_labels)"
    # The benchmark's labels are class ids: the same number of classes under other names is another task.
    if dict(saved.id2label) != dict(expected.id2label):
        return f"its classes are {sorted(saved.label2id)}, the benchmark's {sorted(expected.label2id)}"
    for name in expected.modalities:
        ours, theirs = expected.backbone_config(name), saved.backbone_config(name)
        for key in SYNTHETIC_INPUT_FIELDS:
            if hasattr(ours, key) and getattr(theirs, key, None) != getattr(ours, key):
                return (f"its {name} backbone has {key}={getattr(theirs, key, None)!r} where the benchmark's inputs "
                        f"need {getattr(ours, key)!r}")
    return None


def load_synthetic(data_args: DataArguments, model_args: ModelArguments, seed: int):
    """The synthetic benchmark's splits, the tiny model's config and the processor its saved model serves with.
    `--init_from` may name a model trained on the benchmark (to evaluate, predict or train on), no other model."""
    from dmil_hf.data import SyntheticInteractionSpec, make_interaction_splits, synthetic_processor, tiny_config_for

    spec = SyntheticInteractionSpec(
        modalities=tuple(m.strip() for m in data_args.synthetic_modalities.split(",") if m.strip()),
        num_labels=data_args.synthetic_num_labels,
        mixture=data_args.synthetic_mixture,
        dominant_modality=data_args.synthetic_dominant_modality,
    )
    config = tiny_config_for(spec, paradigm=model_args.paradigm, latent_dim=model_args.latent_dim,
                             check_inputs=model_args.check_inputs, **preset_kwargs(model_args))
    given = [f"--{name}" for name in USER_MODEL_FIELDS if name != "init_from" and getattr(model_args, name)]
    misfit = synthetic_misfit(model_args.init_from, config) if model_args.init_from and not given else None
    if given or misfit:
        # The benchmark builds its own tiny model: it would train that and ignore the backbones given.
        given = given or ["--init_from"]
        reason = f" ({model_args.init_from}: {misfit})" if misfit else ""
        raise ValueError(
            f"{' and '.join(given)} name{'s' if len(given) == 1 else ''} the model for your own data{reason}, but no "
            "data was given, and the built-in synthetic benchmark has its own tiny model (--init_from takes a model "
            "trained on it). Give the data with --train_file (csv/json/parquet, with --validation_file) or --dataset "
            "(a Hub dataset or a save_to_disk folder)"
        )
    splits = make_interaction_splits(data_args.synthetic_train_size, data_args.synthetic_eval_size, seed=seed, spec=spec)
    return splits["train"], splits["test"], config, synthetic_processor(spec)


def _file_format(path: str) -> str:
    """The `datasets` builder of a data file, from its extension: csv, json (also .jsonl) or parquet."""
    extension = Path(path).suffix.lstrip(".").lower()
    formats = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
    if extension not in formats:
        raise ValueError(f"cannot tell the format of {path!r}: give a .csv, .json, .jsonl or .parquet file")
    return formats[extension]


def load_user_splits(data_args: DataArguments, need_train: bool = True) -> dict[str, Dataset | None]:
    """The user's `train`, `validation` and `test` splits (None where there is none): from `--train_file`,
    `--validation_file` and `--test_file`, else from a `load_from_disk` folder or a Hub dataset (`--train_split`,
    `--eval_split` (default: validation, else test), `--test_split`). Without `need_train` (a run that does not
    train) the training split may be missing."""
    import datasets

    from dmil_hf import prepare_media_columns

    files = {split: path for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file),
                                             ("test", data_args.test_file)) if path}
    if files:
        if need_train and "train" not in files:
            raise ValueError("--validation_file / --test_file need a --train_file to train on (or --do_train false)")
        # Each file on its own: one load_dataset over all of them gives every split the first file's columns, so a
        # test file without labels would get a label column of None (and a test.jsonl beside a train.csv would be
        # read as csv).
        raw = datasets.DatasetDict({
            split: datasets.load_dataset(_file_format(path), data_files={split: path})[split]
            for split, path in files.items()
        })
        names = {"train": "train", "validation": "validation", "test": "test"}
    else:
        raw = (datasets.load_from_disk(data_args.dataset) if os.path.isdir(data_args.dataset)
               else datasets.load_dataset(data_args.dataset, data_args.dataset_config))
        if not isinstance(raw, datasets.DatasetDict):
            raw = datasets.DatasetDict(train=raw)
        if need_train and data_args.train_split not in raw:
            raise ValueError(f"no split {data_args.train_split!r} in the dataset (splits: {list(raw)})")
        names = {"train": data_args.train_split, "test": data_args.test_split,
                 "validation": data_args.eval_split or next((s for s in ("validation", "test") if s in raw), None)}
    # Audio()/Video() columns stay undecoded: the collator decodes their files (soundfile, PyAV); datasets would need
    # torchcodec and FFmpeg to, and fail at the first row it reads.
    raw = prepare_media_columns(raw)
    return {split: raw[name] if name in raw else None for split, name in names.items()}


def load_user_data(data_args: DataArguments):
    """The user's training and evaluation splits (`load_user_splits`)."""
    splits = load_user_splits(data_args)
    return splits["train"], splits["validation"]


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def _label_feature(train, label_column: str):
    feature = train.features.get(label_column)
    if feature is None:
        raise ValueError(f"label column {label_column!r} not in the dataset (columns: {train.column_names})")
    return feature


def _inner(feature):
    """The value feature of a list column (datasets' List / Sequence / LargeList), else None."""
    return getattr(feature, "feature", None)


def data_problem_type(train, label_column: str, given: str | None = None) -> str:
    """The problem type: `given` (--problem_type), else read from the label column's feature: a list column is
    multi-label (multi-hot rows or class names), a float column a regression, anything else class ids or names."""
    if given is not None:
        if given not in PROBLEM_TYPES:
            raise ValueError(f"--problem_type must be one of {PROBLEM_TYPES}, got {given!r}")
        return given
    feature = _label_feature(train, label_column)
    if _inner(feature) is not None:
        return "multi_label_classification"
    if getattr(feature, "dtype", "").startswith("float"):
        return "regression"
    return "single_label_classification"


def label_maps(train, label_column: str, problem_type: str = "single_label_classification") -> dict[int, str]:
    """id2label of a model trained from scratch on `train`: a ClassLabel's names, sorted string labels, or
    `0..max` for integer labels (single-label); for multi-label the class names of the lists (a list of ClassLabel's
    names, or the sorted union of string lists) or one label per position of a multi-hot row; for a regression one
    `target` per target (`target_<i>` for several)."""
    feature = _label_feature(train, label_column)
    if problem_type == "regression":
        first = train[0][label_column]
        width = len(first) if isinstance(first, (list, tuple)) else 1
        return {0: "target"} if width == 1 else {i: f"target_{i}" for i in range(width)}
    if problem_type == "multi_label_classification":
        inner = _inner(feature)
        if inner is None:
            raise ValueError(f"a multi-label task needs a list label column, got {label_column!r}: {feature}")
        if hasattr(inner, "names"):
            return dict(enumerate(inner.names))
        rows = [row for row in train[label_column] if row]
        if rows and all(isinstance(v, str) for row in rows for v in row):
            return dict(enumerate(sorted({v for row in rows for v in row})))
        return {i: str(i) for i in range(len(rows[0]) if rows else 0)}
    if hasattr(feature, "names"):
        return dict(enumerate(feature.names))
    values = sorted(set(train[label_column]), key=str)
    if all(isinstance(v, int) for v in values):
        return {i: str(i) for i in range(max(values) + 1)}
    return dict(enumerate(map(str, values)))


def select_samples(
    train: Dataset | None, evaluation: Dataset | None, data_args: DataArguments
) -> tuple[Dataset | None, Dataset | None]:
    """The `--max_train_samples` / `--max_eval_samples` subsets: taken before labels are checked, so that the
    checks see the data that is trained and evaluated on."""
    if train is not None and data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if evaluation is not None and data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation


# The DataArguments field that names each modality's column.
MODALITY_COLUMN_FIELDS = {"text": "text_column", "vision": "image_column", "audio": "audio_column"}


def parse_modalities(specs: list[str]) -> list:
    """--modality NAME:KIND:BACKBONE[:FRAMES] values as `Modality` rows whose backbone is the path to load."""
    from dmil_hf import Modality

    rows = []
    for spec in specs:
        parts = spec.split(":")
        # A Windows drive or a URL-like path may hold ':'; the name and kind never do, the frame count is a number.
        frames = int(parts.pop()) if len(parts) > 3 and parts[-1].isdigit() else None
        if len(parts) < 3:
            raise ValueError(f"--modality takes NAME:KIND:BACKBONE[:FRAMES], got {spec!r}")
        rows.append(Modality(parts[0], parts[1], ":".join(parts[2:]), num_frames=frames))
    return rows


def modality_columns(data_args: DataArguments, config) -> dict[str, str]:
    """Each of the model's modalities -> the data column it reads: --modality_column NAME=COLUMN; else
    --text_column/--image_column/--audio_column for the three-slot modalities (left at its default, the flag's column
    goes to the modality of that name if there is one, and the three-slot modality reads its own name); else the
    modality's name."""
    overrides = {}
    for item in data_args.modality_column or []:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            raise ValueError(f"--modality_column takes NAME=COLUMN, got {item!r}")
        overrides[name] = column
    unknown = sorted(set(overrides) - set(config.modalities))
    if unknown:
        raise ValueError(f"--modality_column names {unknown}, which are not modalities of the model ({config.modalities})")
    def column(row) -> str:
        if row.name in overrides:
            return overrides[row.name]
        if not row.is_legacy_slot:
            return row.name
        flag = MODALITY_COLUMN_FIELDS[row.name]
        value = getattr(data_args, flag)
        # A modality's own name wins over a three-slot alias (as in the collator and the pipeline): with an `image`
        # video row beside the `vision` image row, the default --image_column (image) is the video's column.
        if value == DataArguments.__dataclass_fields__[flag].default and value != row.name and value in config.modalities:
            return row.name
        return value

    return {m.name: column(m) for m in config.modality_specs}


def check_columns(data_args: DataArguments, fields: dict[str, str], splits: dict[str, Dataset | None]) -> None:
    """Every split must have the column of each DataArguments field in `fields` (field -> what it is read for). A
    modality's missing column would otherwise leave the collator without values for it, and the run would train on
    fewer modalities without a word."""
    for split, dataset in splits.items():
        if dataset is None:
            continue
        for field_name, purpose in fields.items():
            column = getattr(data_args, field_name)
            if column not in dataset.column_names:
                raise ValueError(
                    f"the {split} data has no {column!r} column for {purpose} (columns: {dataset.column_names}); "
                    f"set --{field_name} to the column that holds it"
                )


def drop_unused_modality_columns(
    data_args: DataArguments, modalities: list[str], dataset: Dataset, read: Collection[str] = ()
) -> Dataset:
    """The dataset without the columns of three-slot modalities the model has no backbone for: the collator would hand
    them to a processor without that sub-processor. A column some modality reads (`read`: an `image` video row reads
    the default --image_column) is kept. A warning says so, as the data had them."""
    unused = [
        getattr(data_args, field_name) for modality, field_name in MODALITY_COLUMN_FIELDS.items()
        if modality not in modalities and getattr(data_args, field_name) in dataset.column_names
        and getattr(data_args, field_name) not in read
    ]
    if not unused:
        return dataset
    logger.warning("not using the data's column(s) %s: the model has no backbone for them (its modalities: %s)",
                   unused, ", ".join(modalities))
    return dataset.remove_columns(unused)


def labels_as_names(dataset: Dataset) -> Dataset:
    """A ClassLabel "label" column (or a list of ClassLabel, multi-label) as its class names, so that they are mapped
    through the model's label2id like string labels (a model loaded with --init_from may number the same classes
    differently)."""
    import datasets

    feature = dataset.features["label"]
    inner = _inner(feature)
    features = dataset.features.copy()
    if isinstance(inner, datasets.ClassLabel):
        features["label"] = datasets.Sequence(datasets.Value("string"))
        return dataset.map(
            lambda rows: {"label": [inner.int2str(list(row)) for row in rows]}, input_columns="label", batched=True,
            features=features,
        )
    if not isinstance(feature, datasets.ClassLabel):
        return dataset
    features["label"] = datasets.Value("string")
    return dataset.map(
        lambda labels: {"label": feature.int2str(labels)}, input_columns="label", batched=True, features=features
    )


def has_labels(dataset: Dataset) -> bool:
    """Whether the "label" column holds any label: not every value None, nor (a ClassLabel) every value -1, the
    `datasets` value for "no label"."""
    import datasets

    no_label = (None, -1) if isinstance(dataset.features["label"], datasets.ClassLabel) else (None,)
    return any(value not in no_label for value in dataset["label"])


def _is_model_label(value: object, config: PretrainedConfig) -> bool:
    if isinstance(value, str):
        return value in config.label2id
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < config.num_labels


def _check_multi_label(config: PretrainedConfig, split: str, dataset: Dataset) -> None:
    for i, row in enumerate(dataset["label"]):
        row = list(row)
        names = bool(row) and all(isinstance(v, str) for v in row)
        unknown = [v for v in row if v not in config.label2id] if names else []
        if unknown or (not names and row and len(row) != config.num_labels):
            raise ValueError(
                f"{split} label {i} ({row!r}) is neither a list of the model's classes ({sorted(config.label2id)}) nor "
                f"a multi-hot row of {config.num_labels} values"
            )


def _check_regression(config: PretrainedConfig, split: str, dataset: Dataset) -> None:
    for i, value in enumerate(dataset["label"]):
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) != config.num_labels or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise ValueError(
                f"{split} label {i} ({value!r}) is not {config.num_labels} finite number(s), the model's regression "
                "targets"
            )


def check_labels(
    config: PretrainedConfig, train: Dataset | None, evaluation: Dataset | None, test: Dataset | None = None
) -> None:
    """The data's labels against the model's: every label must be one of the model's classes (a name in its
    label2id, or an id below num_labels), and every validation label must occur in the training data (when there is
    training data: a run that only evaluates a saved model has none). Checked before training, so that a bad label is
    not first met by the collator at evaluation, after stage 1. A test split without labels is fine. Multi-label:
    lists of the model's classes or multi-hot rows of num_labels values; regression: num_labels finite numbers."""
    checks = {"multi_label_classification": _check_multi_label, "regression": _check_regression}
    if config.problem_type in checks:
        for split, dataset in (("training", train), ("validation", evaluation), ("test", test)):
            if dataset is not None and "label" in dataset.column_names:
                checks[config.problem_type](config, split, dataset)
        return
    for split, dataset in (("training", train), ("validation", evaluation), ("test", test)):
        if dataset is None or "label" not in dataset.column_names:
            continue
        unknown = sorted((v for v in set(dataset["label"]) if not _is_model_label(v, config)), key=str)
        if unknown:
            raise ValueError(
                f"{split} label(s) {unknown} are not classes of the model (its labels: {sorted(config.label2id)}, "
                f"ids 0..{config.num_labels - 1})"
            )
    if train is None:
        return
    seen = set(train["label"])
    unseen = sorted(set(evaluation["label"]) - seen, key=str) if evaluation is not None else []
    if unseen:
        raise ValueError(
            f"validation label(s) {unseen} do not occur in the training data (training labels: "
            f"{sorted(seen, key=str)}); the model cannot learn them"
        )


def build_user_model_and_processor(model_args: ModelArguments, data_args: DataArguments, train: Dataset):
    """The model and its processor: loaded from --init_from (labels and all), or built from the backbones with the
    training data's labels (`label_maps`)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    from dmil_hf import DMILForMultimodalClassification, DMILProcessor
    from dmil_hf.models.dmil.processing_dmil import load_image_processor

    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.init_from:
        model = DMILForMultimodalClassification.from_pretrained(model_args.init_from, **extra)
        processor = DMILProcessor.from_pretrained(model_args.init_from)
        saved = model.config.problem_type
        if saved is not None and model_args.problem_type not in (None, saved):
            raise ValueError(f"--problem_type {model_args.problem_type} but the model from --init_from is a {saved} model")
        if saved is None and (train is not None or model_args.problem_type):
            # Saved before its first forward with labels: the data say it, as the model's would (a run that does not
            # train leaves it to the model's first forward).
            model.config.problem_type = (model_args.problem_type if train is None
                                         else data_problem_type(train, data_args.label_column, model_args.problem_type))
    else:
        problem_type = data_problem_type(train, data_args.label_column, model_args.problem_type)
        id2label = label_maps(train, data_args.label_column, problem_type)
        slots = {"text": model_args.text_model, "vision": model_args.vision_model, "audio": model_args.audio_model}
        if model_args.modality and any(slots.values()):
            raise ValueError("give the backbones either with --modality or with --text_model/--vision_model/--audio_model")
        if model_args.modality:
            table = parse_modalities(model_args.modality)
            backbones = {"modality_table": table}
            paths = {row.name: row.backbone for row in table}
        else:
            backbones, paths = slots, {m: p for m, p in slots.items() if p}
            table = None
        model = DMILForMultimodalClassification.from_backbones_pretrained(
            **backbones, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()},
            paradigm=model_args.paradigm, latent_dim=model_args.latent_dim, check_inputs=model_args.check_inputs,
            problem_type=problem_type,
            **preset_kwargs(model_args),
            **{f"{m}_{k}": v for m in paths for k, v in extra.items()},
        )
        # One sub-processor per kind, from the first modality of that kind (two image modalities share one).
        first = {}
        for row in model.config.modality_specs:
            first.setdefault("image" if row.kind == "video" else row.kind, paths[row.name])
        processor = DMILProcessor.for_model(
            model.config,
            tokenizer=AutoTokenizer.from_pretrained(first["text"]) if "text" in first else None,
            image_processor=load_image_processor(first["image"]) if "image" in first else None,
            feature_extractor=AutoFeatureExtractor.from_pretrained(first["audio"]) if "audio" in first else None,
        )
    if processor.text_max_length is None:
        # A tokenizer saved without model_max_length would otherwise be truncated at 512, maybe past the backbone.
        text = next((m for m in model.config.modality_specs if m.kind == "text"), None)
        processor.text_max_length = DMILProcessor.backbone_text_length(text.backbone) if text else None
    return model, processor


def prepare_user_data(model_args: ModelArguments, data_args: DataArguments, need_train: bool = True):
    """Model, processor, collator and the splits (`training`, `validation`, `test`; None where absent) for user data,
    every check that can fail done before training. The test split (`--do_predict`) may lack labels."""
    from dmil_hf import DMILDataCollator

    loaded = load_user_splits(data_args, need_train=need_train)
    train, evaluation = select_samples(loaded["train"] if need_train else None, loaded["validation"], data_args)
    splits = {"training": train, "validation": evaluation, "test": loaded["test"]}
    check_columns(data_args, {"label_column": "the labels"}, {k: v for k, v in splits.items() if k != "test"})
    model, processor = build_user_model_and_processor(model_args, data_args, train)
    modalities = model.config.modalities
    columns = modality_columns(data_args, model.config)
    for split, dataset in splits.items():
        for modality, column in columns.items():
            if dataset is not None and column not in dataset.column_names:
                raise ValueError(
                    f"the {split} data has no {column!r} column for the model's {modality} backbone (columns: "
                    f"{dataset.column_names}); set --{MODALITY_COLUMN_FIELDS.get(modality, 'modality_column')} to the "
                    "column that holds it"
                )
    for split, dataset in splits.items():
        if dataset is None:
            continue
        dataset = drop_unused_modality_columns(data_args, modalities, dataset, read=set(columns.values()))
        if data_args.label_column != "label" and data_args.label_column in dataset.column_names:
            dataset = dataset.rename_column(data_args.label_column, "label")  # the collator reads "label"
        if split == "test" and "label" in dataset.column_names and not has_labels(dataset):
            # A test split's labels are optional; a Hub test split often has the column with none in it (None, or
            # ClassLabel's -1, as GLUE's): predicted without labels rather than refused.
            dataset = dataset.remove_columns("label")
        # From here on the model's label2id is the only label map: the data's labels are checked against it and the
        # collator maps string labels through it.
        splits[split] = labels_as_names(dataset) if "label" in dataset.column_names else dataset
    check_labels(model.config, splits["training"], splits["validation"], splits["test"])
    collator = DMILDataCollator(
        processor, label2id=dict(model.config.label2id), columns=columns, problem_type=model.config.problem_type
    )
    return model, processor, collator, splits


def run_title(config) -> str:
    """What the console calls the run: DMIL, or the baseline it is (a paradigm without an interaction gate)."""
    return "DMIL" if config.paradigm == "dmil" else f"{config.paradigm} baseline"


def print_report(trainer, final_metrics: dict) -> None:
    from dmil_hf.evaluation import per_type_summary

    config = trainer.model.config
    regression = config.problem_type == "regression"
    # The prediction's own loss and two headline metrics, by problem type.
    columns = (
        [("eval MSE of the prediction", "eval_mse"), ("eval MAE", "eval_mae"), ("eval Pearson r", "eval_pearson")]
        if regression else
        [("eval BCE of the prediction" if "eval_bce_final" in final_metrics else "eval CE of the prediction",
          "eval_bce_final" if "eval_bce_final" in final_metrics else "eval_ce_final"),
         ("eval accuracy", "eval_accuracy"), ("eval macro-F1", "eval_f1_macro")]
    )
    if trainer.stage_results:
        print(f"\n== {run_title(config)} run: per-stage results ==")
        print("| stage | train loss (all terms) | eval loss (all terms) | " + " | ".join(c for c, _ in columns) + " |")
        print("|---|---|---|---|---|---|")
        for stage, m in sorted(trainer.stage_results.items()):
            cells = [m.get("train_loss"), m.get("eval_loss"), *[m.get(key) for _, key in columns]]
            print(f"| {stage} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
        if len(trainer.stage_results) > 1:
            print("(A stage's loss sums every term it counts, and stage 3 counts the most, so losses grow from stage to "
                  "stage; the prediction's CE is comparable across stages.)")
    components = config.interaction_components if config.paradigm == "dmil" else []
    metric = "mae" if regression else "accuracy"
    rows = per_type_summary(final_metrics, components, metric=metric)
    if rows:
        gates_title = " and mean gate weights" if components else ""
        print(f"\n== final model: {metric}{gates_title} per interaction type ==")
        print(f"| type | {metric} |" + "".join(f" gate {c} |" for c in components))
        print("|---|---|" + "---|" * len(components))
        for kind, value, gates in rows:
            print(f"| {kind} | {value:.4f} |" + "".join(" - |" if g is None else f" {g:.3f} |" for g in gates))
    keys = ("eval_accuracy", "eval_f1_micro", "eval_f1_macro", "eval_synergy_indicator", "eval_mae", "eval_pearson")
    if any(k in final_metrics for k in keys):
        print("\n" + ", ".join(f"{k}={final_metrics[k]:.4f}" for k in keys if k in final_metrics))


def setup_logging() -> None:
    """This script's and dmil_hf's messages from INFO up (the derived dataloader_num_workers, which stage a resumed
    run resumes from, the best checkpoint a stage reloads) on stderr. Other loggers keep their levels; transformers'
    follow the Trainer's --log_level."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    logging.getLogger("dmil_hf").setLevel(logging.INFO)
    # transformers' own bars (writing and loading weights) would nest inside a stage's training bar on the console;
    # the Trainer's bars are not these and stay.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


# The files a run writes to output_dir besides the model: final evaluation, prediction metrics, predictions.
EVAL_RESULTS, PREDICT_RESULTS, PREDICTIONS = "eval_results.json", "predict_results.json", "predictions.csv"
# The test metrics the console shows after --do_predict with labels (those of the model's problem type are there).
PREDICT_HEADLINE = ("predict_accuracy", "predict_f1_micro", "predict_mae", "predict_pearson")


def check_modes(model_args: ModelArguments, training_args: DMILTrainingArguments) -> None:
    """--do_train / --do_eval / --do_predict, checked before anything loads. A run that does not train evaluates or
    predicts with the saved model of --init_from, and writes nothing but its result files, none of which it may
    overwrite (unless --overwrite_output_dir)."""
    if training_args.do_train:
        return
    if not model_args.init_from:
        raise ValueError("--do_train false evaluates or predicts with a saved model: give it with --init_from PATH "
                         "(e.g. OUTPUT_DIR/final of an earlier run)")
    if not (training_args.do_eval or training_args.do_predict):
        raise ValueError("--do_train false with --do_eval false and --do_predict false leaves nothing to do")
    if training_args.resume_from_checkpoint:
        raise ValueError("--resume_from_checkpoint continues training: it cannot go with --do_train false")
    written = [EVAL_RESULTS] * training_args.do_eval + [PREDICT_RESULTS, PREDICTIONS] * training_args.do_predict
    existing = [name for name in written if os.path.exists(os.path.join(training_args.output_dir, name))]
    if existing and not training_args.overwrite_output_dir:
        raise ValueError(
            f"output_dir {training_args.output_dir} already holds {', '.join(existing)}: give another --output_dir, "
            "or --overwrite_output_dir true to replace those files (nothing else in it is touched)"
        )


def check_splits(training_args: DMILTrainingArguments, evaluation: Dataset | None, test: Dataset | None) -> None:
    """The splits the modes need, before anything trains: --do_predict needs a test split; a run that does not
    train and asks for --do_eval needs an evaluation split. Without an evaluation split, the base config's
    eval_strategy is turned off, with a warning (the Trainer would refuse it)."""
    if training_args.do_predict and test is None:
        raise ValueError("--do_predict needs data to predict: give --test_file (or a dataset with a --test_split "
                         "split, 'test' by default)")
    if evaluation is None and training_args.do_eval and not training_args.do_train:
        raise ValueError("--do_eval needs an evaluation split: give --validation_file (or --eval_split)")
    if evaluation is None and training_args.eval_strategy != "no":
        if training_args.do_train:
            logger.warning("no evaluation data: nothing is evaluated during training (eval_strategy %s -> no)",
                           training_args.eval_strategy.value)
        from transformers.trainer_utils import IntervalStrategy

        training_args.eval_strategy = IntervalStrategy.NO


def prediction_columns(logits, labels, config) -> tuple[list[str], list[list]]:
    """The header and rows of predictions.csv (without index and interaction weights) for `config.problem_type`, read
    as transformers' text-classification pipeline (and ours) reads each type:

    - single-label: `prediction` (the class), `score` (its softmax probability), `label` (the true class);
    - multi-label: `prediction` (a JSON list of the classes whose sigmoid probability is above 1/2, the threshold the
      metrics use), `score_<class>` (each class's own probability), `label` (a JSON list of the true classes);
    - regression: `prediction` (the predicted value) and `label` (the target), or `prediction_<target>` and
      `label_<target>` for several targets: a value has no probability.
    """
    import numpy as np

    names = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(logits.shape[-1])]
    problem_type = config.problem_type or (
        "regression" if config.num_labels == 1 else "single_label_classification"
    )
    if problem_type == "regression":
        suffixes = [""] if len(names) == 1 else [f"_{name}" for name in names]
        header = [f"prediction{s}" for s in suffixes]
        rows = [[f"{v:.6g}" for v in row] for row in logits]
        if labels is not None:
            targets = np.asarray(labels, dtype=np.float64).reshape(len(logits), -1)
            header += [f"label{s}" for s in suffixes]
            rows = [row + [f"{v:.6g}" for v in target] for row, target in zip(rows, targets)]
        return header, rows
    if problem_type == "multi_label_classification":
        probabilities = 1 / (1 + np.exp(-logits))
        header = ["prediction", *(f"score_{name}" for name in names)]
        rows = [[json.dumps([n for n, on in zip(names, logit > 0) if on]), *(f"{p:.6f}" for p in row)]
                for logit, row in zip(logits, probabilities)]
        if labels is not None:
            header.append("label")
            rows = [row + [json.dumps([n for n, on in zip(names, np.asarray(target) >= 0.5) if on])]
                    for row, target in zip(rows, labels)]
        return header, rows
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    predicted = probabilities.argmax(-1)
    header = ["prediction", "score"]
    rows = [[names[k], f"{probabilities[i, k]:.6f}"] for i, k in enumerate(predicted)]
    if labels is not None:
        header.append("label")
        rows = [row + [names[int(label)]] for row, label in zip(rows, labels)]
    return header, rows


def write_predictions(prediction, config, path: str) -> None:
    """`--do_predict`'s predictions.csv: one row per test sample with its index, the prediction in the columns of its
    problem type (`prediction_columns`: for a classification, the predicted label and its probability), the true
    label when the data has one, and (DMIL) the sample's interaction weights, one column per component
    (`interaction_redundancy`, ...): the per-sample interaction view as data."""
    import csv

    import numpy as np

    outputs = prediction.predictions
    logits = np.asarray(outputs["logits"] if isinstance(outputs, dict) else outputs, dtype=np.float64)
    weights = outputs.get("interaction_weights") if isinstance(outputs, dict) else None
    components = config.interaction_components if weights is not None else []
    header, rows = prediction_columns(logits, prediction.label_ids, config)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *header, *(f"interaction_{c}" for c in components)])
        for i, row in enumerate(rows):
            writer.writerow([i, *row, *(f"{w:.6f}" for w in (weights[i] if weights is not None else []))])


def main(argv: list[str] | None = None) -> dict:
    setup_logging()
    model_args, data_args, training_args, config_file = parse_arguments(sys.argv[1:] if argv is None else argv)
    check_modes(model_args, training_args)
    from transformers import set_seed

    from dmil_hf import DMILForMultimodalClassification, DMILTrainer
    from dmil_hf.hub.publisher import DMILHubUploadError
    from dmil_hf.evaluation import make_compute_metrics

    set_seed(training_args.seed)
    processor = collator = None
    with training_args.main_process_first(desc="dataset preparation"):
        if data_args.train_file is None and data_args.dataset == "synthetic" and not (
            data_args.validation_file or data_args.test_file
        ):
            train, evaluation, config, processor = load_synthetic(data_args, model_args, training_args.seed)
            train, evaluation = select_samples(train, evaluation, data_args)
            test = evaluation  # the benchmark's held-out split is its test split
            if model_args.init_from:
                model = DMILForMultimodalClassification.from_pretrained(model_args.init_from)
            else:
                model = DMILForMultimodalClassification(config)
        else:
            model, processor, collator, splits = prepare_user_data(model_args, data_args, training_args.do_train)
            train, evaluation, test = splits["training"], splits["validation"], splits["test"]
            # The collator reads the raw columns; the Trainer must not drop them.
            training_args.remove_unused_columns = False
    if not training_args.do_train:
        train = None
    check_splits(training_args, evaluation, test)

    def metrics_for(dataset):
        column = data_args.interaction_type_column
        types = dataset[column] if dataset is not None and column in dataset.column_names else None
        return make_compute_metrics(model.config, interaction_types=types)

    trainer = DMILTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=evaluation, data_collator=collator,
        processing_class=processor, compute_metrics=metrics_for(evaluation) if evaluation is not None else None,
    )
    modes = [name for name, on in (("train", training_args.do_train), ("evaluate", training_args.do_eval),
                                   ("predict", training_args.do_predict)) if on]
    print(f"\n{run_title(model.config)} run on {', '.join(model.config.modalities)}: {', '.join(modes)}; "
          f"config {config_file}", flush=True)
    # With --push_to_hub the trainer checks the Hub before training (and stops with an error saying what failed). An
    # upload that fails later only ends train() with DMILHubUploadError, on every process, once every stage is saved:
    # the run is finished and reported here, then fails with that error, which names the command to push it.
    push_error = final_dir = None
    if training_args.do_train:
        try:
            trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        except DMILHubUploadError as err:
            push_error = err
        # train() writes final/ once the model is complete; a run of fewer stages (--stages 1,2) gets one here too.
        final_dir = trainer.final_dir or trainer.save_final(os.path.join(training_args.output_dir, "final"))
    metrics = trainer.evaluate() if training_args.do_eval and evaluation is not None else {}
    if training_args.do_train:
        metrics["stages"] = {str(k): v for k, v in trainer.stage_results.items()}
    prediction = None
    if training_args.do_predict:
        trainer.compute_metrics = metrics_for(test)
        prediction = trainer.predict(test, metric_key_prefix="predict")
    written = []
    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        if training_args.do_train or metrics:
            written.append(os.path.join(training_args.output_dir, EVAL_RESULTS))
            with open(written[-1], "w") as f:
                json.dump(metrics, f, indent=2, default=float)
        if prediction is not None:
            written.append(os.path.join(training_args.output_dir, PREDICTIONS))
            write_predictions(prediction, model.config, written[-1])
            if prediction.label_ids is not None:  # test metrics need the test labels
                written.append(os.path.join(training_args.output_dir, PREDICT_RESULTS))
                with open(written[-1], "w") as f:
                    json.dump(prediction.metrics, f, indent=2, default=float)
        print_report(trainer, metrics)
        # The test split's headline metrics (labels given), by problem type as in the evaluation's line.
        headline = [f"{key}={prediction.metrics[key]:.4f}" for key in PREDICT_HEADLINE
                    if prediction is not None and key in prediction.metrics]
        if headline:
            print(f"{', '.join(headline)} on {len(test)} test rows")
        model_line = f"final model: {final_dir}" if final_dir else f"model: {model_args.init_from} (not trained)"
        print(f"\nconfig: {config_file}; {model_line}; results: {', '.join(written) or 'none'}")
    if push_error is not None:
        raise push_error
    if prediction is not None:
        metrics["predict"] = prediction.metrics
    return metrics


if __name__ == "__main__":
    main()
