"""Model cards for trained DMIL models, rendered with huggingface_hub from the Jinja template shipped as package data
(`dmil_hf/templates/model_card.md`)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .hub_dmil import resolve_repo_id
from .pipeline_dmil import INPUT_KEYS
from .metrics import per_type_summary
from .stages_dmil import EVERYTHING, stage_plans

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


# What each baseline is, for its card (the DMIL card describes the gate instead).
BASELINE_DESCRIPTIONS = {
    "joint": "the concatenated features of every modality, an MLP head, one cross-entropy",
    "ensemble": "one MLP head per modality, each trained with its own cross-entropy, logits averaged",
    "two_stage": "unimodal pretraining of each encoder with its own head, then a joint MLP head on the concatenated "
                 "features with the encoders fine-tuned; Du et al., ICML 2023",
}

# An example value of each kind for the card's pipeline call; the three-slot modalities use their input keys.
_EXAMPLE = {"text": '"a sentence"', "image": '"photo.png"', "video": '"clip.mp4"', "audio": '"clip.wav"',
            "features": "features"}
# The pipeline's input key of each three-slot modality ("image" for "vision").
_THREE_SLOT_KEYS = {modality: key for key, modality in INPUT_KEYS.items()}


def _example_input(config) -> str:
    """The pipeline input of the card's usage example: one value per modality, keyed as the pipeline takes it."""
    parts = []
    for row in config.modality_specs:
        key = _THREE_SLOT_KEYS[row.name] if row.is_legacy_slot else row.name
        parts.append(f'"{key}": {_EXAMPLE[row.kind]}')
    return ", ".join(parts)


_RUNTIME_SUFFIXES = ("_runtime", "_per_second")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _per_type_rows(metrics: dict[str, float], components: list[str]) -> list[dict[str, Any]]:
    """Accuracy and mean gate weight of each component, per interaction type (when the eval data had types)."""
    return [
        {"type": kind, "accuracy": _fmt(accuracy), "gates": ["-" if g is None else _fmt(g) for g in gates]}
        for kind, accuracy, gates in per_type_summary(metrics, components)
    ]


# Titles of the pictures DMILTrainer.save_plots draws, in the card's order.
PLOT_TITLES = {
    "interaction_weights.png": "Interaction weights of the evaluation samples (the gate's view of the data)",
    "accuracy_per_type.png": "Accuracy per interaction type",
    "training_curves.png": "Training curves over the stages",
}


def render_model_card(
    model, args, stage_results: dict[int, dict[str, float]], template: str | None = None,
    plots: list[str] | None = None,
) -> ModelCard:
    """Render the card of a trained model: backbones, stages and hyperparameters, evaluation results, plots (paths
    relative to the card, e.g. `plots/training_curves.png`), usage."""
    config = model.config
    backbones = [
        {"modality": m.name, "kind": m.kind, "name": m.backbone._name_or_path or "(built from config)",
         "model_type": m.backbone.model_type}
        for m in config.modality_specs
    ]
    base_models = [b["name"] for b in backbones if "/" in b["name"] and not Path(b["name"]).exists()]
    paradigm = config.paradigm
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
    headline = ("eval_loss", "eval_accuracy", "eval_f1_macro", "eval_synergy_indicator")
    results = [
        {"stage": k, "metric": name, "value": _fmt(metrics[name])}
        for k, metrics in sorted(stage_results.items())
        for name in headline
        if isinstance(metrics.get(name), (int, float))
    ]
    final_metrics = stage_results[max(stage_results)] if stage_results else {}
    components = config.interaction_components if paradigm == "dmil" else []
    details = [
        {"metric": name, "value": _fmt(value)}
        for name, value in sorted(final_metrics.items())
        if name.startswith("eval_") and name not in headline and isinstance(value, (int, float))
        and not name.endswith(_RUNTIME_SUFFIXES) and not name.startswith(("eval_accuracy_", "eval_gate_"))
    ]
    loss_weights = {k: v for k, v in config.to_dict().items() if k.endswith("_weight") or k.endswith("_scale")}
    repo_id = resolve_repo_id(args.hub_model_id, args.output_dir)  # the repo DMILTrainer uploads to
    card_data = ModelCardData(
        library_name="transformers",
        tags=["dmil", "multimodal", "multimodal-classification", *config.modalities],
        base_model=base_models or None,
        model_name=repo_id,
    )
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    template_str = _template_text(template)
    kwargs = dict(
        model_name=repo_id, repo_id=repo_id, paradigm=paradigm, components=config.interaction_components,
        baseline_description=BASELINE_DESCRIPTIONS.get(paradigm, "a baseline on the same backbones"),
        backbones=backbones, num_labels=config.num_labels,
        labels=[config.id2label[i] for i in range(config.num_labels)], latent_dim=config.latent_dim,
        finetune_method=args.finetune_method, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, stages=stages, loss_weights=loss_weights,
        batch_size=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
        weight_decay=args.weight_decay, seed=args.seed, precision=precision, results=results, details=details,
        per_type=_per_type_rows(final_metrics, components), gate_components=components,
        example_input=_example_input(config),
        plots=[{"path": p, "title": PLOT_TITLES.get(Path(p).name, Path(p).stem.replace("_", " "))}
               for p in sorted(plots or [], key=lambda p: list(PLOT_TITLES).index(Path(p).name)
                               if Path(p).name in PLOT_TITLES else len(PLOT_TITLES))],
    )
    return ModelCard.from_template(card_data, template_str=template_str, **kwargs)
