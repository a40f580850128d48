"""Model cards for trained DMIL models, rendered with huggingface_hub from the Jinja template shipped as package data
(`dmil_hf/templates/model_card.md`)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .repo_ids import resolve_repo_id, run_name
from ..models.dmil.pipeline_dmil import input_keys
from ..evaluation import per_type_summary
from ..models.dmil.stages_dmil import EVERYTHING, stage_plans

# Read through importlib.resources, so that an installed wheel finds it as well as a source checkout (it is listed in
# pyproject.toml's [tool.setuptools.package-data]).
_DEFAULT_TEMPLATE = files(__package__) / "templates" / "model_card.md"


def _template_text(template: str | None) -> str:
    """The Jinja source of the model card: `template` (a file path) if given, else the template shipped with dmil_hf.
    A missing file is an error, never a silent switch to another template."""
    if template:
        path = Path(template)
        if not path.is_file():
            raise FileNotFoundError(f"model card template {str(path)!r} (model_card_template) is not a file")
        return path.read_text(encoding="utf-8")
    if not _DEFAULT_TEMPLATE.is_file():
        raise FileNotFoundError(
            f"dmil_hf's model card template is missing ({_DEFAULT_TEMPLATE}): this installation of dmil_hf lacks its "
            "package data dmil_hf/templates/model_card.md (see [tool.setuptools.package-data] in pyproject.toml). "
            "Reinstall dmil_hf, or pass model_card_template=<path to a Jinja template>."
        )
    return _DEFAULT_TEMPLATE.read_text(encoding="utf-8")


def _stage_trains(config, stage: int, method: str) -> str:
    """What trains in a stage, read from the stage table."""
    plan = stage_plans(config.paradigm)[stage]
    modules = plan.trained_modules(config)
    if EVERYTHING in modules:
        return f"everything (backbones via {method})" if plan.finetune else "everything"
    return ", ".join(m.replace("_", " ") for m in modules)


def _stage_loss(config, stage: int) -> str:
    """The stage's loss terms with their weights, read from the stage table."""
    return " + ".join(
        term if weight == "1" else f"{weight} · {term}"
        for term, weight in stage_plans(config.paradigm)[stage].describe_weights(config)
    )


# An example value of each kind for the card's pipeline call; the three-slot modalities use their input keys.
_EXAMPLE = {"text": '"a sentence"', "image": '"photo.png"', "video": '"clip.mp4"', "audio": '"clip.wav"',
            "features": "features"}


def _example_input(config) -> str:
    """The pipeline input of the card's usage example: one value per modality, keyed as the pipeline takes it."""
    parts = []
    # The pipeline's three-slot key of a three-slot modality ("image" for "vision"), else the modality's name.
    aliases = {modality: key for key, modality in input_keys(config).items() if key != modality}
    for row in config.modality_specs:
        key = aliases.get(row.name, row.name)
        parts.append(f'"{key}": {_EXAMPLE[row.kind]}')
    return ", ".join(parts)


_RUNTIME_SUFFIXES = ("_runtime", "_per_second")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _per_type_rows(metrics: dict[str, float], components: list[str], metric: str = "accuracy") -> list[dict[str, Any]]:
    """The per-type metric (accuracy; MAE for a regression) and mean gate weight of each component, per interaction
    type (when the eval data had types)."""
    return [
        # Also under the metric's own name: a custom template written for release 0.1 reads `t.accuracy`.
        {"type": kind, "value": _fmt(value), metric: _fmt(value), "gates": ["-" if g is None else _fmt(g) for g in gates]}
        for kind, value, gates in per_type_summary(metrics, components, metric=metric)
    ]


# Per problem type: the card's task line (what a score is and what the `ce_*` terms hold) and its per-type metric.
TASK_LINES = {
    "single_label_classification": (
        "single-label classification: `score` is the softmax probability; the `ce_*` loss terms are cross-entropies",
        "accuracy",
    ),
    "multi_label_classification": (
        "multi-label classification: `score` is each label's own sigmoid probability; the `ce_*` loss terms are "
        "binary cross-entropies averaged over the labels",
        "accuracy",
    ),
    "regression": (
        "regression: `score` is the predicted value; the `ce_*` loss terms are squared errors averaged over the "
        "targets",
        "mae",
    ),
}


