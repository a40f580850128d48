"""DMIL configuration: two or three backbone sub-configs plus the decomposition's sizes and loss weights."""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.utils import logging

from .backbones_dmil import FAST_PATHS, POOLERS, backbone_spec, check_backbone_fits
from .feature_encoder_dmil import DMILFeatureEncoderConfig
from .modalities_dmil import KINDS, LEGACY_MODALITIES, Modality, validate_table
from .stages_dmil import DEFAULT_KEY, IMAGE_SLOT_NAME, WEIGHT_FIELDS, per_modality_value

logger = logging.get_logger(__name__)

PARADIGMS = ("dmil", "joint", "ensemble", "two_stage", "i2m2")
# The pipeline task a saved DMIL model serves, and its entry in config.custom_pipelines as transformers'
# `Pipeline.save_pretrained` writes it: `pipeline()` reads it to load the pipeline class from the saved code.
PIPELINE_TASK = "multimodal-classification"
PIPELINE_CODE = "pipeline_dmil.py"
PIPELINE_ENTRY = {"impl": "pipeline_dmil.MultimodalClassificationPipeline", "pt": ["AutoModel"], "type": "multimodal"}
# Registries of DMIL's swappable parts (the modules live in modeling_dmil; the names are checked here).
SYNERGY_FUSION_NAMES = ("linear", "mlp")
REDUNDANCY_READOUT_NAMES = ("joint", "per_modality", "unimodal_product")
GATE_OBJECTIVE_NAMES = ("mixture", "composition")
SYNERGY_INPUT_NAMES = ("n", "z", "z_detached")
COMPONENT_COMBINATION_NAMES = ("mixture", "product", "mixture_x_unimodal")
PROJECTION_NAMES = ("linear", "mlp", "identity")

# The reference implementation (bjlfzs/DMIL, CREMA-D config) as config values; see `DMILConfig.reference`. Its stage-1
# weights are per modality (visual beta_kl 0.4 / beta_rec 0.1, audio 2.0 / 0.5, times lamb 0.2 and its internal 0.1
# for KLs or x 0.1 x lamb for reconstructions), keyed here by kind: audio takes the audio values, and every other kind
# (image, and text, video and features, which it never had) the visual ones through the "default" key.
REFERENCE_PRESET: dict[str, Any] = {
    "latent_dim": 32,  # its embed_size: every bottleneck is 32-d
    "synergy_fusion": "linear",
    "synergy_input": "n",
    "redundancy_readout": "joint",
    "gate_objective": "mixture",
    "stage1_synergy_weight": 0.0,
    "gate_composition_weight": 0.0,
    "gate_reads_predictions": False,
    "kl_weight": 0.02,
    "alignment_weight": 1.0,
    "stage1_kl_weight": {"audio": 0.04, "default": 0.008},
    "stage1_reconstruction_weight": {"audio": 0.01, "default": 0.002},
    "stage2_component_weight": 0.5,
    "stage2_reconstruction_weight": 0.005,
    "stage2_modality_weight": 0.0,  # its encoders wait frozen through stage 2
    "level1_initial_logvar": 0.0,
    "stage3_modality_weight": 0.5,
    "stage3_component_weight": 0.8,
    "stage3_consistency_kl_scale": 0.4,
    "stage3_reconstruction_z_weight": 0.003,
    "stage3_reconstruction_m_weight": 0.001,
}

# Configs saved before the variants existed (no `synergy_fusion` key) load with the behaviour they were trained with:
# release 0.1.0 had exactly the reference's variants.
_LEGACY_VALUES = {
    k: REFERENCE_PRESET[k]
    for k in ("synergy_fusion", "synergy_input", "redundancy_readout", "gate_objective", "stage1_synergy_weight",
              "gate_composition_weight", "gate_reads_predictions")
}

# Fields added after configs were first saved, each with what a config saved without it meant (read from that
# config): it loads with the behaviour it was trained with.
_FIELDS_ADDED_LATER = {
    # every paradigm projected with one Linear
    "projection": lambda saved: "linear",
    # its stage 2 held the encoders frozen (a run continued from it does too)
    "stage2_modality_weight": lambda saved: 0.0,
    # its level-1 log-variances had no offset (identical logits on load)
    "level1_initial_logvar": lambda saved: 0.0,
    # the baselines' heads were latent_dim wide
    "baseline_hidden_dim": lambda saved: saved.get("latent_dim", 64),
}


