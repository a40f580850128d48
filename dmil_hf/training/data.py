"""The data and model of a training run on the built-in synthetic benchmark or on a user's dataset: splits from
files, a `datasets` name or a `save_to_disk` folder; label maps and problem type read from the label column; the
column each modality reads; every check a run can fail (a missing column, an unseen label) done before training; the
model and processor, new from backbones or loaded from a saved DMIL model.

`training/run.py` calls these with its parsed arguments: `data_args` is its `DataTrainingArguments` and `model_args`
its `ModelArguments` (any object with those fields will do). User errors raise ValueError (or FileNotFoundError),
which the CLI turns into a message and exit status 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.dmil.problem_types_dmil import PROBLEM_TYPES, problem_type_of_label_values

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)


# The most data loader workers `auto` starts per training process: enough to decode a batch's images and audio ahead
# of the step; more only take cores (and memory) from the training process.
AUTO_WORKERS_MAX = 4


def dataloader_workers(requested: int | None) -> int:
    """The --dataloader_num_workers to train with on this machine. `auto` (None): min(AUTO_WORKERS_MAX, CPUs per
    training process - 1), at least 0, and logged (`LOCAL_WORLD_SIZE`, set by `accelerate launch` / torchrun, counts
    the processes sharing the machine). A number above `os.cpu_count()` is lowered to it with a warning: more workers
    than cores only compete with training for them."""
    cpus = os.cpu_count() or 1
    if requested is None:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        workers = max(0, min(AUTO_WORKERS_MAX, cpus // processes - 1))
        logger.info("dataloader_num_workers=%d (auto: %d CPUs, %d training process(es) on this machine)",
                    workers, cpus, processes)
        return workers
    if requested > cpus:
        logger.warning("dataloader_num_workers=%d is more than this machine's %d CPUs; using %d", requested, cpus, cpus)
        return cpus
    return requested


def preset_kwargs(model_args: Any) -> dict:
    """DMILConfig values of the chosen DMIL preset (the library default needs none) and of the speed levers."""
    from ..models.dmil.configuration_dmil import REFERENCE_PRESET

    presets = {"default": {}, "reference": dict(REFERENCE_PRESET)}
    if model_args.dmil_preset not in presets:
        raise ValueError(f"--dmil_preset must be one of {sorted(presets)}, got {model_args.dmil_preset!r}")
    # Speed levers are not part of a preset: they change how the backbones compute, not what the model is.
    levers = {"fast_paths": list(model_args.fast_paths)} if model_args.fast_paths else {}
    return {**presets[model_args.dmil_preset], **levers}


# ModelArguments fields that name the user's backbones or model, which the synthetic benchmark (its own tiny model
# and data) cannot use. A saved model of the benchmark itself (--model_name_or_path) is the exception:
# `synthetic_misfit`.
USER_MODEL_FIELDS = ("modality", "text_model", "vision_model", "audio_model", "model_name_or_path")
# Backbone config fields that the benchmark's generated inputs depend on: token ids, image size and channels.
SYNTHETIC_INPUT_FIELDS = ("model_type", "vocab_size", "image_size", "num_channels")


def synthetic_misfit(path: str, expected: PretrainedConfig) -> str | None:
    """Why the saved model at `path` cannot take the synthetic benchmark's data built for `expected` (the tiny
    config of the --synthetic_* options), or None when it can: the same modalities, classes and input sizes, as a
    model trained on the benchmark with those options has."""
    from .. import DMILConfig

    problem = model_source_problem(path)
    if problem:
        return problem
    try:
        saved = DMILConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        return f"it does not load as a DMIL model ({type(err).__name__})"
    with_label2id(saved)
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


def model_source_problem(name: str) -> str | None:
    """Why `name` (a --model_name_or_path or backbone flag's value) can name no model to load, or None when it may: a
    folder that does not exist (transformers would call it a malformed repo id: "Repo id must be in the form ..."),
    one without config.json, a file, or a Hub repo id that is not in the cache while offline (HF_HUB_OFFLINE=1). A
    Hub id online is left to the download."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            return "the folder holds no config.json, so it is no saved model (give the folder save_pretrained wrote)"
        return None
    if os.path.exists(name):
        return "it is a file: give the folder that holds the model (its config.json)"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return "no such folder"
    if constants.is_offline_mode() and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        return (f"no such folder, and the Hub repo {name!r} is not in the offline cache (HF_HUB_OFFLINE=1 is set): "
                "give the path of a saved folder, or download the repo once online")
    return None


def check_model_source(name: str, flag: str) -> None:
    """Raise FileNotFoundError naming `flag` (--model_name_or_path, --text_model, ...) and `name` when it can name no
    model to load (`model_source_problem`)."""
    problem = model_source_problem(name)
    if problem:
        raise FileNotFoundError(f"{flag} {name}: {problem}")


def backbone_sources(model_args: Any) -> dict[str, str]:
    """The flag naming each backbone to load (--text_model, --vision_model, --audio_model, --modality NAME:...) ->
    its folder or Hub id."""
    slots = {f"--{name}_model": getattr(model_args, f"{name}_model") for name in ("text", "vision", "audio")}
    sources = {flag: path for flag, path in slots.items() if path}
    for row in parse_modalities(model_args.modality or []):
        sources[f"--modality {row.name}:{row.kind}:..."] = row.backbone
    return sources


def with_label2id(config: PretrainedConfig) -> PretrainedConfig:
    """`config` with the label2id of its id2label when it was saved with id2label only (label2id None or empty, as
    `DMILConfig(id2label=...)` leaves it): the label checks, the collator and predictions map class names through
    label2id."""
    if not config.label2id and config.id2label:
        config.label2id = {str(name): int(i) for i, name in config.id2label.items()}
    return config


def load_synthetic(data_args: Any, model_args: Any, seed: int):
    """The synthetic benchmark's splits, the tiny model's config and the processor its saved model serves with.
    `--model_name_or_path` may name a model trained on the benchmark (to evaluate, predict or train on), no other
    model."""
    from ..data import SyntheticInteractionSpec, make_interaction_splits, synthetic_processor, tiny_config_for

    spec = SyntheticInteractionSpec(
        modalities=tuple(m.strip() for m in data_args.synthetic_modalities.split(",") if m.strip()),
        num_labels=data_args.synthetic_num_labels,
        mixture=data_args.synthetic_mixture,
        dominant_modality=data_args.synthetic_dominant_modality,
    )
    config = tiny_config_for(spec, paradigm=model_args.paradigm, latent_dim=model_args.latent_dim,
                             check_inputs=model_args.check_inputs, **preset_kwargs(model_args))
    given = [f"--{name}" for name in USER_MODEL_FIELDS if name != "model_name_or_path" and getattr(model_args, name)]
    saved = model_args.model_name_or_path
    misfit = synthetic_misfit(saved, config) if saved and not given else None
    if given or misfit:
        # The benchmark builds its own tiny model: it would train that and ignore the backbones given.
        given = given or ["--model_name_or_path"]
        reason = f" ({saved}: {misfit})" if misfit else ""
        raise ValueError(
            f"{' and '.join(given)} name{'s' if len(given) == 1 else ''} the model for your own data{reason}, but no "
            "data was given, and the built-in synthetic benchmark has its own tiny model (--model_name_or_path takes a "
            "model trained on it). Give the data with --train_file (csv/json/parquet, with --validation_file) or "
            "--dataset_name (a Hub dataset or a save_to_disk folder)"
        )
    splits = make_interaction_splits(data_args.synthetic_train_size, data_args.synthetic_eval_size, seed=seed,
                                     spec=spec)
    return splits["train"], splits["test"], config, synthetic_processor(spec)


def _file_format(path: str) -> str:
    """The `datasets` builder of a data file, from its extension: csv, json (also .jsonl) or parquet."""
    extension = Path(path).suffix.lstrip(".").lower()
    formats = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
    if extension not in formats:
        raise ValueError(f"cannot tell the format of {path!r}: give a .csv, .json, .jsonl or .parquet file")
    return formats[extension]


class EmptyDataError(ValueError):
    """A data file or split without a single row."""


def _has_no_rows(path: str, file_format: str) -> bool:
    """Whether the data file holds no row: nothing but blank lines (json), a header at most (csv), or a parquet file
    of 0 rows. Read only as far as the first row."""
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows == 0
    lines = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip() and not (file_format == "json" and line.strip() == "[]"):  # `[]`: a JSON array of none
                lines += 1
                if lines > (file_format == "csv"):  # a csv's first line is its header
                    return False
    return True


def load_data_file(path: str, flag: str, label_column: str | None = None) -> Dataset:
    """One data file (`--train_file`, `--validation_file` or `--test_file`, named by `flag`) as a Dataset. A missing
    or empty file, or one `datasets` cannot read, is an error that names the flag and the file (`datasets` names
    neither: `Instruction "test" corresponds to no data!`). A csv label column whose every labelled value is the text
    of a JSON list (`["odd", "big"]`) is read as lists, as the same column of a JSON lines or parquet file is
    (`json_list_labels`)."""
    import datasets

    file_format = _file_format(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file" + (" (it is a folder)" if os.path.isdir(path) else ""))
    expected = {"csv": "a header line and one line per row", "json": "one JSON object per line",
                "parquet": "at least one row"}[file_format]
    if os.path.getsize(path) == 0 or _has_no_rows(path, file_format):
        raise EmptyDataError(f"{flag} {path} has no rows (expected {expected})")
    try:
        dataset = datasets.load_dataset(file_format, data_files={"data": path})["data"]
    except (ValueError, StopIteration, datasets.exceptions.DatasetsError) as err:
        cause = err.__cause__ or err  # DatasetGenerationError hides the reader's own error
        raise ValueError(f"{flag} {path} cannot be read as {file_format} ({expected}): "
                         f"{type(cause).__name__}: {str(cause).strip()[:300]}") from err
    if len(dataset) == 0:
        raise EmptyDataError(f"{flag} {path} has no rows (expected {expected})")
    if file_format == "csv" and label_column in dataset.column_names:
        dataset = json_list_labels(dataset, label_column, f"{flag} {path}")
    return dataset


def _json_list(value: Any) -> list | None:
    """`value` as the list it is the JSON text of, else None."""
    if not isinstance(value, str) or not value.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) else None


def json_list_labels(dataset: Dataset, label_column: str, source: str) -> Dataset:
    """A csv's label column as lists when every labelled value of it is the text of a JSON list (`["odd", "big"]`,
    `[1, 0, 1]`, `[]`): csv has no list type, so that is how a csv holds multi-label rows (or several regression
    targets). The column is then what the same labels in a JSON lines, parquet or `datasets` file are, and
    `problem_type_of_label_values` decides the problem type from the lists. A column where only some values are JSON
    lists stays text, with a warning naming a row that is not one."""
    import datasets

    feature = dataset.features[label_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        return dataset
    values = dataset[label_column]
    parsed = [None if value is None else _json_list(value) for value in values]
    labelled = [i for i, value in enumerate(values) if value is not None]
    lists = [i for i in labelled if parsed[i] is not None]
    if not lists:
        return dataset
    if len(lists) < len(labelled):
        row = next(i for i in labelled if parsed[i] is None)
        logger.warning("%s: label column %r holds JSON lists in %d of %d rows, but row %d (%r) is not one: the column "
                       "is read as text, one class per distinct value", source, label_column, len(lists),
                       len(labelled), row, values[row])
        return dataset
    try:
        list_feature = datasets.Dataset.from_dict({label_column: parsed}).features[label_column]
    except (TypeError, ValueError) as err:  # pyarrow's ArrowInvalid / ArrowTypeError: one list mixes names and numbers
        raise ValueError(f"{source}: the JSON lists of label column {label_column!r} must each hold class names or "
                         f"numbers, not both ({type(err).__name__}: {err})") from err
    features = dataset.features.copy()
    features[label_column] = list_feature
    return dataset.map(lambda _, i: {label_column: parsed[i]}, with_indices=True, features=features)


def load_user_splits(data_args: Any, need_train: bool = True) -> dict[str, Dataset | None]:
    """The user's `train`, `validation` and `test` splits (None where there is none): from `--train_file`,
    `--validation_file` and `--test_file`, else from a `load_from_disk` folder or a Hub dataset
    (`--train_split_name`, `--validation_split_name` (default: validation, else test), `--test_split_name`). Without
    `need_train` (a run that does not train) the training split may be missing."""
    import datasets

    from .. import prepare_media_columns

    files = {split: path for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file),
                                             ("test", data_args.test_file)) if path}
    if files:
        if need_train and "train" not in files:
            raise ValueError("--validation_file / --test_file need a --train_file to train on (or --do_train false)")
        # Each file on its own: one load_dataset over all of them gives every split the first file's columns, so a
        # test file without labels would get a label column of None (and a test.jsonl beside a train.csv would be
        # read as csv).
        raw = datasets.DatasetDict({
            split: load_data_file(path, f"--{split}_file", data_args.label_column_name)
            for split, path in files.items()
        })
        names = {"train": "train", "validation": "validation", "test": "test"}
    else:
        raw = (datasets.load_from_disk(data_args.dataset_name) if os.path.isdir(data_args.dataset_name)
               else datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name))
        if not isinstance(raw, datasets.DatasetDict):
            raw = datasets.DatasetDict(train=raw)
        if need_train and data_args.train_split_name not in raw:
            raise ValueError(f"no split {data_args.train_split_name!r} in the dataset (splits: {list(raw)})")
        names = {"train": data_args.train_split_name, "test": data_args.test_split_name,
                 "validation": data_args.validation_split_name
                 or next((s for s in ("validation", "test") if s in raw), None)}
        # The splits a run trains and evaluates on; the test split (there by default name) only matters to
        # --do_predict, whose check refuses one without rows (run.py's check_splits).
        for split in ("train", "validation") if need_train else ("validation",):
            if names[split] in raw and len(raw[names[split]]) == 0:
                raise EmptyDataError(f"the {names[split]!r} split of --dataset_name {data_args.dataset_name} has no "
                                     f"rows (--{split}_split_name)")
    # Audio()/Video() columns stay undecoded: the collator decodes their files (soundfile, PyAV); datasets would need
    # torchcodec and FFmpeg to, and fail at the first row it reads.
    raw = prepare_media_columns(raw)
    return {split: raw[name] if name in raw else None for split, name in names.items()}