def has_interactions(config) -> bool:
    """Whether the model's paradigm has DMIL's per-sample interaction gate (and so gives every prediction an
    interaction composition); the baselines have none."""
    return config.paradigm == "dmil"


def paradigm_summary(config) -> str:
    """One sentence on what the paradigm's head is: the first paragraph of its class docstring (`heads_dmil.HEADS`),
    so that a new paradigm describes itself in its card."""
    from ..models.dmil.heads_dmil import HEADS

    head = HEADS.get(config.paradigm)
    text = (head.__doc__ or "").strip().split("\n\n")[0] if head is not None else ""
    return " ".join(text.split()) or f"the {config.paradigm} paradigm of dmil_hf."


def problem_type_of_config(config) -> str:
    """The config's problem type, or what transformers' rule makes of `num_labels` before the first forward."""
    return config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")


def task_description(config) -> str:
    """What the model predicts, for the card's opening: the single place the card describes the task type."""
    return {
        "single_label_classification": f"single-label classification over {config.num_labels} classes",
        "multi_label_classification": f"multi-label classification over {config.num_labels} labels",
        "regression": f"regression of {config.num_labels} target{'s' if config.num_labels > 1 else ''}",
    }[problem_type_of_config(config)]


def model_noun(config) -> str:
    """What the card calls the model in its opening line, by problem type."""
    return {
        "single_label_classification": "classifier",
        "multi_label_classification": "multi-label classifier",
        "regression": "regressor",
    }[problem_type_of_config(config)]


def _is_local(name: str) -> bool:
    path = Path(name).expanduser()
    return path.is_absolute() or path.exists() or name.startswith((".", "~"))


def backbone_display_name(name: str | None) -> str:
    """A backbone as the card names it: a Hub id as it is; a local folder (an absolute path, or one that exists
    here) by its folder name, marked as local, so that the card does not publish this machine's paths."""
    if not name:
        return "(built from config)"
    if _is_local(name):
        return f"{Path(name).expanduser().name or name} (a local folder)"
    return name