def _as_backbone_config(value: Any, kind: str, what: str | None = None) -> PretrainedConfig | None:
    """A modality's encoder config from a config object, a dict (its `model_type`, else the kind's default family) or
    None. `kind` may be a three-slot name (`"vision"` for images)."""
    kind = LEGACY_MODALITIES.get(kind, kind)
    if value is None or isinstance(value, PretrainedConfig):
        # A full CLIP/CLAP config holds the tower we want as a nested sub-config (as VisionTextDualEncoder does).
        slot = {"image": "vision", "video": "vision"}.get(kind, kind)
        nested = getattr(value, f"{slot}_config", None)
        return nested if isinstance(nested, PretrainedConfig) else value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", KINDS[kind].default_model_type)
        if model_type == DMILFeatureEncoderConfig.model_type:
            # Built directly: as Hub remote code, dmil_hf's own encoder is not in AutoConfig's registry.
            return DMILFeatureEncoderConfig(**value)
        return AutoConfig.for_model(model_type, **value)
    raise TypeError(f"{what or f'the {kind} backbone config'} must be a PretrainedConfig, a dict or None, got {type(value).__name__}")


# Fields that take one float or a dict per modality (see `stages_dmil.per_modality_value`).
PER_MODALITY_FIELDS = ("stage1_kl_weight", "stage1_reconstruction_weight")


def _weight(name: str, value: float | dict[str, float], rows: list[Modality]) -> float | dict[str, float]:
    """A per-modality field as stored: a float, or one entry per modality resolved by name, then kind, then
    `default` (a `ValueError` naming the field and the modality when none applies). Without rows (transformers'
    default `DMILConfig()`) the dict is kept as given."""
    if not isinstance(value, dict):
        return float(value)
    names = [row.name for row in rows]
    allowed = {*names, *KINDS, IMAGE_SLOT_NAME, DEFAULT_KEY}
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(
            f"{name} maps modality names {names}, kinds {list(KINDS)} or {DEFAULT_KEY!r} to weights, got keys "
            f"{sorted(unknown)}"
        )
    if not rows:
        return {k: float(v) for k, v in value.items()}
    return {row.name: per_modality_value(name, value, row.name, row.kind) for row in rows}