def load_user_data(data_args: Any):
    """The user's training and evaluation splits (`load_user_splits`)."""
    splits = load_user_splits(data_args)
    return splits["train"], splits["validation"]


def _label_feature(train, label_column: str):
    feature = train.features.get(label_column)
    if feature is None:
        raise ValueError(f"label column {label_column!r} not in the dataset (columns: {train.column_names})")
    return feature


def _inner(feature):
    """The value feature of a list column (datasets' List / Sequence / LargeList), else None."""
    return getattr(feature, "feature", None)


def data_problem_type(train, label_column: str, given: str | None = None) -> str:
    """The problem type: `given` (--problem_type), else what the label column's values make of the task
    (`problem_type_of_label_values`: lists multi-label, floats a regression, class ids or names single-label)."""
    if given is not None:
        if given not in PROBLEM_TYPES:
            raise ValueError(f"--problem_type must be one of {sorted(PROBLEM_TYPES)}, got {given!r}")
        return given
    _label_feature(train, label_column)
    return problem_type_of_label_values(train[label_column])


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


def first_rows(dataset: Dataset | None, count: int | None) -> Dataset | None:
    """The first `count` rows of `dataset` (--max_train_samples and the like); all of them without a count."""
    return dataset if dataset is None or not count else dataset.select(range(min(count, len(dataset))))