def hub_base_model(name: str | None) -> str | None:
    """A backbone's name as a card's `base_model`: a Hub repo id (which the Hub links), None for a backbone built from
    its config or loaded from a local folder (stated in the card's text instead)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or _is_local(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


# The card's `pipeline_tag`. The Hub knows no "multimodal-classification" task (its tags are a fixed list, and the
# Hub rejects metadata naming another), and every valid tag near it promises an input this model cannot take alone:
# `text-classification`, `image-classification` and `audio-classification` are one modality each (the Hub's widget
# and inference would send one), `zero-shot-classification` and `any-to-any` are other tasks. `other` is the Hub's
# tag for a model outside its task list; the pipeline this model runs in is its config's custom_pipelines entry.
PIPELINE_TAG = "other"
# The model-index task of the card's evaluation results, by problem type (its `type` is the pipeline tag).
TASK_NAMES = {
    "single_label_classification": "Multimodal classification",
    "multi_label_classification": "Multimodal multi-label classification",
    "regression": "Multimodal regression",
}
# The metrics the card's model-index reports, as `compute_metrics` names them (`eval_` + name): the Hub metric type,
# its display name, its arguments. Each problem type reports its own (classification: accuracy and F1; regression:
# MAE, MSE, Pearson's r); the synergy indicator is DMIL's own measure of synergistic information.
MODEL_INDEX_METRICS = {
    "eval_accuracy": ("accuracy", "Accuracy", None),
    "eval_f1_macro": ("f1", "F1 (macro)", {"average": "macro"}),
    "eval_f1_micro": ("f1", "F1 (micro)", {"average": "micro"}),
    "eval_mae": ("mae", "MAE", None),
    "eval_mse": ("mse", "MSE", None),
    "eval_pearson": ("pearsonr", "Pearson's r", None),
    "eval_synergy_indicator": ("synergy_indicator", "Synergy indicator", None),
}
# Packaged `datasets` loaders: a dataset built from local files by one of these is no Hub dataset (transformers'
# TrainingSummary leaves the same out).
_LOCAL_BUILDERS = ("csv", "json", "pandas", "parquet", "text", "arrow", "imagefolder", "audiofolder", "videofolder")
# What the model-index names an evaluation set that is not a Hub dataset (the Hub wants a dataset on every result).
UNPUBLISHED_DATASET = {"type": "custom", "name": "unpublished evaluation data"}


def _listify(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def eval_dataset_description(dataset: Any) -> dict[str, Any] | None:
    """The evaluation data as the card's model-index names it, read from a 🤗 dataset loaded from the Hub (as
    transformers' `TrainingSummary.from_trainer` reads it): its builder (the Hub id), config and split. None for data
    from local files or built in memory."""
    info = getattr(dataset, "info", None)
    builder = getattr(dataset, "builder_name", None) or getattr(info, "builder_name", None)
    if not builder or builder in _LOCAL_BUILDERS:
        return None
    config = getattr(dataset, "config_name", None) or getattr(info, "config_name", None)
    split = getattr(dataset, "split", None)
    return {"type": builder, "name": getattr(info, "dataset_name", None) or builder,
            "config": None if config in (None, "default") else str(config), "split": None if split is None else str(split)}


def model_index_results(
    config, metrics: dict[str, Any], dataset: dict[str, Any] | None = None, task_type: str = PIPELINE_TAG,
) -> list[EvalResult]:
    """The card's model-index: one `EvalResult` per metric the final model was evaluated with (`MODEL_INDEX_METRICS`
    present in `metrics`), on `dataset` (`{"type", "name", "config", "split", "args"}`; `UNPUBLISHED_DATASET` when
    nothing names it)."""
    dataset = dataset or UNPUBLISHED_DATASET
    results = []
    for key, (metric_type, metric_name, metric_args) in MODEL_INDEX_METRICS.items():
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        results.append(EvalResult(
            task_type=task_type, task_name=TASK_NAMES[problem_type_of_config(config)],
            dataset_type=dataset["type"], dataset_name=dataset["name"], dataset_config=dataset.get("config"),
            dataset_split=dataset.get("split"), dataset_args=dataset.get("args"),
            metric_type=metric_type, metric_name=metric_name, metric_value=float(value), metric_args=metric_args,
        ))
    return results


def card_dataset(card_kwargs: dict[str, Any], eval_dataset: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation data the model-index names: the first of the card's `dataset_tags` (with `dataset` as its name
    and `dataset_args` as its config, as transformers' `create_model_card` takes them), else what the evaluation set
    says of itself (`eval_dataset_description`)."""
    tags = _listify(card_kwargs.get("dataset_tags"))
    if not tags:
        return eval_dataset
    names, arguments = _listify(card_kwargs.get("dataset")), card_kwargs.get("dataset_args")
    argument = _listify(arguments)[0] if isinstance(arguments, (str, list)) and arguments else arguments
    described = {"type": tags[0], "name": names[0] if names else tags[0]}
    if isinstance(argument, dict):
        described["args"] = argument
    elif argument:
        described["config"] = str(argument)
    if eval_dataset is not None and eval_dataset["type"] == tags[0]:
        described = {**eval_dataset, **described}
    return described


def finetune_stage(config) -> int | None:
    """The paradigm's fine-tuning stage (DMIL's 3, two_stage's 2), whose LoRA adapter applies to the stage before it;
    None for a paradigm without one."""
    return next((k for k, plan in stage_plans(config.paradigm).items() if plan.finetune), None)


def render_adapter_card(config, repo_id: str, stage: int, adapter_subfolder: str = "adapter") -> ModelCard:
    """The card of a LoRA adapter folder (`adapter/`, `stage-k/adapter/`): what it applies to (the repo's stage
    folder before the fine-tuning stage, not the merged model at its root) and the one call that loads it."""
    base = f"stage-{stage - 1}"
    data = ModelCardData(library_name="peft", base_model=hub_base_model(repo_id), tags=["dmil", "lora", "peft"])
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# LoRA adapter of {repo_id}, stage {stage}\n\n"
        f"The adapter trained in stage {stage} ({stage_plans(config.paradigm)[stage].title}) of `{repo_id}`. It "
        f"applies to the model in the repo's `{base}/` folder (its `adapter_config.json` names the repo; peft has no "
        f"field for a subfolder), not to the model at the repo's root, which has it merged in already.\n\n"
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModel\n\n"
        f'base = AutoModel.from_pretrained("{repo_id}", subfolder="{base}", trust_remote_code=True)\n'
        f'model = PeftModel.from_pretrained(base, "{repo_id}", subfolder="{adapter_subfolder}")\n```\n'
    )
    return ModelCard(text)