def _weights_it_was_trained_with(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A saved config whose per-modality dict misses a modality (written before such a dict had to cover every
    modality, when the missing one silently weighed 0): the 0 it trained with, now written out, with a warning."""
    rows = [row for row in config_dict.get("modality_table") or [] if isinstance(row, dict)]
    for field in PER_MODALITY_FIELDS:
        value = config_dict.get(field)
        if not isinstance(value, dict) or not rows:
            continue
        missing = []
        for row in rows:
            try:
                per_modality_value(field, value, row.get("name"), row.get("kind"))
            except ValueError:
                missing.append(row.get("name"))
        if missing:
            logger.warning(
                f"the saved config's {field} {value} has no entry for modalities {missing}: they were trained with "
                f"weight 0 there, which is now written out; give them a weight to train them otherwise"
            )
            config_dict = {**config_dict, field: {**value, **{name: 0.0 for name in missing}}}
    return config_dict


def _table_rows(
    table: list[Modality | dict] | None, slots: dict[str, Any], kwargs: dict[str, Any]
) -> list[Modality]:
    """The modality table as rows with encoder configs: from `table` (encoder configs from each row's `backbone` or
    the `<name>_config` entry of `kwargs`, which is consumed), or from the three-slot configs. Empty when neither is
    given (transformers builds a default `DMILConfig()`; the model refuses it)."""
    if table is None:
        rows = [Modality(name, kind, _as_backbone_config(slots[name], kind, f"{name}_config"))
                for name, kind in LEGACY_MODALITIES.items() if slots[name] is not None]
        if rows:
            validate_table(rows)
        for row in rows:
            check_backbone_fits(row.name, row.kind, row.backbone)
        return rows
    table_names = {row["name"] if isinstance(row, dict) else getattr(row, "name", None) for row in table}
    stray = [f"{name}_config" for name, value in slots.items() if value is not None and name not in table_names]
    if stray:
        raise ValueError(f"{', '.join(stray)} name no row of modality_table; give each encoder config in its row")
    rows = []
    for row in table:
        if isinstance(row, dict):
            row = Modality(**{k: v for k, v in row.items() if k != "backbone"}, backbone=row.get("backbone"))
        elif not isinstance(row, Modality):
            raise TypeError(f"modality_table rows must be Modality or dict, got {type(row).__name__}")
        backbone = row.backbone
        key = f"{row.name}_config"
        saved = slots.get(row.name) if row.name in slots else kwargs.get(key)
        kwargs.pop(key, None)
        if backbone is None:
            backbone = saved
        backbone = _as_backbone_config(backbone if backbone is not None else {}, row.kind, f"modality {row.name!r}'s backbone")
        check_backbone_fits(row.name, row.kind, backbone)
        row = Modality(row.name, row.kind, backbone, row.pooling, row.temporal_pooling,
                       _clip_length(row, backbone))
        rows.append(row)
    validate_table(rows)
    return rows


def _clip_length(row: Modality, backbone: PretrainedConfig) -> int | None:
    """A video row's frame count: a video backbone of a fixed clip length (VideoMAE) sets it."""
    clip = backbone_spec(backbone.model_type, row.kind, backbone).input_rank == 5
    fixed = getattr(backbone, "num_frames", None) if clip else None
    if fixed is None:
        return row.num_frames
    if row.num_frames not in (None, fixed):
        raise ValueError(
            f"modality {row.name!r}: num_frames={row.num_frames}, but its {backbone.model_type} backbone takes clips of "
            f"exactly {fixed} frames"
        )
    return fixed


def pipeline_code_file() -> Path | None:
    """The pipeline's code beside this module (the package's, or a Hub copy's among transformers' remote-code modules),
    or None where it is not there: remote code of a repo saved before it carried the pipeline, or a model loaded
    through `AutoModel` alone, for which transformers fetched only the model's own modules."""
    module = sys.modules.get(__name__)
    path = Path(module.__file__).with_name(PIPELINE_CODE) if module and getattr(module, "__file__", None) else None
    return path if path is not None and path.is_file() else None


def copy_pipeline_code(save_directory: str | os.PathLike) -> list[str]:
    """Copy `pipeline_dmil.py` and every module of the model unit it imports into `save_directory` (as transformers'
    `custom_object_save` copies a model's code); returns the files written, none when the code is not here."""
    from transformers.dynamic_module_utils import get_relative_import_files

    source = pipeline_code_file()
    if source is None:
        return []
    written = []
    for path in [str(source), *get_relative_import_files(str(source))]:
        target = os.path.join(save_directory, os.path.basename(path))
        if os.path.abspath(path) != os.path.abspath(target):
            shutil.copyfile(path, target)
        written.append(target)
    return written


class _SubConfigs:
    """`sub_configs` that lists the three-slot keys on the class and each modality's `<name>_config` on an instance.

    transformers walks `config.sub_configs` to set the attention implementation and dtype on every backbone config;
    a modality table has its own keys (`rgb_config`, `flow_config`), so the instance answers with those.
    """

    def __get__(self, instance: Any, owner: type) -> dict[str, type]:
        if instance is None or "modality_table" not in instance.__dict__:
            return {f"{m}_config": AutoConfig for m in LEGACY_MODALITIES}
        return {f"{row['name']}_config": AutoConfig for row in instance.__dict__["modality_table"]}


class DMILConfig(PretrainedConfig):
    r"""Configuration of [`DMILForMultimodalClassification`].

    Holds the configs of two or three backbones (any `AutoConfig`-able text, vision and audio encoder) and the sizes
    and loss weights of the decomposition. Loss-weight defaults follow the reference implementation of the paper
    (``reference/dmil-method.md`` §3-4); every term they weight is reported by name in the model output. Each loss
    weight (`stages_dmil.WEIGHT_FIELDS`) must be a finite number >= 0, a `ValueError` otherwise.

    Args:
        modality_table (`list[Modality | dict]`, *optional*):
            The modalities, two to four rows of [`Modality`]: a name (any identifier), a kind (`text`, `image`,
            `video`, `audio`, `features`), an encoder config and its pooling. Each row's encoder config is kept as
            the attribute `<name>_config` (saved beside the table in `config.json`). See `dmil_hf.models.dmil.modalities_dmil`
            for the input names each row gives the model.
        text_config, vision_config, audio_config (`PretrainedConfig` or `dict`, *optional*):
            The three-slot form (release 0.1): backbone configs of the modalities `text` (kind text), `vision` (kind
            image) and `audio` (kind audio); give any two or three, or use `modality_table`. A dict is turned into a
            config with `AutoConfig.for_model`.
        latent_dim (`int`, defaults to 128):
            Dimension d of the projected features Z_m and of every latent (M, N, R, U, S). DMIL's unimodal evidence
            is linear in Z_m (M_m and its head), so this width bounds it: on the real-signal benchmark 32 (the
            reference's) scored 6.3 pp and 64 2.0 pp below 128, and 256 no better (README, "Method").
        paradigm (`str`, defaults to `"dmil"`):
            `"dmil"` (decomposition + gate), `"joint"` (concatenated features, MLP head, one CE), `"ensemble"`
            (one head per modality, each with its own CE, logits averaged), `"two_stage"` (unimodal pretraining,
            then a joint head with the encoders fine-tuned; Du et al., ICML 2023) or `"i2m2"` (I2M2, Madaan et al.
            2024: per-modality experts and an inter-modality expert, their log-probabilities summed, one CE).
        baseline_hidden_dim (`int`, defaults to 128):
            Hidden width of the baselines' MLP heads (joint, ensemble, two_stage, i2m2), and the width their
            projections map each backbone's pooled output to (`feature_dim`). Configs saved before this field
            existed load with the width they were trained with, `latent_dim`, which made the joint baseline weaker
            than the same model written plainly (README, "Baselines").
        pooling (`dict[str, str]`, *optional*):
            Per-modality override of the pooling from the backbone table (a name in `backbones_dmil.POOLERS`:
            `"cls"`, `"mean"` or `"pooler"`); a row's own `pooling` lands here too.
        logvar_clamp (`float`, defaults to 8.0):
            Posterior log-variances are clamped to [-logvar_clamp, logvar_clamp] so that exp() cannot overflow in
            bf16/fp16.
        synergy_fusion (`str`, defaults to `"mlp"`):
            How S is fused from its inputs and their pairwise products: `"linear"` (the reference code: one Linear,
            which separates XOR but not a sum modulo C) or `"mlp"` (that Linear plus a hidden-layer path).
        synergy_input (`str`, defaults to `"z"`):
            What synergy fuses: `"n"` (the reference: the sampled N_m, which only a KL to the prior and a
            reconstruction shape, so it carries little and is noisy), `"z"` (the projected features Z_m, all that
            the backbones extract) or `"z_detached"` (Z_m without a gradient into the backbones). Measured in the
            README's "Method" section.
        redundancy_readout (`str`, defaults to `"joint"`):
            What the redundancy head reads: `"joint"` (the reference: R ~ q(R | M_1..M_K)) or `"per_modality"` (each
            predictor v_m(R | M_m) alone, logits averaged over the modalities present, as an ensemble would).
        gate_objective (`str`, defaults to `"composition"`):
            What trains the gate: `"mixture"` (the reference: the CE of the gate-weighted logits, which hands every
            sample to the most expressive component) or `"composition"` (the gate learns each training sample's
            interaction composition, estimated from the heads by `interaction_composition`, and the final CE trains
            the components only), so that the gate says which kind of information a sample rests on.
        gate_composition_weight (`float`, defaults to 1.0):
            Weight of the gate's composition loss in stages 2 and 3 (used by `gate_objective="composition"`).
        component_combination (`str`, defaults to `"mixture"`):
            How the component heads make the prediction: `"mixture"` (the reference: sum_c g_c logits_c, which is
            also the gate-weighted product of the component experts, sum_c g_c log p_c, up to a per-sample
            constant), `"product"` (I2M2's unweighted product of the available components; the gate only reports)
            or `"mixture_x_unimodal"` (I2M2 with the gated mixture as its inter-modality expert: log p_mixture plus
            the level-1 unimodal heads' log-probabilities). Measured in the README's "Method" section.
        projection (`str`, *optional*):
            How each backbone's pooled vector becomes the features Z_m a head reads (`heads_dmil.PROJECTIONS`):
            `"linear"` (one Linear to `feature_dim`; DMIL's default, the reference's, and what every config saved
            before the field existed has), `"mlp"` (Linear -> GELU -> Linear; it lost 6.8 pp for DMIL on the
            real-signal benchmark, README "Method") or `"identity"` (the pooled vector itself, at the backbone's own
            width; the baselines' default, so that each is the same model written plainly; not for DMIL).
        modality_dropout (`float`, defaults to 0.0):
            In stages 2 and 3, the probability that one of a training sample's modalities (chosen at random, where
            it has at least two) is masked out for that step, as a missing modality is.
        modality_corruption (`float`, defaults to 0.0):
            In stages 2 and 3, the probability that one of a training sample's modalities (chosen at random, where
            it has at least two) has its features Z_m replaced by noise with the batch's per-feature mean and spread
            for that step. Unlike dropout the modality still looks present: the components and the gate learn that a
            present modality can say nothing (the composition target sends such a sample to the others), and its
            level-1 losses skip the corrupted sample.
        level1_initial_logvar (`float`, defaults to -2.0):
            Where the level-1 posteriors' log-variance starts (a fixed offset on it). At 0 (the reference) M_m and
            N_m start at the prior's spread, and in early training the unimodal heads read samples whose noise can
            drown an encoder that is slow to take off, which then never does; at -2 they start narrow (std 0.37) and
            the KL widens them as training goes.
        gate_reads_predictions (`bool`, defaults to `False`):
            Whether the gate also reads the component heads' log-probabilities (detached) next to the latents.
        stage1_synergy_weight (`float`, defaults to 0.0):
            Weight of the synergy head's CE in stage 1 (the reference: 0, synergy starts in stage 2). Above 0,
            synergy trains with the backbones.
        kl_weight (`float`, defaults to 0.02):
            Weight of the level-2 KL terms and of the level-1 KLs in stage 3 (the reference code's lamb=0.2 times its
            internal 0.1). KL terms are the exact diagonal-Gaussian KL divided by `latent_dim` (per-dimension, the
            reference code's scale).
        alignment_weight (`float`, defaults to 1.0):
            Multiplier of the alignment KL relative to `kl_weight` (1 in the reference code).
        stage1_kl_weight (`float` or `dict[str, float]`, defaults to 0.02):
            Weight of the level-1 KLs (M and N) in stage 1; a dict gives one weight per modality (the reference uses
            0.008 for vision and 0.04 for audio). A per-modality dict's keys are modality names, kinds (`"vision"`
            also stands for the image kind) or `"default"`; each modality takes the entry of its name, else of its
            kind, else `"default"`, and a modality none of them covers is a `ValueError` here (never a silent 0).
            The config stores the resolved dict, one entry per modality name.
        stage1_reconstruction_weight (`float` or `dict[str, float]`, defaults to 0.01):
            Weight of the reconstruction of Z_m from [M_m, N_m] in stage 1; a dict gives one per modality, resolved
            as for `stage1_kl_weight` (the reference: 0.002 vision, 0.01 audio).
        stage2_component_weight (`float`, defaults to 0.5):
            Weight of the CEs of the R, U_m and S heads in stage 2.
        stage2_reconstruction_weight (`float`, defaults to 0.005):
            Weight of the reconstruction of mean(M_m) from [R, U_m] in stage 2 (lamb=0.2 x 0.1 x 0.25; the reference
            code's extra x0.1 applies to its KL terms only).
        stage2_modality_weight (`float`, defaults to 1.0):
            Weight of the unimodal CEs on M_m in stage 2. Above 0, the backbones, projections and level 1 keep
            training through stage 2 on those CEs, at stage 1's learning rate (`DMILTrainer` gives them their own
            optimizer group), instead of waiting frozen for stage 3 (the reference: 0): an encoder that is slow to
            take off gets stage 2's steps too.
        stage3_modality_weight (`float`, defaults to 0.5):
            Weight of the unimodal CEs on M_m in stage 3.
        stage3_component_weight (`float`, defaults to 0.8):
            Weight of the CEs of the R, U_m and S heads in stage 3.
        stage3_consistency_kl_scale (`float`, defaults to 0.4):
            Scale of the level-2 KL and alignment terms in stage 3, relative to `kl_weight`.
        stage3_reconstruction_z_weight (`float`, defaults to 0.003):
            Weight of the Z_m reconstruction in stage 3 (0.05 x lamb=0.2 x 0.3).
        stage3_reconstruction_m_weight (`float`, defaults to 0.001):
            Weight of the M_m reconstruction in stage 3 (lamb=0.2 x 0.05 x 0.1).
        check_inputs (`bool`, defaults to `True`):
            Check input values for NaN/inf and labels for range. These checks read tensor values on the host, so
            they synchronise with the GPU once per step; turn them off for maximum throughput or `torch.compile`.
            Shape and dtype checks are free and always on.
        fast_paths (`list[str]`, defaults to `[]`):
            Numerically equivalent, faster computations of backbone hot spots (`backbones_dmil.FAST_PATHS`), e.g.
            `"positional_conv_unfold"`: wav2vec2/HuBERT/WavLM's grouped positional convolution as one batched matmul
            (measured in the README's speed section). Weights and their names do not change.

    Example:

    ```python
    >>> from transformers import BertConfig, ViTConfig
    >>> from dmil_hf import DMILConfig
    >>> config = DMILConfig(
    ...     text_config=BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    ...     vision_config=ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    ...                             image_size=32, patch_size=8),
    ...     num_labels=3, latent_dim=16)
    >>> config.modalities, config.interaction_components
    (['text', 'vision'], ['redundancy', 'uniqueness_text', 'uniqueness_vision', 'synergy'])
    >>> DMILConfig.reference(text_config=config.text_config, vision_config=config.vision_config).synergy_fusion
    'linear'
    ```
    """

    model_type = "dmil"
    sub_configs = _SubConfigs()
    # Loss pieces are scalars per batch: the Trainer must not try to concatenate them across eval batches.
    keys_to_ignore_at_inference = ["loss_terms"]

    def __init__(
        self,
        text_config: PretrainedConfig | dict | None = None,
        vision_config: PretrainedConfig | dict | None = None,
        audio_config: PretrainedConfig | dict | None = None,
        modality_table: list[Modality | dict] | None = None,
        latent_dim: int = 128,
        paradigm: str = "dmil",
        baseline_hidden_dim: int = 128,
        pooling: dict[str, str] | None = None,
        logvar_clamp: float = 8.0,
        synergy_fusion: str = "mlp",
        synergy_input: str = "z",
        redundancy_readout: str = "joint",
        gate_objective: str = "composition",
        gate_composition_weight: float = 1.0,
        gate_reads_predictions: bool = False,
        component_combination: str = "mixture",
        projection: str | None = None,
        modality_dropout: float = 0.0,
        modality_corruption: float = 0.0,
        level1_initial_logvar: float = -2.0,
        stage1_synergy_weight: float = 0.0,
        kl_weight: float = 0.02,
        alignment_weight: float = 1.0,
        stage1_kl_weight: float | dict[str, float] = 0.02,
        stage1_reconstruction_weight: float | dict[str, float] = 0.01,
        stage2_component_weight: float = 0.5,
        stage2_reconstruction_weight: float = 0.005,
        stage2_modality_weight: float = 1.0,
        stage3_modality_weight: float = 0.5,
        stage3_component_weight: float = 0.8,
        stage3_consistency_kl_scale: float = 0.4,
        stage3_reconstruction_z_weight: float = 0.003,
        stage3_reconstruction_m_weight: float = 0.001,
        check_inputs: bool = True,
        fast_paths: list[str] | tuple[str, ...] = (),
        **kwargs,
    ):
        rows = _table_rows(modality_table, {"text": text_config, "vision": vision_config, "audio": audio_config}, kwargs)
        pooling = dict(pooling or {})
        for row in rows:
            if row.pooling is not None:
                pooling[row.name] = row.pooling
        # The table (JSON rows) and each row's encoder config as `<name>_config`, as transformers' composite configs
        # keep their sub-configs. The three-slot attributes always exist (None when unused) for code that reads them.
        self.text_config = self.vision_config = self.audio_config = None
        for row in rows:
            setattr(self, f"{row.name}_config", row.backbone)
        self.modality_table = [row.to_row() for row in rows]
        if paradigm not in PARADIGMS:
            raise ValueError(f"paradigm must be one of {PARADIGMS}, got {paradigm!r}")
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if isinstance(baseline_hidden_dim, bool) or not isinstance(baseline_hidden_dim, int) or baseline_hidden_dim < 1:
            raise ValueError(f"baseline_hidden_dim must be a positive integer, got {baseline_hidden_dim!r}")
        names = [row.name for row in rows]
        for modality, mode in pooling.items():
            if modality not in names or mode not in POOLERS:
                raise ValueError(
                    f"pooling must map one of the modalities {names} to a pooler in {sorted(POOLERS)}, "
                    f"got {modality!r}: {mode!r}"
                )
        stage1_kl_weight = _weight("stage1_kl_weight", stage1_kl_weight, rows)
        stage1_reconstruction_weight = _weight("stage1_reconstruction_weight", stage1_reconstruction_weight, rows)
        for name, value, choices in (
            ("synergy_fusion", synergy_fusion, SYNERGY_FUSION_NAMES),
            ("synergy_input", synergy_input, SYNERGY_INPUT_NAMES),
            ("redundancy_readout", redundancy_readout, REDUNDANCY_READOUT_NAMES),
            ("gate_objective", gate_objective, GATE_OBJECTIVE_NAMES),
            ("component_combination", component_combination, COMPONENT_COMBINATION_NAMES),
            ("projection", projection or "linear", PROJECTION_NAMES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.latent_dim = int(latent_dim)
        self.paradigm = paradigm
        self.baseline_hidden_dim = baseline_hidden_dim
        self.pooling = pooling
        self.logvar_clamp = float(logvar_clamp)
        self.synergy_fusion = synergy_fusion
        self.synergy_input = synergy_input
        self.redundancy_readout = redundancy_readout
        self.gate_objective = gate_objective
        self.gate_composition_weight = float(gate_composition_weight)
        self.gate_reads_predictions = bool(gate_reads_predictions)
        for name, probability in (("modality_dropout", modality_dropout), ("modality_corruption", modality_corruption)):
            if not 0.0 <= float(probability) < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {probability!r}")
        self.component_combination = component_combination
        # Unset: DMIL's Linear to latent_dim; the baselines read the pooled features themselves, as the same models
        # written plainly do (a Linear in front of their MLP heads cost the joint baseline 2-3 pp, README "Baselines").
        self.projection = projection or ("linear" if paradigm == "dmil" else "identity")
        if self.projection == "identity" and paradigm == "dmil":
            raise ValueError(
                "projection='identity' is for the baselines: DMIL's latents need every modality's features "
                "latent_dim wide (use 'linear' or 'mlp')"
            )
        self.modality_dropout = float(modality_dropout)
        self.modality_corruption = float(modality_corruption)
        self.level1_initial_logvar = float(level1_initial_logvar)
        if not math.isfinite(self.level1_initial_logvar) or abs(self.level1_initial_logvar) > self.logvar_clamp:
            raise ValueError(
                f"level1_initial_logvar must be finite and within logvar_clamp ({self.logvar_clamp:g}), got "
                f"{level1_initial_logvar!r}"
            )
        self.stage1_synergy_weight = float(stage1_synergy_weight)
        self.kl_weight = float(kl_weight)
        self.alignment_weight = float(alignment_weight)
        self.stage1_kl_weight = stage1_kl_weight
        self.stage1_reconstruction_weight = stage1_reconstruction_weight
        self.stage2_component_weight = float(stage2_component_weight)
        self.stage2_reconstruction_weight = float(stage2_reconstruction_weight)
        self.stage2_modality_weight = float(stage2_modality_weight)
        self.stage3_modality_weight = float(stage3_modality_weight)
        self.stage3_component_weight = float(stage3_component_weight)
        self.stage3_consistency_kl_scale = float(stage3_consistency_kl_scale)
        self.stage3_reconstruction_z_weight = float(stage3_reconstruction_z_weight)
        self.stage3_reconstruction_m_weight = float(stage3_reconstruction_m_weight)
        self.check_inputs = bool(check_inputs)
        for field in WEIGHT_FIELDS:
            # A negative weight would maximise its term and a NaN one make every loss NaN, both without a word.
            value = getattr(self, field)
            if any(not math.isfinite(v) or v < 0 for v in (value.values() if isinstance(value, dict) else [value])):
                raise ValueError(f"{field} must be a finite loss weight >= 0 (or a dict of them), got {value!r}")
        unknown = [name for name in fast_paths if name not in FAST_PATHS]
        if unknown or isinstance(fast_paths, str):
            raise ValueError(f"fast_paths must be a list of names in {sorted(FAST_PATHS)}, got {fast_paths!r}")
        self.fast_paths = list(fast_paths)
        custom = kwargs.get("custom_pipelines")
        if custom and PIPELINE_TASK in custom and __name__.startswith("dmil_hf."):
            # Loaded through the installed package, whose registry already has the task: a custom_pipelines entry
            # would make pipeline() insist on trust_remote_code. Loaded as Hub remote code, the entry stays.
            custom = {k: v for k, v in custom.items() if k != PIPELINE_TASK}
            if custom:
                kwargs["custom_pipelines"] = custom
            else:
                kwargs.pop("custom_pipelines")  # never None: pipeline() calls len() on it
        if "attn_implementation" not in kwargs:
            # PretrainedConfig.__init__ sets attn_implementation (None when not given) recursively on the
            # sub-configs, which would drop an implementation chosen per backbone (a backbone loaded with
            # attn_implementation="eager", or text_attn_implementation= in from_backbones_pretrained). A dict keeps
            # each sub-config's own value.
            kwargs["attn_implementation"] = {
                key: getattr(getattr(self, key), "_attn_implementation", None)
                for key in self.sub_configs
                if getattr(self, key) is not None
            }
        super().__init__(**kwargs)
        if self.num_labels < 1:
            # Every head would have no output: a loss of an empty tensor, NaN, at the first step.
            raise ValueError(f"num_labels must be at least 1 (classes, labels or regression targets), got {self.num_labels}")

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """`PretrainedConfig.save_pretrained`, and a config that names the pipeline in `custom_pipelines` (as a DMIL
        model's `save_pretrained` sets it while it saves) also saves the pipeline's code beside it, as `auto_map` saves
        the model's: `pipeline_dmil.py` and the modules it imports."""
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if PIPELINE_TASK in (getattr(self, "custom_pipelines", None) or {}):
            copy_pipeline_code(save_directory)

    @classmethod
    def reference(cls, **kwargs) -> "DMILConfig":
        """The reference implementation's DMIL (bjlfzs/DMIL), as closely as a config can hold it: `REFERENCE_PRESET`
        plus `kwargs` (backbones, `num_labels`, ...; a preset value given here wins). Its training schedule (SGD,
        10/5/55 epochs, learning rates 4e-3/1e-3/1e-5, full fine-tuning in stage 3) is `training/configs/reference.yaml`;
        the README lists what still differs."""
        return cls(**{**REFERENCE_PRESET, **kwargs})

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "DMILConfig":
        if "synergy_fusion" not in config_dict and "synergy_fusion" not in kwargs and config_dict.get("model_type") == "dmil":
            # Saved before the variants existed: keep the modules it was trained with (identical logits on load).
            legacy = {**_LEGACY_VALUES, "stage1_kl_weight": config_dict.get("kl_weight", 0.02)}
            config_dict = {**legacy, **config_dict}
        if config_dict.get("model_type") == "dmil":
            for name, value_it_had in _FIELDS_ADDED_LATER.items():
                if name not in config_dict and name not in kwargs:
                    config_dict = {**config_dict, name: value_it_had(config_dict)}
        return super().from_dict(_weights_it_was_trained_with(config_dict), **kwargs)

    @property
    def feature_dim(self) -> int:
        """The width a `"linear"` or `"mlp"` projection maps each backbone's pooled vector to: `latent_dim` for DMIL,
        whose latents all have that width; `baseline_hidden_dim` for a baseline, so that it is not squeezed through
        DMIL's latent width before its head (a Linear to 32 dimensions in front of the joint MLP made it weaker than
        the same model written plainly, README "Baselines"). Configs saved before the field existed load with
        `baseline_hidden_dim = latent_dim`, so their projections keep their shape. With `projection="identity"`
        (the baselines' default) each modality's features keep the backbone's width instead
        (`DMILForMultimodalClassification.feature_widths`)."""
        return self.latent_dim if self.paradigm == "dmil" else self.baseline_hidden_dim

    @property
    def modalities(self) -> list[str]:
        """The modalities' names, in table order (the three-slot form: text, vision, audio)."""
        return [row["name"] for row in self.modality_table]

    @property
    def modality_specs(self) -> list[Modality]:
        """The modality table as typed rows, each with its encoder config and pooling override."""
        return [self.modality(row["name"]) for row in self.modality_table]

    def modality(self, name: str) -> Modality:
        """One row of the modality table, with its encoder config and pooling override."""
        for row in self.modality_table:
            if row["name"] == name:
                return Modality(**row, backbone=self.backbone_config(name), pooling=self.pooling.get(name))
        raise ValueError(f"this DMIL config has no modality {name!r} (configured: {', '.join(self.modalities)})")

    def backbone_config(self, modality: str) -> PretrainedConfig:
        config = getattr(self, f"{modality}_config", None) if modality in self.modalities else None
        if config is None:
            raise ValueError(f"this DMIL config has no {modality} backbone (configured: {', '.join(self.modalities)})")
        return config

    @property
    def interaction_components(self) -> list[str]:
        """Names of the gate's columns: redundancy, one uniqueness per modality, synergy."""
        return ["redundancy", *[f"uniqueness_{m}" for m in self.modalities], "synergy"]