def select_samples(
    train: Dataset | None, evaluation: Dataset | None, data_args: Any
) -> tuple[Dataset | None, Dataset | None]:
    """The `--max_train_samples` / `--max_eval_samples` subsets: taken before labels are checked, so that the
    checks see the data that is trained and evaluated on."""
    return first_rows(train, data_args.max_train_samples), first_rows(evaluation, data_args.max_eval_samples)


# The DataTrainingArguments field that names each modality's column.
MODALITY_COLUMN_FIELDS = {"text": "text_column_name", "vision": "image_column_name", "audio": "audio_column_name"}
# Their default columns: a flag left at its default gives way to a modality named like the column.
DEFAULT_COLUMNS = {"text_column_name": "text", "image_column_name": "image", "audio_column_name": "audio"}


def parse_modalities(specs: list[str]) -> list:
    """--modality NAME:KIND:BACKBONE[:FRAMES] values as `Modality` rows whose backbone is the path to load."""
    from .. import Modality

    rows = []
    for spec in specs:
        parts = spec.split(":")
        # A Windows drive or a URL-like path may hold ':'; the name and kind never do, the frame count is a number.
        frames = int(parts.pop()) if len(parts) > 3 and parts[-1].isdigit() else None
        if len(parts) < 3:
            raise ValueError(f"--modality takes NAME:KIND:BACKBONE[:FRAMES], got {spec!r}")
        rows.append(Modality(parts[0], parts[1], ":".join(parts[2:]), num_frames=frames))
    return rows