def _usage_path(args, repo_id: str, pushes: bool) -> str:
    """What the card's usage example loads: the Hub repo when the run pushes there, else the saved folder's path
    (as given when relative; an absolute one as `path/to/<its last two parts>`)."""
    if pushes:
        return repo_id
    folder = Path(args.output_dir) / "final"
    return folder.as_posix() if not folder.is_absolute() else f"path/to/{folder.parent.name}/{folder.name}"


# Titles of the pictures `dmil_hf.evaluation.plots.save_plots` draws into final/plots, in the card's order.
PLOT_TITLES = {
    "interaction_weights.png": "Interaction weights of the evaluation samples (the gate's view of the data)",
    "accuracy_per_type.png": "Accuracy per interaction type",
    "training_curves.png": "Training curves over the stages",
}


def write_adapter_card(adapter_dir: str | Path, config, repo_id: str, adapter_subfolder: str = "adapter") -> bool:
    """Write the card of the LoRA adapter saved in `adapter_dir` (`render_adapter_card`) into its README.md; returns
    whether there was an adapter there (and the paradigm has a fine-tuning stage)."""
    stage = finetune_stage(config)
    if stage is None or not (Path(adapter_dir) / "adapter_config.json").is_file():
        return False
    render_adapter_card(config, repo_id, stage, adapter_subfolder=adapter_subfolder).save(Path(adapter_dir) / "README.md")
    return True


# The model-card arguments of transformers' `Trainer.create_model_card` (and so of `Trainer.push_to_hub`).
CARD_ARGUMENTS = ("language", "license", "tags", "model_name", "finetuned_from", "tasks", "dataset_tags", "dataset",
                  "dataset_args")


