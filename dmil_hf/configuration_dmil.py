"""DMIL configuration: two or three backbone sub-configs plus the decomposition's sizes and loss weights."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .backbones_dmil import MODALITIES

PARADIGMS = ("dmil", "joint", "ensemble")

# Backbone config used when a sub-config dict carries no ``model_type``.
_DEFAULT_MODEL_TYPE = {"text": "bert", "vision": "vit", "audio": "wav2vec2"}


def _as_backbone_config(value: Any, modality: str) -> PretrainedConfig | None:
    if value is None or isinstance(value, PretrainedConfig):
        # A full CLIP/CLAP config holds the tower we want as a nested sub-config (as VisionTextDualEncoder does).
        nested = getattr(value, f"{modality}_config", None)
        return nested if isinstance(nested, PretrainedConfig) else value
    if isinstance(value, dict):
        value = dict(value)
        return AutoConfig.for_model(value.pop("model_type", _DEFAULT_MODEL_TYPE[modality]), **value)
    raise TypeError(f"{modality}_config must be a PretrainedConfig, a dict or None, got {type(value).__name__}")


class DMILConfig(PretrainedConfig):
    r"""Configuration of [`DMILForMultimodalClassification`].

    Holds the configs of two or three backbones (any `AutoConfig`-able text, vision and audio encoder) and the sizes
    and loss weights of the decomposition. Loss-weight defaults follow the reference implementation of the paper
    (``reference/dmil-method.md`` §3-4); every term they weight is reported by name in the model output.

    Args:
        text_config, vision_config, audio_config (`PretrainedConfig` or `dict`, *optional*):
            Backbone configs; give any two or three. A dict is turned into a config with `AutoConfig.for_model`.
        latent_dim (`int`, defaults to 64):
            Dimension d of the projected features Z_m and of every latent (M, N, R, U, S).
        paradigm (`str`, defaults to `"dmil"`):
            `"dmil"` (decomposition + gate), `"joint"` (concatenated features, MLP head, one CE) or `"ensemble"`
            (one head per modality, each with its own CE, logits averaged).
        pooling (`dict[str, str]`, *optional*):
            Per-modality override of the pooling from the backbone table (`"cls"`, `"mean"` or `"pooler"`).
        logvar_clamp (`float`, defaults to 8.0):
            Posterior log-variances are clamped to [-logvar_clamp, logvar_clamp] so that exp() cannot overflow in
            bf16/fp16.
        kl_weight (`float`, defaults to 0.02):
            Weight of every KL term (the reference code's lamb=0.2 times its internal 0.1). KL terms are the exact
            diagonal-Gaussian KL divided by `latent_dim` (per-dimension, the reference code's scale).
        alignment_weight (`float`, defaults to 1.0):
            Multiplier of the alignment KL relative to `kl_weight` (1 in the reference code).
        stage1_reconstruction_weight (`float`, defaults to 0.01):
            Weight of the reconstruction of Z_m from [M_m, N_m] in stage 1 (reference beta_rec 0.1 x 0.1).
        stage2_component_weight (`float`, defaults to 0.5):
            Weight of the CEs of the R, U_m and S heads in stage 2.
        stage2_reconstruction_weight (`float`, defaults to 0.005):
            Weight of the reconstruction of mean(M_m) from [R, U_m] in stage 2 (lamb=0.2 x 0.1 x 0.25; the reference
            code's extra x0.1 applies to its KL terms only).
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
    ```
    """

    model_type = "dmil"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig, "audio_config": AutoConfig}
    # Loss pieces are scalars per batch: the Trainer must not try to concatenate them across eval batches.
    keys_to_ignore_at_inference = ["loss_terms"]

    def __init__(
        self,
        text_config: PretrainedConfig | dict | None = None,
        vision_config: PretrainedConfig | dict | None = None,
        audio_config: PretrainedConfig | dict | None = None,
        latent_dim: int = 64,
        paradigm: str = "dmil",
        pooling: dict[str, str] | None = None,
        logvar_clamp: float = 8.0,
        kl_weight: float = 0.02,
        alignment_weight: float = 1.0,
        stage1_reconstruction_weight: float = 0.01,
        stage2_component_weight: float = 0.5,
        stage2_reconstruction_weight: float = 0.005,
        stage3_modality_weight: float = 0.5,
        stage3_component_weight: float = 0.8,
        stage3_consistency_kl_scale: float = 0.4,
        stage3_reconstruction_z_weight: float = 0.003,
        stage3_reconstruction_m_weight: float = 0.001,
        check_inputs: bool = True,
        **kwargs,
    ):
        self.text_config = _as_backbone_config(text_config, "text")
        self.vision_config = _as_backbone_config(vision_config, "vision")
        self.audio_config = _as_backbone_config(audio_config, "audio")
        if paradigm not in PARADIGMS:
            raise ValueError(f"paradigm must be one of {PARADIGMS}, got {paradigm!r}")
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        pooling = dict(pooling or {})
        for modality, mode in pooling.items():
            if modality not in MODALITIES or mode not in ("cls", "mean", "pooler"):
                raise ValueError(
                    f"pooling must map a modality in {MODALITIES} to 'cls', 'mean' or 'pooler', got {modality!r}: {mode!r}"
                )
        self.latent_dim = int(latent_dim)
        self.paradigm = paradigm
        self.pooling = pooling
        self.logvar_clamp = float(logvar_clamp)
        self.kl_weight = float(kl_weight)
        self.alignment_weight = float(alignment_weight)
        self.stage1_reconstruction_weight = float(stage1_reconstruction_weight)
        self.stage2_component_weight = float(stage2_component_weight)
        self.stage2_reconstruction_weight = float(stage2_reconstruction_weight)
        self.stage3_modality_weight = float(stage3_modality_weight)
        self.stage3_component_weight = float(stage3_component_weight)
        self.stage3_consistency_kl_scale = float(stage3_consistency_kl_scale)
        self.stage3_reconstruction_z_weight = float(stage3_reconstruction_z_weight)
        self.stage3_reconstruction_m_weight = float(stage3_reconstruction_m_weight)
        self.check_inputs = bool(check_inputs)
        custom = kwargs.get("custom_pipelines")
        if custom and "multimodal-classification" in custom and __name__.startswith("dmil_hf."):
            # Loaded through the installed package, whose registry already has the task: a custom_pipelines entry
            # would make pipeline() insist on trust_remote_code. Loaded as Hub remote code, the entry stays.
            custom = {k: v for k, v in custom.items() if k != "multimodal-classification"}
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
        # A config with no backbone at all is allowed so that transformers can build default instances (older
        # versions diff against DMILConfig() when saving); the model refuses to be built from it.
        if 0 < len(self.modalities) < 2:
            raise ValueError(
                f"DMIL combines two or three modalities; the config has only {self.modalities}. "
                "Give at least two of text_config, vision_config and audio_config."
            )

    @property
    def modalities(self) -> list[str]:
        """The configured modalities, always in the order text, vision, audio."""
        return [m for m in MODALITIES if getattr(self, f"{m}_config", None) is not None]

    def backbone_config(self, modality: str) -> PretrainedConfig:
        config = getattr(self, f"{modality}_config", None)
        if config is None:
            raise ValueError(f"this DMIL config has no {modality} backbone (configured: {', '.join(self.modalities)})")
        return config

    @property
    def interaction_components(self) -> list[str]:
        """Names of the gate's columns: redundancy, one uniqueness per modality, synergy."""
        return ["redundancy", *[f"uniqueness_{m}" for m in self.modalities], "synergy"]
