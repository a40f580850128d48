"""Model cards for trained DMIL models, rendered from the Jinja template in `model_cards/` with huggingface_hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .hub_dmil import resolve_repo_id
from .metrics_dmil import per_type_summary
from .stages_dmil import EVERYTHING, STAGE_PLANS

_DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "dmil.md"


def _stage_trains(config, stage: int, method: str) -> str:
    """What trains in a stage, read from the stage table."""
    modules = STAGE_PLANS[stage].trained_modules(config)
    if EVERYTHING in modules:
        return f"everything (backbones via {method})"
    return ", ".join(m.replace("_", " ") for m in modules)


def _stage_loss(config, stage: int) -> str:
    """The stage's loss terms with their weights, read from the stage table."""
    return " + ".join(
        term if weight == "1" else f"{weight} · {term}" for term, weight in STAGE_PLANS[stage].describe_weights(config)
    )


_EXAMPLE = {"text": '"text": "a sentence"', "vision": '"image": "photo.png"', "audio": '"audio": "clip.wav"'}


_RUNTIME_SUFFIXES = ("_runtime", "_per_second")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _per_type_rows(metrics: dict[str, float], components: list[str]) -> list[dict[str, Any]]:
    """Accuracy and mean gate weight of each component, per interaction type (when the eval data had types)."""
    return [
        {"type": kind, "accuracy": _fmt(accuracy), "gates": ["-" if g is None else _fmt(g) for g in gates]}
        for kind, accuracy, gates in per_type_summary(metrics, components)
    ]


def render_model_card(model, args, stage_results: dict[int, dict[str, float]], template: str | None = None) -> ModelCard:
    """Render the card of a trained model: backbones, stages and hyperparameters, evaluation results, usage."""
    config = model.config
    backbones = [
        {"modality": m, "name": config.backbone_config(m)._name_or_path or "(built from config)",
         "model_type": config.backbone_config(m).model_type}
        for m in config.modalities
    ]
    base_models = [b["name"] for b in backbones if "/" in b["name"] and not Path(b["name"]).exists()]
    paradigm = config.paradigm
    stage_numbers = args.stage_list if paradigm == "dmil" else [1]
    stages = [
        {
            "stage": k,
            "trains": _stage_trains(config, k, args.finetune_method) if paradigm == "dmil" else "everything",
            "loss": _stage_loss(config, k) if paradigm == "dmil" else "ce_final" if paradigm == "joint" else "ce_modality_*",
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
    template_path = Path(template) if template else _DEFAULT_TEMPLATE
    kwargs = dict(
        model_name=repo_id, repo_id=repo_id, paradigm=paradigm, components=config.interaction_components,
        backbones=backbones, num_labels=config.num_labels,
        labels=[config.id2label[i] for i in range(config.num_labels)], latent_dim=config.latent_dim,
        finetune_method=args.finetune_method, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, stages=stages, loss_weights=loss_weights,
        batch_size=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
        weight_decay=args.weight_decay, seed=args.seed, precision=precision, results=results, details=details,
        per_type=_per_type_rows(final_metrics, components), gate_components=components,
        example_input=", ".join(_EXAMPLE[m] for m in config.modalities),
    )
    if template_path.is_file():
        return ModelCard.from_template(card_data, template_path=str(template_path), **kwargs)
    # Installed without the repository's model_cards/ folder: huggingface_hub's default template still records
    # the metadata.
    return ModelCard.from_template(card_data, **kwargs)