def render_model_card(
    model, args, stage_results: dict[int, dict[str, float]], template: str | None = None,
    plots: list[str] | None = None, repo_id: str | None = None, eval_dataset: dict[str, Any] | None = None,
    pushes: bool | None = None, **card_kwargs: Any,
) -> ModelCard:
    """Render the card of a trained model: backbones, stages and hyperparameters, evaluation results, plots (paths
    relative to the card, e.g. `plots/training_curves.png`), usage. The usage example of a run that pushes loads its
    repo: `repo_id` (the full id the Hub pre-flight found), else `hub_model_id` or the output folder's name, checked
    and normalised (`resolve_repo_id`), never pasted as given; a run that does not push loads its saved folder
    (`pushes` overrides what the arguments say, for a run pushed afterwards).

    The metadata: `pipeline_tag` (`PIPELINE_TAG`), `base_model` (each backbone loaded from the Hub; a local one is
    named in the text), `model_name` (the repo's name), `datasets` and a model-index of the final model's evaluation
    (`model_index_results`, on `eval_dataset`, `eval_dataset_description`'s form). `card_kwargs` are transformers'
    `Trainer.create_model_card` arguments (`CARD_ARGUMENTS`): `language`, `license`, more `tags`, `model_name`,
    `finetuned_from` (the `base_model` instead of the backbones), `tasks` (the model-index task type),
    `dataset_tags` / `dataset` / `dataset_args` (the evaluation data's Hub id, name and config)."""
    unknown = sorted(set(card_kwargs) - set(CARD_ARGUMENTS))
    if unknown:
        raise TypeError(f"unknown model card argument(s) {unknown}; transformers' create_model_card takes {CARD_ARGUMENTS}")
    config = model.config
    backbones = [
        {"modality": m.name, "kind": m.kind, "name": backbone_display_name(m.backbone._name_or_path),
         "model_type": m.backbone.model_type, "hub_id": hub_base_model(m.backbone._name_or_path)}
        for m in config.modality_specs
    ]
    # A Hub id is a base model; a local folder is not one the Hub can link (the card's text says where it came from).
    base_models = list(dict.fromkeys(b["hub_id"] for b in backbones if b["hub_id"]))
    local_backbones = [b for b in backbones if b["name"].endswith("(a local folder)")]
    paradigm = config.paradigm
    gated = has_interactions(config)
    stage_numbers = [k for k in args.stage_list if k in stage_plans(paradigm)]
    stages = [
        {
            "stage": k,
            "trains": _stage_trains(config, k, args.finetune_method),
            "loss": _stage_loss(config, k),
            "epochs": f"{args.stage_value('num_train_epochs', k):g}",
            "max_steps": "-" if args.stage_value("max_steps", k) in (None, -1) else args.stage_value("max_steps", k),
            "learning_rate": args.stage_value("learning_rate", k),
        }
        for k in stage_numbers
    ]
    # Each problem type reports some of these (classification: accuracy and F1; regression: MAE, MSE, Pearson's r).
    headline = ("eval_loss", "eval_accuracy", "eval_f1_micro", "eval_f1_macro", "eval_synergy_indicator", "eval_mae",
                "eval_mse", "eval_pearson")
    results = [
        {"stage": k, "metric": name, "value": _fmt(metrics[name])}
        for k, metrics in sorted(stage_results.items())
        for name in headline
        if isinstance(metrics.get(name), (int, float))
    ]
    final_metrics = stage_results[max(stage_results)] if stage_results else {}
    components = config.interaction_components if gated else []
    task_line, per_type_metric = TASK_LINES[problem_type_of_config(config)]
    details = [
        {"metric": name, "value": _fmt(value)}
        for name, value in sorted(final_metrics.items())
        if name.startswith("eval_") and name not in headline and isinstance(value, (int, float))
        and not name.endswith(_RUNTIME_SUFFIXES) and not name.startswith((f"eval_{per_type_metric}_", "eval_gate_"))
    ]
    loss_weights = {k: v for k, v in config.to_dict().items() if k.endswith("_weight") or k.endswith("_scale")}
    pushes = bool(args.push_to_hub or args.hub_model_id) if pushes is None else pushes
    # The repo DMILTrainer uploads to; a run that does not push is named after its output folder, which need not be a
    # valid repo id.
    repo_id = (repo_id or resolve_repo_id(args.hub_model_id, args.output_dir)) if pushes else run_name(args.output_dir)
    # Its real name: the repo's (as transformers' Trainer names a pushed model), unless the caller names it.
    model_name = card_kwargs.get("model_name") or repo_id.rpartition("/")[2]
    dataset = card_dataset(card_kwargs, eval_dataset)
    task_types = _listify(card_kwargs.get("tasks"))
    datasets = _listify(card_kwargs.get("dataset_tags")) or ([dataset["type"]] if dataset else [])
    tags = ["dmil", "multimodal", "multimodal-classification", *config.modalities]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys([*tags, *_listify(card_kwargs.get("tags"))])),
        base_model=_listify(card_kwargs.get("finetuned_from")) or base_models or None,
        datasets=datasets or None,
        language=card_kwargs.get("language"),
        license=card_kwargs.get("license"),
        model_name=model_name,
        eval_results=model_index_results(config, final_metrics, dataset, task_types[0] if task_types else PIPELINE_TAG)
        or None,
    )
    stage = finetune_stage(config)
    adapter = {"stage": stage, "base": f"stage-{stage - 1}"} if args.finetune_method == "lora" and stage else None
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    template_str = _template_text(template)
    kwargs = dict(
        model_name=model_name, repo_id=repo_id, model_path=_usage_path(args, repo_id, pushes), on_hub=pushes,
        local_backbones=local_backbones, adapter=adapter,
        paradigm=paradigm, has_interactions=gated, paradigm_summary=paradigm_summary(config),
        task=task_description(config), model_noun=model_noun(config), components=config.interaction_components if gated else [],
        backbones=backbones, num_labels=config.num_labels,
        labels=[config.id2label[i] for i in range(config.num_labels)], latent_dim=config.latent_dim,
        finetune_method=args.finetune_method, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, stages=stages, loss_weights=loss_weights,
        batch_size=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
        weight_decay=args.weight_decay, seed=args.seed, precision=precision, results=results, details=details,
        per_type=_per_type_rows(final_metrics, components, per_type_metric), per_type_metric=per_type_metric,
        gate_components=components, task_terms=task_line,
        example_input=_example_input(config),
        plots=[{"path": p, "title": PLOT_TITLES.get(Path(p).name, Path(p).stem.replace("_", " "))}
               for p in sorted(plots or [], key=lambda p: list(PLOT_TITLES).index(Path(p).name)
                               if Path(p).name in PLOT_TITLES else len(PLOT_TITLES))],
    )
    return ModelCard.from_template(card_data, template_str=template_str, **kwargs)


