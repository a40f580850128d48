"""DMIL model: backbones wrapped per modality, the two-level variational decomposition, synergy fusion, the
per-sample interaction gate, and the joint / ensemble baselines on the same backbones.

Read top-down: the output dataclass, the Gaussian and loss helpers, the small swappable fusion modules, input
checking, then `DMILForMultimodalClassification`.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .backbones_dmil import BackboneSpec, backbone_spec, expected_input_shape
from .configuration_dmil import DMILConfig, _as_backbone_config
from .stages_dmil import STAGES, stage_term_weights


@dataclass
class DMILOutput(ModelOutput):
    """Output of [`DMILForMultimodalClassification`].

    Attributes:
        loss: the weighted loss of the requested stage (when `labels` are given).
        logits: `(batch, num_labels)` final prediction. For DMIL, the gate-weighted sum of the component logits
            (stage 1: the mean of the unimodal heads, as the gate does not exist yet).
        interaction_weights: `(batch, K + 2)` the per-sample gate over `config.interaction_components`
            (DMIL only); a missing modality's uniqueness, and synergy when fewer than two modalities are present,
            get weight 0.
        component_logits: `(batch, K + 2, num_labels)` logits of the redundancy, uniqueness and synergy heads.
        modality_logits: `(batch, K, num_labels)` unimodal predictions (DMIL: heads on M_m; ensemble: the
            per-modality heads; joint: none). Used for the synergy indicator.
        loss_terms: every unweighted term of the requested stage by name, e.g. `kl_M_text`, `align_R_vision`,
            `ce_synergy`; weights are the config's `*_weight` fields.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    interaction_weights: torch.FloatTensor | None = None
    component_logits: torch.FloatTensor | None = None
    modality_logits: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