def modality_columns(data_args: Any, config) -> dict[str, str]:
    """Each of the model's modalities -> the data column it reads: --modality_column_names NAME=COLUMN; else
    --text_column_name/--image_column_name/--audio_column_name for the three-slot modalities (left at its default, the
    flag's column goes to the modality of that name if there is one, and the three-slot modality reads its own name);
    else the modality's name."""
    overrides = {}
    for item in data_args.modality_column_names or []:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            raise ValueError(f"--modality_column_names takes NAME=COLUMN, got {item!r}")
        overrides[name] = column
    unknown = sorted(set(overrides) - set(config.modalities))
    if unknown:
        raise ValueError(f"--modality_column_names names {unknown}, which are not modalities of the model "
                         f"({config.modalities})")
    def column(row) -> str:
        if row.name in overrides:
            return overrides[row.name]
        if not row.is_legacy_slot:
            return row.name
        flag = MODALITY_COLUMN_FIELDS[row.name]
        value = getattr(data_args, flag)
        # A modality's own name wins over a three-slot alias (as in the collator and the pipeline): with an `image`
        # video row beside the `vision` image row, the default --image_column_name (image) is the video's column.
        if value == DEFAULT_COLUMNS[flag] and value != row.name and value in config.modalities:
            return row.name
        return value

    return {m.name: column(m) for m in config.modality_specs}