def _card_arguments_of(card: ModelCard, config, args) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What a card written at training time says beyond what the run folder holds, for rendering it again: the model
    card arguments it was given (`CARD_ARGUMENTS`) and its evaluation data, read back from its metadata."""
    data = card.data
    kwargs: dict[str, Any] = {}
    for name in ("language", "license"):
        if data.get(name):
            kwargs[name] = data.get(name)
    defaults = {"dmil", "multimodal", "multimodal-classification", *config.modalities}
    extra = [tag for tag in (data.tags or []) if tag not in defaults]
    if extra:
        kwargs["tags"] = extra
    backbones = [hub_base_model(m.backbone._name_or_path) for m in config.modality_specs]
    base = _listify(data.get("base_model"))
    if base and base != list(dict.fromkeys(b for b in backbones if b)):
        kwargs["finetuned_from"] = base
    named = data.get("model_name")
    if named and named not in (run_name(args.output_dir), (args.hub_model_id or "").rpartition("/")[2]):
        kwargs["model_name"] = named
    dataset = None
    results = data.eval_results or []
    if results:
        first = results[0]
        if first.task_type != PIPELINE_TAG:
            kwargs["tasks"] = first.task_type
        if (first.dataset_type, first.dataset_name) != (UNPUBLISHED_DATASET["type"], UNPUBLISHED_DATASET["name"]):
            dataset = {"type": first.dataset_type, "name": first.dataset_name, "config": first.dataset_config,
                       "split": first.dataset_split, "args": first.dataset_args}
    if data.get("datasets"):
        kwargs["dataset_tags"] = _listify(data.get("datasets"))
        if dataset is not None:
            kwargs["dataset"] = [dataset["name"] if tag == dataset["type"] else tag for tag in kwargs["dataset_tags"]]
    return kwargs, dataset


def render_saved_model_card(
    final_dir: str | Path, stage_results: dict[int, dict[str, float]], repo_id: str,
) -> ModelCard:
    """The card of a saved final model (`output_dir/final`) rendered again for the repo it is pushed to after training
    (`python -m dmil_hf.hub.publisher push`): the usage lines load `repo_id` and the metadata names it. Made from what
    the run saved: `config.json`, `training_args.json`, the stages' results (`stage_results`, from their markers), the
    pictures in `plots/`, and the metadata of the card written at training time (the card arguments it was given, its
    evaluation data). `ValueError` when the folder lacks the config or the arguments (saved before dmil_hf wrote
    training_args.json)."""
    from types import SimpleNamespace

    from ..models.dmil.configuration_dmil import DMILConfig
    from ..training.run_folder import TRAINING_ARGS_JSON, read_training_arguments
    from ..training.training_args import SavedTrainingArguments

    final_dir = Path(final_dir)
    saved = read_training_arguments(final_dir)
    if saved is None or not (final_dir / "config.json").is_file():
        raise ValueError(f"{final_dir} has no config.json or no {TRAINING_ARGS_JSON}: its card cannot be made again")
    args = SavedTrainingArguments(**saved)
    config = DMILConfig.from_pretrained(final_dir)
    card_path = final_dir / "README.md"
    card_kwargs, dataset = _card_arguments_of(ModelCard.load(card_path), config, args) if card_path.is_file() else ({}, None)
    template = args.model_card_template if args.model_card_template and Path(args.model_card_template).is_file() else None
    plots = sorted(f"plots/{p.name}" for p in (final_dir / "plots").glob("*.png")) if (final_dir / "plots").is_dir() else []
    return render_model_card(SimpleNamespace(config=config), args, stage_results, template=template, plots=plots,
                             repo_id=repo_id, eval_dataset=dataset, pushes=True, **card_kwargs)