def gaussian_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: torch.Tensor | None = None,
    prior_logvar: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)) of diagonal Gaussians, summed over the last dim.

    With no prior given, the prior is N(0, I). Computed in float32 whatever the autocast dtype.
    """
    mu, logvar = mu.float(), logvar.float()
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    prior_mu, prior_logvar = prior_mu.float(), prior_logvar.float()
    return 0.5 * (
        prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0
    ).sum(-1)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor, prior_mu=None, prior_logvar=None) -> torch.Tensor:
    """The exact KL of `gaussian_kl` divided by the latent dimension: the scale of every KL loss term.

    The reference implementation averages its KLs over the latent dimensions (and its reconstructions over
    features), and its loss weights (`kl_weight=0.02`) are tuned for that scale; a KL summed over 64 dimensions
    with the same weight is 64 times stronger and collapses N onto the prior.
    """
    return gaussian_kl(mu, logvar, prior_mu, prior_logvar) / mu.shape[-1]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample values over the samples where `mask` is true (0 when none is), without a host sync."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class DiagonalGaussianHead(nn.Module):
    """q(z | x) = N(mu(x), diag(exp(logvar(x)))): a reparameterised sample in training, the mean in eval."""

    def __init__(self, in_dim: int, out_dim: int, logvar_clamp: float):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)
        self.logvar_clamp = logvar_clamp

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, mu, logvar); `sample` overrides the module's own training flag (the default) for z."""
        mu, logvar = self.linear(x).chunk(2, dim=-1)
        # Clamped so that exp(logvar) stays finite in bf16/fp16.
        logvar = logvar.clamp(-self.logvar_clamp, self.logvar_clamp)
        if not (self.training if sample is None else sample):
            return mu, mu, logvar
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), mu, logvar


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class IntraModalDecomposition(nn.Module):
    """Level 1 for one modality: Z_m -> M_m (usable alone, has a classifier) and N_m (the rest, no label loss)."""

    def __init__(self, dim: int, num_labels: int, logvar_clamp: float):
        super().__init__()
        self.m_posterior = DiagonalGaussianHead(dim, dim, logvar_clamp)
        self.n_posterior = DiagonalGaussianHead(dim, dim, logvar_clamp)
        self.classifier = nn.Linear(dim, num_labels)
        self.reconstruction = MLP(2 * dim, max(dim // 2, 1), dim)

    def forward(self, z: torch.Tensor, with_losses: bool = True, sample_n: bool | None = None) -> dict[str, torch.Tensor]:
        """`sample_n` says whether N is sampled; the model passes its own training flag, so that N is sampled in
        stage 2 too, where this module is frozen and in eval mode (as the reference code does: its sampling reads
        the whole model's flag). Otherwise synergy would fit on N's mean in stage 2 and meet samples in stage 3."""
        m, m_mu, m_logvar = self.m_posterior(z)
        n, n_mu, n_logvar = self.n_posterior(z, sample=sample_n)
        out = {
            "m": m, "m_mu": m_mu, "m_logvar": m_logvar, "n": n, "n_mu": n_mu, "n_logvar": n_logvar,
            "logits": self.classifier(m),
        }
        if with_losses:  # the reconstruction serves only the loss
            out["reconstruction"] = self.reconstruction(torch.cat([m, n], dim=-1))
        return out


class ConsistencyDecomposition(nn.Module):
    """Level 2: R ~ q(R | M_1..M_K), U_m ~ q(U | M_m), and the per-modality predictors v_m(R | M_m).

    The alignment KL(q(R|.) || v_m(R|M_m)) forces R to be predictable from every modality alone, so it can hold
    only what they share. A sample that lacks a modality has no joint posterior; its R is the average of the
    predictors v_m of the modalities it has, which is what the alignment trains them to approximate.
    """

    def __init__(self, modalities: list[str], dim: int, logvar_clamp: float):
        super().__init__()
        self.modalities = list(modalities)
        self.redundancy = DiagonalGaussianHead(len(modalities) * dim, dim, logvar_clamp)
        self.uniqueness = nn.ModuleDict({m: DiagonalGaussianHead(dim, dim, logvar_clamp) for m in modalities})
        self.redundancy_predictors = nn.ModuleDict(
            {m: DiagonalGaussianHead(dim, dim, logvar_clamp) for m in modalities}
        )
        self.reconstruction = nn.ModuleDict({m: MLP(2 * dim, max(dim // 2, 1), dim) for m in modalities})

    def forward(
        self, m_means: dict[str, torch.Tensor], present: torch.Tensor, with_losses: bool = True,
        all_given: bool = False, need_predictors: bool = False,
    ) -> dict[str, object]:
        """`with_losses=False` skips what only the loss reads (predictors' alignment, reconstructions);
        `all_given=True` says, statically, that every sample has every modality, so no fallback is needed;
        `need_predictors=True` computes the predictors v_m anyway (a redundancy readout reads them)."""
        present_f = present.to(next(iter(m_means.values())).dtype)
        joint_in = torch.cat([m_means[m] * present_f[:, k : k + 1] for k, m in enumerate(self.modalities)], dim=-1)
        r, r_mu, r_logvar = self.redundancy(joint_in)
        all_present = present.all(dim=1, keepdim=True)
        out: dict[str, object] = {"all_present": all_present.squeeze(1)}
        if with_losses or not all_given or need_predictors:
            predictors = {m: self.redundancy_predictors[m](m_means[m]) for m in self.modalities}
            out["predictors"] = predictors
        if not all_given:
            # Computed for every sample and selected with torch.where: no data-dependent branch, no host sync.
            weights = present_f / present_f.sum(1, keepdim=True).clamp(min=1.0)
            fallback = [
                sum(predictors[m][i] * weights[:, k : k + 1] for k, m in enumerate(self.modalities)) for i in range(3)
            ]
            r, r_mu, r_logvar = (
                torch.where(all_present, joint, fb) for joint, fb in zip((r, r_mu, r_logvar), fallback)
            )
        uniqueness = {m: self.uniqueness[m](m_means[m]) for m in self.modalities}
        if with_losses:
            out["reconstructions"] = {
                m: self.reconstruction[m](torch.cat([r, uniqueness[m][0]], dim=-1)) for m in self.modalities
            }
        out.update(r=r, r_mu=r_mu, r_logvar=r_logvar, uniqueness=uniqueness)
        return out


class SynergyFusion(nn.Module):
    """S = Linear([N_1, ..., N_K, N_i * N_j for every pair i < j]): the reference code's fusion (`"linear"`).

    The pairwise products make XOR-like synergy linearly separable: for N_i, N_j in {-1, +1}, XOR is -N_i * N_j.
    A missing modality's N is zeroed by the caller, so it and its products contribute nothing.
    """

    def __init__(self, num_modalities: int, dim: int):
        super().__init__()
        self.pairs = list(combinations(range(num_modalities), 2))
        self.fusion = nn.Linear((num_modalities + len(self.pairs)) * dim, dim)

    def fusion_input(self, n: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([*n, *[n[i] * n[j] for i, j in self.pairs]], dim=-1)

    def forward(self, n: list[torch.Tensor]) -> torch.Tensor:
        return self.fusion(self.fusion_input(n))


class MLPSynergyFusion(SynergyFusion):
    """S = Linear(x) + MLP(x) with x = [N_1, ..., N_K, N_i * N_j] (`"mlp"`, the library default; with
    `synergy_input="z"` the Z_m take the N_m's place).

    Diagonal bilinear terms followed by one linear map express XOR of two bits, but not a sum modulo C of two
    digits; a hidden layer does (the joint baseline's MLP head learns it on the same features). The linear path
    stays: on noisy sampled N's it finds the product features faster than the hidden layer alone.
    """

    def __init__(self, num_modalities: int, dim: int):
        super().__init__(num_modalities, dim)
        self.hidden = MLP((num_modalities + len(self.pairs)) * dim, 2 * dim, dim)

    def forward(self, n: list[torch.Tensor]) -> torch.Tensor:
        x = self.fusion_input(n)
        return self.fusion(x) + self.hidden(x)


SYNERGY_FUSIONS: dict[str, type[SynergyFusion]] = {"linear": SynergyFusion, "mlp": MLPSynergyFusion}


class InteractionGate(nn.Module):
    """g = softmax(MLP([R, U_1..U_K, S])) over the K + 2 components, with unavailable components masked out."""

    def __init__(self, num_components: int, dim: int, extra_inputs: int = 0):
        super().__init__()
        self.mlp = MLP(num_components * dim + extra_inputs, dim, num_components)

    def forward(self, components: list[torch.Tensor], available: torch.Tensor) -> torch.Tensor:
        scores = self.mlp(torch.cat(components, dim=-1)).float()
        return scores.masked_fill(~available, float("-inf")).softmax(dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Swappable parts of DMIL, each chosen by a config field from a small registry (see DMILConfig for the reasons).
# --------------------------------------------------------------------------------------------------------------


def joint_redundancy_logits(classifier: nn.Module, level2: dict, present: torch.Tensor) -> torch.Tensor:
    """`"joint"` (reference): the redundancy head reads R ~ q(R | M_1..M_K)."""
    return classifier(level2["r"])


def per_modality_redundancy_logits(classifier: nn.Module, level2: dict, present: torch.Tensor) -> torch.Tensor:
    """`"per_modality"`: the redundancy head reads each predictor v_m(R | M_m) alone and the logits are averaged over
    the modalities present, as an ensemble would. Redundancy is by definition what every modality predicts alone; the
    hope was the ensemble's robustness to one corrupted modality, which the real-signal benchmark did not show (README,
    "Method")."""
    logits = torch.stack([classifier(level2["predictors"][m][0]) for m in level2["predictors"]], dim=1)
    weights = present.to(logits.dtype).unsqueeze(-1)
    return (logits * weights).sum(1) / weights.sum(1).clamp(min=1.0)


REDUNDANCY_READOUTS = {"joint": joint_redundancy_logits, "per_modality": per_modality_redundancy_logits}


def interaction_composition(
    modality_logits: torch.Tensor, synergy_logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-sample, label-aware estimate of the interaction composition, in the spirit of the first author's
    pointwise estimator (LSMI, ICML 2025): with i(x; y) = log C + log p(y | x) clipped at 0 (nats),

        r = min_m i(x_m; y),   u_m = i(x_m; y) - r,   s = max(0, i(x_1..x_K; y) - sum_m i(x_m; y)),

    where the unimodal i come from `modality_logits` (`(B, K, C)`, the level-1 heads) and the joint one from the
    synergy head. Synergy is the positive part of the interaction information: what the modalities say together
    beyond the sum of what each says alone (beyond the *max* would also count two agreeing noisy modalities, whose
    combination is more confident than either, as synergy; that is redundancy). Returns the normalised composition `(B, K + 2)` over [R, U_1..U_K, S] and each sample's total
    information in units of log C (0: nobody predicts the label, the sample says nothing about routing).
    Modalities absent from a sample carry no information.
    """
    num_labels = modality_logits.shape[-1]
    log_c = math.log(num_labels)

    def information(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.detach().float(), dim=-1)
        index = labels.view(-1, *([1] * (logits.dim() - 1))).expand(*logits.shape[:-1], 1)
        return (log_c + log_p.gather(-1, index).squeeze(-1)).clamp(min=0.0)

    unimodal = information(modality_logits) * present.float()  # (B, K)
    redundancy = unimodal.masked_fill(~present, float("inf")).min(dim=1).values
    redundancy = torch.where(torch.isinf(redundancy), torch.zeros_like(redundancy), redundancy)
    uniqueness = (unimodal - redundancy.unsqueeze(1)).clamp(min=0.0) * present.float()
    synergy = (information(synergy_logits) - unimodal.sum(dim=1)).clamp(min=0.0)
    composition = torch.cat([redundancy.unsqueeze(1), uniqueness, synergy.unsqueeze(1)], dim=1)
    total = composition.sum(dim=1)
    return composition / total.clamp(min=1e-6).unsqueeze(1), (total / log_c).clamp(max=1.0)


@dataclass
class GateInputs:
    """What a gate objective sees of one batch."""

    weights: torch.Tensor  # (B, K+2) gate output
    component_logits: torch.Tensor  # (B, K+2, C)
    modality_logits: torch.Tensor  # (B, K, C) level-1 unimodal heads
    available: torch.Tensor  # (B, K+2) bool
    present: torch.Tensor  # (B, K) bool


def mixture_gate_objective(inputs: GateInputs, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`"mixture"` (reference): the gate learns only through the CE of the gate-weighted logits. That CE rewards
    whichever component is most expressive, so an expressive synergy head takes every sample."""
    logits = (inputs.weights.unsqueeze(-1) * inputs.component_logits.float()).sum(dim=1)
    return logits, {}


def composition_gate_objective(
    inputs: GateInputs, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`"composition"` (default): the gate is trained to predict the sample's interaction composition
    (`interaction_composition`, a cross-entropy to its soft target, weighted by how informative the sample is),
    and the final CE sees the gate's weights detached, so it trains the components, not the routing. The gate
    then says which kind of information a sample rests on instead of which head is strongest."""
    logits = (inputs.weights.detach().unsqueeze(-1) * inputs.component_logits.float()).sum(dim=1)
    target, informative = interaction_composition(
        inputs.modality_logits, inputs.component_logits[:, -1], labels, inputs.present
    )
    log_weights = inputs.weights.clamp(min=1e-12).log().masked_fill(~inputs.available, 0.0)
    cross_entropy = -(target * log_weights).sum(dim=1)
    term = (cross_entropy * informative).sum() / informative.sum().clamp(min=1.0)
    return logits, {"gate_composition": term}


GATE_OBJECTIVES = {"mixture": mixture_gate_objective, "composition": composition_gate_objective}


# --------------------------------------------------------------------------------------------------------------
# Input checking: every mistake is reported with the input's name and what was expected, before any backbone runs.
# --------------------------------------------------------------------------------------------------------------

_INPUT_MODALITY = {
    "input_ids": "text", "attention_mask": "text", "token_type_ids": "text", "pixel_values": "vision",
    "input_values": "audio", "input_features": "audio", "audio_attention_mask": "audio",
}


def _check_tensor(name: str, value: object, floating: bool) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if not floating and (value.is_floating_point() or value.is_complex()):
        raise TypeError(f"{name} must be an integer or boolean tensor, got dtype {value.dtype}")
    if value.dim() == 0 or value.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)}): a batch needs at least one sample")
    return value


# Inputs are normalised (images and waveforms of unit scale, spectrograms of tens at most); a magnitude beyond this is
# a unit mistake (raw 16-bit samples, unscaled pixels) or garbage, and overflows attention to NaN logits in half
# precision long before it overflows float32.
MAX_INPUT_MAGNITUDE = 1e4


def _check_values(name: str, value: torch.Tensor) -> None:
    """NaN, infinite and absurdly large values, in one host sync."""
    magnitude = value.detach().abs().amax()
    if bool(magnitude <= MAX_INPUT_MAGNITUDE):
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    raise ValueError(
        f"{name} has values up to {float(magnitude):.3g}; the backbones expect normalised inputs (|x| <= "
        f"{MAX_INPUT_MAGNITUDE:g}): was a processor's normalisation skipped?"
    )


def _receptive_field(config) -> int | None:
    """Fewest waveform samples a convolutional feature encoder (wav2vec2, HuBERT, WavLM) turns into one frame."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not kernels or not strides:
        return None
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def _check_rank(name: str, value: torch.Tensor, rank: int | None, layout: str) -> None:
    if rank is not None and value.dim() != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {tuple(value.shape)}")


class DMILPreTrainedModel(PreTrainedModel):
    config_class = DMILConfig
    base_model_prefix = "dmil"
    main_input_name = "input_ids"
    input_modalities = ("text", "image", "audio")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # forward has no **kwargs and returns a per-batch mean: the Trainer must scale it for gradient accumulation.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, except that a checkpoint whose weights do not cover the model its config
        describes (a paradigm or variant changed in config.json, a head or backbone tensor missing) is an error:
        transformers would log the missing keys and initialise those modules at random."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys")}
        if any(problems.values()):
            details = "; ".join(f"{len(keys)} {kind.replace('_', ' ')}, e.g. {keys[:4]}" for kind, keys in problems.items() if keys)
            raise ValueError(
                f"the weights in {pretrained_model_name_or_path} do not match the model its config describes "
                f"({details}); was config.json edited, or the folder assembled from different runs?"
            )
        return (model, info) if want_info else model

    def _init_weights(self, module: nn.Module) -> None:
        # Backbones are dispatched to their own _init_weights by transformers; only DMIL's heads land here. They keep
        # PyTorch's default (Kaiming-uniform) init, which trains the small MLPs from scratch better than N(0, 0.02).
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            module.reset_parameters()


def _resolve_class(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def _init_kwargs(spec: BackboneSpec, pooling: str | None) -> dict:
    kwargs = dict(spec.init_kwargs)
    if pooling == "pooler":
        kwargs.pop("add_pooling_layer", None)  # the pooler is what this model pools with: build it
    return kwargs


def _build_backbone(config, spec: BackboneSpec, pooling: str) -> PreTrainedModel:
    if spec.model_class:
        return _resolve_class(spec.model_class)(config, **_init_kwargs(spec, pooling))
    return AutoModel.from_config(config, **_init_kwargs(spec, pooling))


class DMILForMultimodalClassification(DMILPreTrainedModel):
    r"""Multimodal classifier over two or three pretrained backbones, with DMIL's interaction decomposition.

    Per modality m a backbone gives a pooled vector, projected to Z_m. With `paradigm="dmil"`, level 1 splits Z_m
    into M_m (usable alone) and N_m (the rest); level 2 splits the M's into redundancy R and uniquenesses U_m; a
    fusion of the N's and their pairwise products gives synergy S; a per-sample gate weighs the component heads.
    `paradigm="joint"` and `"ensemble"` are the baselines on the same backbones.

    Missing modalities: an input left out of the call (or marked False in `modality_mask`, shape
    `(batch, num_modalities)`) removes that modality's uniqueness from the gate, removes it from the synergy
    input (its N is zeroed), and takes R from the predictors v_m of the modalities present; the gate renormalises
    over what remains. Synergy needs two present modalities. The joint baseline zeroes the missing features and
    the ensemble averages the modalities present.

    Example:

    ```python
    >>> import torch
    >>> from transformers import BertConfig, ViTConfig
    >>> from dmil_hf import DMILConfig, DMILForMultimodalClassification
    >>> tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    >>> config = DMILConfig(text_config=BertConfig(vocab_size=99, **tiny),
    ...                     vision_config=ViTConfig(image_size=32, patch_size=8, **tiny), num_labels=3)
    >>> model = DMILForMultimodalClassification(config).eval()
    >>> out = model(input_ids=torch.randint(0, 99, (2, 7)), pixel_values=torch.randn(2, 3, 32, 32))
    >>> out.logits.shape, out.interaction_weights.shape
    (torch.Size([2, 3]), torch.Size([2, 4]))
    ```
    """

    def __init__(self, config: DMILConfig, backbones: dict[str, PreTrainedModel] | None = None):
        super().__init__(config)
        if len(config.modalities) < 2:
            raise ValueError("DMILForMultimodalClassification needs a config with two or three backbone configs")
        backbones = dict(backbones or {})
        self.modalities = config.modalities
        dim, num_labels = config.latent_dim, config.num_labels
        self.specs = {m: backbone_spec(config.backbone_config(m).model_type, m) for m in self.modalities}
        self.pooling = {m: config.pooling.get(m, self.specs[m].pooling) for m in self.modalities}
        self.backbones = nn.ModuleDict()
        for m in self.modalities:
            backbone = backbones.pop(m, None) or _build_backbone(
                config.backbone_config(m), self.specs[m], self.pooling[m]
            )
            # Share the config object so edits to model.config.<m>_config reach the backbone.
            backbone.config = config.backbone_config(m)
            self.backbones[m] = backbone
        if backbones:
            raise ValueError(f"backbones given for modalities the config lacks: {sorted(backbones)}")
        self._forward_takes_mask = {
            m: "attention_mask" in inspect.signature(self.backbones[m].forward).parameters for m in self.modalities
        }
        self.projections = nn.ModuleDict({m: nn.Linear(self._hidden_size(m), dim) for m in self.modalities})

        if config.paradigm == "dmil":
            self.intra_decomposition = nn.ModuleDict(
                {m: IntraModalDecomposition(dim, num_labels, config.logvar_clamp) for m in self.modalities}
            )
            self.consistency_decomposition = ConsistencyDecomposition(self.modalities, dim, config.logvar_clamp)
            self.synergy_fusion = SYNERGY_FUSIONS[config.synergy_fusion](len(self.modalities), dim)
            self.component_classifiers = nn.ModuleDict(
                {name: nn.Linear(dim, num_labels) for name in config.interaction_components}
            )
            components = len(config.interaction_components)
            # Reading the heads' log-probabilities too lets the gate see which component is confident.
            extra = components * num_labels if config.gate_reads_predictions else 0
            self.interaction_gate = InteractionGate(components, dim, extra_inputs=extra)
        elif config.paradigm == "joint":
            # A hidden layer matters: a linear head on a concatenation is a sum of per-modality scores, an ensemble
            # in disguise that cannot represent synergy.
            self.joint_classifier = MLP(len(self.modalities) * dim, dim, num_labels)
        else:
            self.ensemble_classifiers = nn.ModuleDict({m: MLP(dim, dim, num_labels) for m in self.modalities})
        self.post_init()

    # ---------------------------------------------------------------- construction helpers

    def _hidden_size(self, modality: str) -> int:
        config = self.config.backbone_config(modality)
        for name in ("hidden_size", "d_model", "projection_dim"):
            if isinstance(getattr(config, name, None), int):
                return getattr(config, name)
        raise ValueError(f"cannot read the hidden size of the {modality} backbone ({config.model_type})")

    @classmethod
    def from_backbones_pretrained(
        cls,
        text: str | PretrainedConfig | None = None,
        vision: str | PretrainedConfig | None = None,
        audio: str | PretrainedConfig | None = None,
        **kwargs,
    ) -> "DMILForMultimodalClassification":
        """Build a model around pretrained backbones (Hub ids or local paths); DMIL's own heads start fresh.

        A backbone given as a config instead of a path is built from it with random weights (a pretrained text
        encoder next to small vision and audio encoders trained from scratch, say).

        Keyword arguments prefixed with `text_`, `vision_` or `audio_` go to that backbone's `from_pretrained`
        (e.g. `vision_revision="main"`); the rest go to [`DMILConfig`] (e.g. `num_labels`, `latent_dim`,
        `paradigm`, `id2label`). Backbones load in float32 whatever their checkpoint's dtype: mixed precision is
        the Trainer's job (`bf16=True`).
        """
        paths = {"text": text, "vision": vision, "audio": audio}
        per_backbone = {m: {} for m in paths}
        for key in list(kwargs):
            modality, _, rest = key.partition("_")
            if modality in paths and rest and not key.endswith("_config"):
                per_backbone[modality][rest] = kwargs.pop(key)
        backbones = {}
        for modality, path in paths.items():
            if path is None:
                continue
            if isinstance(path, PretrainedConfig):
                config = _as_backbone_config(path, modality)
                spec = backbone_spec(config.model_type, modality)
                pooling = (kwargs.get("pooling") or {}).get(modality) or spec.pooling
                backbones[modality] = _build_backbone(config, spec, pooling)
                continue
            extra = dict(per_backbone[modality])
            hub_kwargs = load_kwargs_config(extra)
            dtype = extra.pop("dtype", torch.float32)
            # Config attributes among the prefixed kwargs (text_hidden_dropout_prob=0.0) update the backbone config,
            # as in from_encoder_decoder_pretrained; the rest go to the model's from_pretrained. Passing them all
            # next to an explicit config= would hand config attributes to the model's __init__, a TypeError.
            full_config, model_kwargs = AutoConfig.from_pretrained(
                path, return_unused_kwargs=True, **hub_kwargs, **{k: v for k, v in extra.items() if k not in hub_kwargs}
            )
            config = _as_backbone_config(full_config, modality)
            spec = backbone_spec(config.model_type, modality)
            pooling = (kwargs.get("pooling") or {}).get(modality)
            load_kwargs = {**_init_kwargs(spec, pooling), **hub_kwargs, **model_kwargs, "dtype": dtype}
            if spec.model_class and spec.model_class.rpartition(".")[2] not in (config.architectures or []):
                # A full encoder-decoder checkpoint (Whisper): its keys are "encoder.*"/"model.encoder.*", which the
                # encoder class alone would not match (its weights would silently stay random). Load it whole and
                # keep the encoder.
                backbones[modality] = AutoModel.from_pretrained(path, config=config, **load_kwargs).get_encoder()
            else:
                loader = _resolve_class(spec.model_class) if spec.model_class else AutoModel
                backbones[modality] = loader.from_pretrained(path, config=config, **load_kwargs)
        if len(backbones) < 2:
            raise ValueError("from_backbones_pretrained needs at least two of text=, vision=, audio=")
        config = DMILConfig(**{f"{m}_config": b.config for m, b in backbones.items()}, **kwargs)
        return cls(config, backbones=backbones)

    def get_input_embeddings(self) -> nn.Module:
        # PEFT and activation checkpointing hook the input embeddings so that frozen backbones still pass gradients.
        first = "text" if "text" in self.backbones else self.modalities[0]
        return self.backbones[first].get_input_embeddings()

    # ---------------------------------------------------------------- input checking

    def _gather_inputs(self, **inputs) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
        """Validate the raw inputs and group them per modality as the backbones' forward kwargs."""
        config = self.config
        for name, value in inputs.items():
            if value is not None and _INPUT_MODALITY[name] not in self.modalities:
                raise ValueError(
                    f"{name} was given, but this model has no {_INPUT_MODALITY[name]} backbone "
                    f"(configured modalities: {', '.join(self.modalities)})"
                )
        if inputs["input_values"] is not None and inputs["input_features"] is not None:
            raise ValueError("give the audio as input_values or as input_features, not both")
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        batch_sizes: dict[str, int] = {}

        def add(modality: str, key: str, name: str, floating: bool, rank: int | None, layout: str) -> None:
            value = inputs[name]
            if value is None:
                return
            value = _check_tensor(name, value, floating)
            _check_rank(name, value, rank, layout)
            if config.check_inputs and floating:
                _check_values(name, value)
            grouped.setdefault(modality, {})[key] = value
            batch_sizes[name] = value.shape[0]

        if "text" in self.modalities:
            if inputs["input_ids"] is None and (inputs["attention_mask"] is not None or inputs["token_type_ids"] is not None):
                raise ValueError("attention_mask/token_type_ids were given without input_ids")
            add("text", "input_ids", "input_ids", False, 2, "(batch, sequence_length)")
            add("text", "attention_mask", "attention_mask", False, 2, "(batch, sequence_length)")
            add("text", "token_type_ids", "token_type_ids", False, 2, "(batch, sequence_length)")
            if "input_ids" in grouped.get("text", {}):
                ids = grouped["text"]["input_ids"]
                if ids.dtype in (torch.bool, torch.uint8):
                    raise TypeError(f"input_ids must be integer token ids (int64 or int32), got dtype {ids.dtype}")
                limit = getattr(config.text_config, "max_position_embeddings", None)
                if ids.shape[1] == 0 or (limit and ids.shape[1] > limit):
                    raise ValueError(
                        f"input_ids must have between 1 and {limit or 'any number of'} tokens per sample for this "
                        f"{config.text_config.model_type} backbone, got shape {tuple(ids.shape)}; truncate the text "
                        "(the processor does with truncation=True)"
                    )
                for extra in ("attention_mask", "token_type_ids"):
                    if extra in grouped["text"] and grouped["text"][extra].shape != ids.shape:
                        raise ValueError(
                            f"{extra} must have the shape of input_ids {tuple(ids.shape)}, "
                            f"got {tuple(grouped['text'][extra].shape)}"
                        )
                vocab = getattr(config.text_config, "vocab_size", None)
                if config.check_inputs and vocab and bool(((ids < 0) | (ids >= vocab)).any()):
                    raise ValueError(f"input_ids must be token ids in [0, {vocab}), got values outside that range")
        if "vision" in self.modalities:
            spec = self.specs["vision"]
            add("vision", "pixel_values", "pixel_values", True, 4, "(batch, channels, height, width)")
            if "vision" in grouped:
                expected = expected_input_shape(config.vision_config, spec)
                got = tuple(grouped["vision"]["pixel_values"].shape[1 : 1 + len(expected)])
                if expected and got != expected:
                    raise ValueError(
                        f"pixel_values must have shape (batch, {', '.join(map(str, expected))}"
                        f"{', ...' if len(expected) < 3 else ''}) for this {config.vision_config.model_type} backbone, "
                        f"got {tuple(grouped['vision']['pixel_values'].shape)}"
                    )
        if "audio" in self.modalities:
            spec = self.specs["audio"]
            name = "input_values" if inputs["input_values"] is not None else "input_features"
            main = self.backbones["audio"].main_input_name
            layout = "(batch, samples)" if spec.input_rank == 2 else "(batch, frames/mel dims...)"
            add("audio", main, name, True, spec.input_rank, layout)
            if "audio" in grouped:
                audio = grouped["audio"][main]
                shortest = _receptive_field(config.audio_config) if spec.input_rank == 2 else None
                if shortest and audio.shape[1] < shortest:
                    raise ValueError(
                        f"{name} must have at least {shortest} samples per clip (the receptive field of this "
                        f"{config.audio_config.model_type} feature encoder), got shape {tuple(audio.shape)}; pad short "
                        "clips with silence"
                    )
                expected = expected_input_shape(config.audio_config, spec)
                if expected and tuple(audio.shape[1:]) != expected:
                    raise ValueError(
                        f"{name} must have shape (batch, {', '.join(map(str, expected))}) for this "
                        f"{config.audio_config.model_type} backbone, got {tuple(audio.shape)}"
                    )
                add("audio", "attention_mask", "audio_attention_mask", False, 2, "(batch, samples)")
                mask = grouped["audio"].get("attention_mask")
                # The time axis is dim 1 for waveforms and AST's (frames, mel) but dim 2 for Whisper's (mel, frames).
                if mask is not None and (mask.shape[0] != audio.shape[0] or mask.shape[1] not in audio.shape[1:]):
                    raise ValueError(
                        f"audio_attention_mask must have shape (batch, time) matching {name} of shape "
                        f"{tuple(audio.shape)}, got {tuple(mask.shape)}"
                    )
            elif inputs["audio_attention_mask"] is not None:
                raise ValueError("audio_attention_mask was given without input_values/input_features")
        if not grouped:
            raise ValueError(
                f"no input given: pass at least one of the model's modalities ({', '.join(self.modalities)})"
            )
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"inputs disagree on the batch size: {batch_sizes}")
        return grouped, next(iter(batch_sizes.values()))

    def _presence(self, grouped: dict, batch_size: int, modality_mask: torch.Tensor | None, device) -> torch.Tensor:
        # Built on the device (a fill per absent modality): torch.tensor(list, device=cuda) would be a blocking
        # host-to-device copy in every forward.
        present = torch.ones(batch_size, len(self.modalities), dtype=torch.bool, device=device)
        for k, m in enumerate(self.modalities):
            if m not in grouped:
                present[:, k] = False
        if modality_mask is not None:
            if not isinstance(modality_mask, torch.Tensor) or modality_mask.shape != (batch_size, len(self.modalities)):
                raise ValueError(
                    f"modality_mask must be a tensor of shape (batch, {len(self.modalities)}) with columns "
                    f"{self.modalities}, got {getattr(modality_mask, 'shape', type(modality_mask).__name__)}"
                )
            if modality_mask.dtype != torch.bool and self.config.check_inputs:
                # A float mask like 0.5 would silently count as present: only 0 and 1 mean something.
                if not bool(((modality_mask == 0) | (modality_mask == 1)).all()):
                    raise ValueError("modality_mask must hold only 0/1 or False/True, got other values")
            present = present & modality_mask.to(device=device, dtype=torch.bool)
        if self.config.check_inputs and not bool(present.any(dim=1).all()):
            raise ValueError("every sample needs at least one modality; modality_mask leaves a sample with none")
        return present

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
        labels = _check_tensor("labels", labels, floating=False)
        if labels.dtype == torch.bool:
            raise TypeError("labels must be integer class ids, got dtype torch.bool")
        if labels.shape != (batch_size,):
            raise ValueError(f"labels must have shape (batch,) = ({batch_size},), got {tuple(labels.shape)}")
        n = self.config.num_labels
        if self.config.check_inputs and bool(((labels < 0) | (labels >= n)).any()):
            raise ValueError(f"labels must be class ids in [0, {n}), got values outside that range")
        # cross_entropy takes only int64 targets; int32/uint8 ids from a collator are valid class ids too.
        return labels.long()

    # ---------------------------------------------------------------- encoding

    def encode(self, modality: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled backbone features of one modality, `(batch, hidden_size)`."""
        backbone = self.backbones[modality]
        mask = inputs.get("attention_mask")
        # Floating inputs follow the backbone's dtype (float64 audio, float32 images into a bf16 model); ids and masks
        # stay integer.
        dtype = backbone.dtype
        kwargs = {k: v.to(dtype) if v.is_floating_point() and k != "attention_mask" else v for k, v in inputs.items()}
        if mask is not None and not self._forward_takes_mask[modality]:
            kwargs.pop("attention_mask")
        output = backbone(**kwargs)
        mode = self.pooling[modality]
        if mode == "pooler":
            pooled = getattr(output, "pooler_output", None)
            if pooled is None:
                raise ValueError(
                    f"pooling 'pooler' was chosen for the {modality} backbone "
                    f"({self.config.backbone_config(modality).model_type}), which returns no pooler_output; "
                    "use 'cls' or 'mean'"
                )
            return pooled
        hidden = output.last_hidden_state
        if mode == "cls":
            return hidden[:, 0]
        if mask is not None and mask.shape[1] != hidden.shape[1]:
            # Waveform masks count samples; the encoder's frames are fewer. Let the backbone map one to the other.
            to_frames = getattr(backbone, "_get_feature_vector_attention_mask", None)
            mask = to_frames(hidden.shape[1], mask) if to_frames is not None else None
        if mask is None:
            return hidden.mean(dim=1)
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        stage: int | None = None,
        return_dict: bool | None = None,
    ) -> DMILOutput | tuple:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids: text inputs of the text backbone.
            pixel_values: `(batch, channels, height, width)` images.
            input_values / input_features: audio, as the audio backbone expects it (waveforms `(batch, samples)`
                for wav2vec2/HuBERT, spectrograms for AST/Whisper); either name is accepted.
            audio_attention_mask: mask of the audio input (kept apart from the text `attention_mask`).
            modality_mask: `(batch, num_modalities)` bool, False where a sample lacks that modality.
            labels: `(batch,)` class ids in `[0, num_labels)`.
            stage: which training stage's loss to compute (1, 2 or 3; default 3, every term). Stage 1 runs only
                the backbones and level 1.
        """
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        stage = 3 if stage is None else stage
        if stage not in STAGES:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        grouped, batch_size = self._gather_inputs(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, input_values=input_values, input_features=input_features,
            audio_attention_mask=audio_attention_mask,
        )
        if labels is not None:
            labels = self._check_labels(labels, batch_size)
        device = next(iter(next(iter(grouped.values())).values())).device
        present = self._presence(grouped, batch_size, modality_mask, device)

        z = {}
        for m in self.modalities:
            if m in grouped:
                z[m] = self.projections[m](self.encode(m, grouped[m]))
        dtype = next(iter(z.values())).dtype
        for m in self.modalities:  # a modality absent from the whole batch: zero features, never a backbone call
            if m not in z:
                z[m] = torch.zeros(batch_size, self.config.latent_dim, device=device, dtype=dtype)

        if self.config.paradigm == "joint":
            out = self._forward_joint(z, present, labels)
        elif self.config.paradigm == "ensemble":
            out = self._forward_ensemble(z, present, labels)
        else:
            # Known without looking at tensor values, so skipping the missing-modality fallback is no data-dependent branch.
            all_given = modality_mask is None and len(grouped) == len(self.modalities)
            out = self._forward_dmil(z, present, labels, stage, all_given)
        return out if return_dict else out.to_tuple()

    def _forward_joint(self, z, present, labels) -> DMILOutput:
        features = torch.cat([z[m] * present[:, k : k + 1].to(z[m].dtype) for k, m in enumerate(self.modalities)], -1)
        logits = self.joint_classifier(features)
        loss = terms = None
        if labels is not None:
            terms = {"ce_final": F.cross_entropy(logits.float(), labels)}
            loss = terms["ce_final"]
        return DMILOutput(loss=loss, logits=logits, loss_terms=terms)

    def _forward_ensemble(self, z, present, labels) -> DMILOutput:
        modality_logits = torch.stack([self.ensemble_classifiers[m](z[m]) for m in self.modalities], dim=1)
        weights = present.to(modality_logits.dtype).unsqueeze(-1)
        logits = (modality_logits * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        loss = terms = None
        if labels is not None:
            # Each head has its own CE on its own modality: the sum trains K independent unimodal models.
            terms = {
                f"ce_modality_{m}": masked_mean(F.cross_entropy(modality_logits[:, k].float(), labels, reduction="none"), present[:, k])
                for k, m in enumerate(self.modalities)
            }
            loss = sum(terms.values())
        return DMILOutput(loss=loss, logits=logits, modality_logits=modality_logits, loss_terms=terms)

    def _forward_dmil(self, z, present, labels, stage: int, all_given: bool) -> DMILOutput:
        config = self.config
        with_losses = labels is not None
        level1_losses = with_losses and stage in (1, 3)  # stage 2 trains nothing of level 1 and reads none of its terms
        level1 = {
            m: self.intra_decomposition[m](z[m], with_losses=level1_losses, sample_n=self.training)
            for m in self.modalities
        }
        modality_logits = torch.stack([level1[m]["logits"] for m in self.modalities], dim=1)
        present_f = present.to(modality_logits.dtype)
        n_present = present.sum(dim=1, keepdim=True)
        synergy_ok = n_present.squeeze(1) >= 2
        synergy_source = {
            "n": lambda: {m: level1[m]["n"] for m in self.modalities},
            "z": lambda: z,
            # Synergy fuses what the backbones learned without pulling them jointly (no modality competition).
            "z_detached": lambda: {m: z[m].detach() for m in self.modalities},
        }[config.synergy_input]()
        n_inputs = [synergy_source[m] * present_f[:, k : k + 1] for k, m in enumerate(self.modalities)]

        terms: dict[str, torch.Tensor] = {}
        if level1_losses:
            for k, m in enumerate(self.modalities):
                p, out = present[:, k], level1[m]
                terms[f"ce_modality_{m}"] = masked_mean(F.cross_entropy(out["logits"].float(), labels, reduction="none"), p)
                terms[f"kl_M_{m}"] = masked_mean(kl_per_dim(out["m_mu"], out["m_logvar"]), p)
                terms[f"kl_N_{m}"] = masked_mean(kl_per_dim(out["n_mu"], out["n_logvar"]), p)
                # The target is detached: reconstruction asks M and N to keep what Z holds, not Z to shrink.
                rec = (out["reconstruction"].float() - z[m].detach().float()).pow(2).mean(-1)
                terms[f"rec_Z_{m}"] = masked_mean(rec, p)

        if stage == 1:
            # No fusion exists yet: the stage-1 prediction is the mean of the unimodal heads on the modalities present.
            logits = (modality_logits * present_f.unsqueeze(-1)).sum(1) / present_f.sum(1, keepdim=True).clamp(min=1.0)
            if with_losses and config.stage1_synergy_weight:
                synergy_logits = self.component_classifiers["synergy"](self.synergy_fusion(n_inputs))
                ce = F.cross_entropy(synergy_logits.float(), labels, reduction="none")
                terms["ce_synergy"] = masked_mean(ce, synergy_ok)
            loss = self._weighted_loss(terms, stage) if labels is not None else None
            return DMILOutput(loss=loss, logits=logits, modality_logits=modality_logits, loss_terms=terms or None)

        m_means = {m: level1[m]["m_mu"] for m in self.modalities}
        level2 = self.consistency_decomposition(
            m_means, present, with_losses=with_losses, all_given=all_given,
            need_predictors=config.redundancy_readout != "joint",
        )
        synergy = self.synergy_fusion(n_inputs)
        components = [level2["r"], *[level2["uniqueness"][m][0] for m in self.modalities], synergy]
        names = config.interaction_components
        redundancy_logits = REDUNDANCY_READOUTS[config.redundancy_readout](
            self.component_classifiers[names[0]], level2, present
        )
        component_logits = torch.stack(
            [redundancy_logits, *[self.component_classifiers[name](c) for name, c in zip(names[1:], components[1:])]],
            dim=1,
        )
        available = torch.cat([torch.ones_like(present[:, :1]), present, synergy_ok.unsqueeze(1)], dim=1)
        # An unavailable component is zeroed in the gate's input too: otherwise the U_m of a masked-out modality
        # (computed from whatever its input held) would still steer the weights of the components present.
        gate_input = [c * available[:, k : k + 1].to(c.dtype) for k, c in enumerate(components)]
        if config.gate_reads_predictions:
            log_probs = F.log_softmax(component_logits.detach().float(), dim=-1).to(gate_input[0].dtype)
            gate_input.append((log_probs * available.unsqueeze(-1).to(log_probs.dtype)).flatten(1))
        weights = self.interaction_gate(gate_input, available)
        gate = GateInputs(weights, component_logits, modality_logits, available, present)
        if labels is None:
            # Every gate objective predicts with the same mixture; they differ only in what trains the gate.
            logits = (weights.unsqueeze(-1) * component_logits.float()).sum(dim=1)
        else:
            logits, gate_terms = GATE_OBJECTIVES[config.gate_objective](gate, labels)
            terms["ce_final"] = F.cross_entropy(logits, labels)
            terms.update(gate_terms)
            ce = lambda idx: F.cross_entropy(component_logits[:, idx].float(), labels, reduction="none")  # noqa: E731
            joint_ok = level2["all_present"]
            terms["ce_redundancy"] = ce(0).mean()
            # Only the joint posterior q(R | M_1..M_K) is regularised here; a sample lacking a modality takes R from
            # the predictors, whose own pull is the alignment term.
            terms["kl_R"] = masked_mean(kl_per_dim(level2["r_mu"], level2["r_logvar"]), joint_ok)
            for k, m in enumerate(self.modalities):
                p = present[:, k]
                terms[f"ce_uniqueness_{m}"] = masked_mean(ce(1 + k), p)
                _, u_mu, u_logvar = level2["uniqueness"][m]
                terms[f"kl_U_{m}"] = masked_mean(kl_per_dim(u_mu, u_logvar), p)
                _, v_mu, v_logvar = level2["predictors"][m]
                # Alignment only where the joint posterior exists (every modality present).
                align = kl_per_dim(level2["r_mu"], level2["r_logvar"], v_mu, v_logvar)
                terms[f"align_R_{m}"] = masked_mean(align, joint_ok)
                rec = (level2["reconstructions"][m].float() - m_means[m].detach().float()).pow(2).mean(-1)
                terms[f"rec_M_{m}"] = masked_mean(rec, p)
            terms["ce_synergy"] = masked_mean(ce(len(self.modalities) + 1), synergy_ok)
        loss = self._weighted_loss(terms, stage) if labels is not None else None
        return DMILOutput(
            loss=loss, logits=logits, interaction_weights=weights, component_logits=component_logits,
            modality_logits=modality_logits, loss_terms=terms or None,
        )

    def _weighted_loss(self, terms: dict[str, torch.Tensor], stage: int) -> torch.Tensor:
        """The stage's loss: each term it counts times its weight from the stage table (`stages_dmil.STAGE_PLANS`)."""
        weights = stage_term_weights(self.config, stage, terms)
        return sum(weight * terms[name] for name, weight in weights.items() if weight)


def load_kwargs_config(load_kwargs: dict) -> dict:
    """The subset of from_pretrained kwargs that AutoConfig.from_pretrained understands."""
    keys = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code", "subfolder")
    return {k: v for k, v in load_kwargs.items() if k in keys}