def check_columns(data_args: Any, fields: dict[str, str], splits: dict[str, Dataset | None]) -> None:
    """Every split must have the column of each DataTrainingArguments field in `fields` (field -> what it is read for).
    A modality's missing column would otherwise leave the collator without values for it, and the run would train on
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
    data_args: Any, modalities: list[str], dataset: Dataset, read: Collection[str] = ()
) -> Dataset:
    """The dataset without the columns of three-slot modalities the model has no backbone for: the collator would hand
    them to a processor without that sub-processor. A column some modality reads (`read`: an `image` video row reads
    the default --image_column_name) is kept. A warning says so, as the data had them."""
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
    through the model's label2id like string labels (a model loaded with --model_name_or_path may number the same
    classes differently)."""
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


def build_user_model_and_processor(model_args: Any, data_args: Any, train: Dataset):
    """The model and its processor: loaded from --model_name_or_path (labels and all), or built from the backbones with
    the training data's labels (`label_maps`)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    from .. import DMILForMultimodalClassification, DMILProcessor
    from ..models.dmil.processing_dmil import load_image_processor

    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:
        check_model_source(model_args.model_name_or_path, "--model_name_or_path")
        model = DMILForMultimodalClassification.from_pretrained(model_args.model_name_or_path, **extra)
        processor = DMILProcessor.from_pretrained(model_args.model_name_or_path)
        with_label2id(model.config)
        saved = model.config.problem_type
        if saved is not None and model_args.problem_type not in (None, saved):
            raise ValueError(f"--problem_type {model_args.problem_type} but the model from --model_name_or_path is a "
                             f"{saved} model")
        if saved is None and (train is not None or model_args.problem_type):
            # Saved before its first forward with labels: the data say it, as the model's would (a run that does not
            # train leaves it to the model's first forward).
            model.config.problem_type = (
                model_args.problem_type if train is None
                else data_problem_type(train, data_args.label_column_name, model_args.problem_type)
            )
    else:
        problem_type = data_problem_type(train, data_args.label_column_name, model_args.problem_type)
        id2label = label_maps(train, data_args.label_column_name, problem_type)
        slots = {"text": model_args.text_model, "vision": model_args.vision_model, "audio": model_args.audio_model}
        if model_args.modality and any(slots.values()):
            raise ValueError(
                "give the backbones either with --modality or with --text_model/--vision_model/--audio_model"
            )
        for flag, source in backbone_sources(model_args).items():
            check_model_source(source, flag)
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


def check_media(data_args: Any, config: PretrainedConfig, columns: dict[str, str],
                splits: dict[str, Dataset | None]) -> None:
    """Every media file of every split opened before anything trains (`--media_check`: headers, full or none), so that
    a missing picture in row 5 is reported now, by file, row and column, and not when its batch comes up."""
    if data_args.media_check == "none":
        return
    from .media_check import validate_media

    files = {"training": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    kinds = {row.name: row.kind for row in config.modality_specs}
    for split, dataset in splits.items():
        if dataset is not None:
            validate_media(dataset, columns, kinds, full_decode=data_args.media_check == "full",
                           data_file=files[split] or f"{data_args.dataset_name} [{split}]")


def prepare_user_data(model_args: Any, data_args: Any, need_train: bool = True):
    """Model, processor, collator and the splits (`training`, `validation`, `test`; None where absent) for user data,
    every check that can fail done before training. The test split (`--do_predict`) may lack labels."""
    from .. import DMILDataCollator

    loaded = load_user_splits(data_args, need_train=need_train)
    train, evaluation = select_samples(loaded["train"] if need_train else None, loaded["validation"], data_args)
    splits = {"training": train, "validation": evaluation,
              "test": first_rows(loaded["test"], data_args.max_predict_samples)}
    check_columns(data_args, {"label_column_name": "the labels"}, {k: v for k, v in splits.items() if k != "test"})
    model, processor = build_user_model_and_processor(model_args, data_args, train)
    modalities = model.config.modalities
    columns = modality_columns(data_args, model.config)
    for split, dataset in splits.items():
        for modality, column in columns.items():
            if dataset is not None and column not in dataset.column_names:
                raise ValueError(
                    f"the {split} data has no {column!r} column for the model's {modality} backbone (columns: "
                    f"{dataset.column_names}); set "
                    f"--{MODALITY_COLUMN_FIELDS.get(modality, 'modality_column_names')} to the "
                    "column that holds it"
                )
    for split, dataset in splits.items():
        if dataset is None:
            continue
        dataset = drop_unused_modality_columns(data_args, modalities, dataset, read=set(columns.values()))
        if data_args.label_column_name != "label" and data_args.label_column_name in dataset.column_names:
            dataset = dataset.rename_column(data_args.label_column_name, "label")  # the collator reads "label"
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

