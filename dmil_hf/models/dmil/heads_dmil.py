"""DMIL's heads, one per paradigm, and the small swappable modules they are built from.

A head takes the projected features Z_m of every modality (`ModalityFeatures`) and returns the prediction and the
stage's loss (`DMILOutput`). `HEADS` maps `config.paradigm` to its head: `DMILHead` (the two-level variational
decomposition, synergy fusion and the per-sample interaction gate), and the baselines on the same features,
`JointHead`, `EnsembleHead`, `TwoStageHead` and `I2M2Head`. Latents are typed (`GaussianLatent`, `IntraModalLatents`,
`ConsistencyLatents`).

Read top-down: the output dataclass, the Gaussian and loss helpers, the small fusion modules, the registries of
DMIL's variants, then the heads.

This module is copied next to ``modeling_dmil.py`` when a model is saved with remote code, so it imports only torch
and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_dmil import DMILConfig
from .problem_types_dmil import (
    PROBLEM_TYPES,
    combine_experts,
    infer_problem_type,
    problem_type_of,
    resolve_problem_type,
)
from .stages_dmil import stage_term_weights


@dataclass
class DMILOutput(ModelOutput):
    """Output of [`DMILForMultimodalClassification`].

    Attributes:
        loss: the weighted loss of the requested stage (when `labels` are given).
        logits: `(batch, num_labels)` final prediction: class logits, each label's logit (multi-label) or the
            predicted values (regression; `config.problem_type`). For DMIL, the gate-weighted sum of the component
            logits (stage 1: the mean of the unimodal heads, as the gate does not exist yet).
        interaction_weights: `(batch, K + 2)` the per-sample gate over `config.interaction_components`
            (DMIL only); a missing modality's uniqueness, and synergy when fewer than two modalities are present,
            get weight 0.
        component_logits: `(batch, K + 2, num_labels)` logits of the redundancy, uniqueness and synergy heads.
        modality_logits: `(batch, K, num_labels)` unimodal predictions (DMIL: heads on M_m; ensemble and two_stage:
            the per-modality heads; joint: none). Used for the synergy indicator.
        loss_terms: every unweighted term of the requested stage by name, e.g. `kl_M_text`, `align_R_vision`,
            `ce_synergy`; weights are the config's `*_weight` fields. The `ce_*` terms hold the problem type's loss
            (`task_loss`: cross-entropy, binary cross-entropy or squared error).
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


_REDUCTIONS = {"none": lambda x: x, "mean": torch.mean, "sum": torch.sum}


def task_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "none", problem_type: str | None = None
) -> torch.Tensor:
    """The label loss every head and component trains with (the `ce_*` terms, whatever the problem type), per sample
    unless `reduction` (`"mean"`, `"sum"`) says otherwise, computed in float32: cross-entropy against class ids
    (`"single_label_classification"`), binary cross-entropy per label averaged over the labels
    (`"multi_label_classification"`), squared error averaged over the targets (`"regression"`); the means over a
    batch are transformers' `CrossEntropyLoss`, `BCEWithLogitsLoss` and `MSELoss`. Labels are in the model's checked
    form (`problem_types_dmil.PROBLEM_TYPES[...].check_labels`). Heads pass `config.problem_type`; without it the type
    is inferred by transformers' rule from `logits.shape[-1]` and the labels' dtype (a regression with several
    targets cannot be told from a multi-label task that way)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {sorted(_REDUCTIONS)}, got {reduction!r}")
    return _REDUCTIONS[reduction](problem_type_of(logits, labels, problem_type).loss(logits, labels))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample values over the samples where `mask` is true (0 when none is), without a host sync."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class GaussianLatent(NamedTuple):
    """A latent drawn from a diagonal Gaussian posterior: the value used downstream (a reparameterised sample in
    training, the mean in eval), and the posterior's mean and log-variance."""

    sample: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class DiagonalGaussianHead(nn.Module):
    """q(z | x) = N(mu(x), diag(exp(logvar(x)))): a reparameterised sample in training, the mean in eval."""

    def __init__(self, in_dim: int, out_dim: int, logvar_clamp: float, logvar_offset: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)
        self.logvar_clamp = logvar_clamp
        # Where the log-variance starts: a fixed offset rather than a bias init, so that it holds whatever init runs.
        self.logvar_offset = logvar_offset

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> GaussianLatent:
        """`sample` overrides the module's own training flag (the default) for whether the latent is sampled."""
        mu, logvar = self.linear(x).chunk(2, dim=-1)
        if self.logvar_offset:
            logvar = logvar + self.logvar_offset
        # Clamped so that exp(logvar) stays finite in bf16/fp16.
        logvar = logvar.clamp(-self.logvar_clamp, self.logvar_clamp)
        if not (self.training if sample is None else sample):
            return GaussianLatent(mu, mu, logvar)
        return GaussianLatent(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), mu, logvar)


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


@dataclass
class IntraModalLatents:
    """Level 1 of one modality: M (usable alone), N (the rest), the unimodal logits read from M, and the
    reconstruction of Z from [M, N] (None when no loss is computed)."""

    m: GaussianLatent
    n: GaussianLatent
    logits: torch.Tensor
    reconstruction: torch.Tensor | None


@dataclass
class ConsistencyLatents:
    """Level 2: R (its joint posterior, or the predictors' average where a modality is missing), each U_m, the
    per-modality predictors v_m(R | M_m) and the reconstructions of M_m from [R, U_m] (None when not computed),
    and which samples have every modality (the joint posterior)."""

    r: GaussianLatent
    uniqueness: dict[str, GaussianLatent]
    all_present: torch.Tensor
    predictors: dict[str, GaussianLatent] | None = None
    reconstructions: dict[str, torch.Tensor] | None = None


class IntraModalDecomposition(nn.Module):
    """Level 1 for one modality: Z_m -> M_m (usable alone, has a classifier) and N_m (the rest, no label loss)."""

    def __init__(self, dim: int, num_labels: int, logvar_clamp: float, initial_logvar: float = 0.0):
        super().__init__()
        self.m_posterior = DiagonalGaussianHead(dim, dim, logvar_clamp, initial_logvar)
        self.n_posterior = DiagonalGaussianHead(dim, dim, logvar_clamp, initial_logvar)
        self.classifier = nn.Linear(dim, num_labels)
        self.reconstruction = MLP(2 * dim, max(dim // 2, 1), dim)

    def forward(self, z: torch.Tensor, with_losses: bool = True, sample_n: bool | None = None) -> IntraModalLatents:
        """`sample_n` says whether N is sampled; the model passes its own training flag, so that N is sampled in
        stage 2 too, where this module is frozen and in eval mode (as the reference code does: its sampling reads
        the whole model's flag). Otherwise synergy would fit on N's mean in stage 2 and meet samples in stage 3."""
        m = self.m_posterior(z)
        n = self.n_posterior(z, sample=sample_n)
        # The reconstruction serves only the loss.
        reconstruction = self.reconstruction(torch.cat([m.sample, n.sample], dim=-1)) if with_losses else None
        return IntraModalLatents(m, n, self.classifier(m.sample), reconstruction)


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
    ) -> ConsistencyLatents:
        """`with_losses=False` skips what only the loss reads (predictors' alignment, reconstructions);
        `all_given=True` says, statically, that every sample has every modality, so no fallback is needed;
        `need_predictors=True` computes the predictors v_m anyway (a redundancy readout reads them)."""
        present_f = present.to(next(iter(m_means.values())).dtype)
        joint_in = torch.cat([m_means[m] * present_f[:, k : k + 1] for k, m in enumerate(self.modalities)], dim=-1)
        r = self.redundancy(joint_in)
        all_present = present.all(dim=1, keepdim=True)
        predictors = None
        if with_losses or not all_given or need_predictors:
            predictors = {m: self.redundancy_predictors[m](m_means[m]) for m in self.modalities}
        if not all_given:
            # Computed for every sample and selected with torch.where: no data-dependent branch, no host sync.
            weights = present_f / present_f.sum(1, keepdim=True).clamp(min=1.0)
            fallback = [
                sum(predictors[m][i] * weights[:, k : k + 1] for k, m in enumerate(self.modalities)) for i in range(3)
            ]
            r = GaussianLatent(*(torch.where(all_present, joint, fb) for joint, fb in zip(r, fallback)))
        uniqueness = {m: self.uniqueness[m](m_means[m]) for m in self.modalities}
        reconstructions = None
        if with_losses:
            reconstructions = {
                m: self.reconstruction[m](torch.cat([r.sample, uniqueness[m].sample], dim=-1)) for m in self.modalities
            }
        return ConsistencyLatents(r, uniqueness, all_present.squeeze(1), predictors, reconstructions)


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

# `config.projection`: how a backbone's pooled vector becomes Z_m (`(in_dim, out_dim) -> module`). `"linear"` is the
# reference's one Linear; `"mlp"` puts a hidden layer (as wide as Z) before it, which gives DMIL's unimodal evidence
# (M_m and its linear head) the depth of a baseline's MLP expert.
PROJECTIONS = {
    "linear": nn.Linear,
    "mlp": lambda in_dim, out_dim: MLP(in_dim, out_dim, out_dim),
    # The pooled vector itself (a baseline's head reads it as the same model written plainly does); its width is the
    # backbone's, so only the baselines, whose heads take any width per modality, can have it.
    "identity": lambda in_dim, out_dim: nn.Identity(),
}


def projected_width(projection: str, backbone_width: int, feature_dim: int) -> int:
    """The width of Z_m under `projection`: the backbone's for `"identity"`, else `feature_dim`."""
    return backbone_width if projection == "identity" else feature_dim


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


@dataclass
class RedundancyReadoutInputs:
    """What a redundancy readout may read of one batch."""

    classifier: nn.Module  # the redundancy component's head
    level2: ConsistencyLatents
    present: torch.Tensor  # (B, K) bool
    modality_logits: torch.Tensor  # (B, K, C) level-1 unimodal heads
    problem_type: str | None = None


def joint_redundancy_logits(inputs: RedundancyReadoutInputs) -> torch.Tensor:
    """`"joint"` (reference): the redundancy head reads R ~ q(R | M_1..M_K)."""
    return inputs.classifier(inputs.level2.r.sample)


def per_modality_redundancy_logits(inputs: RedundancyReadoutInputs) -> torch.Tensor:
    """`"per_modality"`: the redundancy head reads each predictor v_m(R | M_m) alone and the logits are averaged over
    the modalities present, as an ensemble would. Redundancy is by definition what every modality predicts alone; the
    hope was the ensemble's robustness to one corrupted modality, which the real-signal benchmark did not show (README,
    "Method")."""
    logits = torch.stack([inputs.classifier(v.sample) for v in inputs.level2.predictors.values()], dim=1)
    return present_mean(logits, inputs.present)


def unimodal_product_redundancy_logits(inputs: RedundancyReadoutInputs) -> torch.Tensor:
    """`"unimodal_product"`: redundancy read as the product of the level-1 unimodal experts p(y | M_m) over the
    modalities present, as the ensemble and I2M2's intra experts combine: what every modality says alone, where
    two agreeing modalities sharpen each other. The redundancy classifier is not used."""
    return product_of_experts(inputs.modality_logits, inputs.present, inputs.problem_type)


REDUNDANCY_READOUTS = {
    "joint": joint_redundancy_logits,
    "per_modality": per_modality_redundancy_logits,
    "unimodal_product": unimodal_product_redundancy_logits,
}


def interaction_composition(
    modality_logits: torch.Tensor, synergy_logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor,
    problem_type: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-sample, label-aware estimate of the interaction composition, in the spirit of the first author's
    pointwise estimator (LSMI, ICML 2025): with i(x; y) a prediction's pointwise information about the label in
    nats, clipped at 0 (`problem_types_dmil`: log C + log p(y | x) for class ids; per label, log 2 + log p(y_l | x)
    summed over the labels for multi-label; for regression the Gaussian log-likelihood ratio of the prediction against
    the batch's label mean at the labels' variance),

        r = min_m i(x_m; y),   u_m = i(x_m; y) - r,   s = max(0, i(x_1..x_K; y) - sum_m i(x_m; y)),

    where the unimodal i come from `modality_logits` (`(B, K, C)`, the level-1 heads) and the joint one from the
    synergy head. Synergy is the positive part of the interaction information: what the modalities say together
    beyond the sum of what each says alone (beyond the *max* would also count two agreeing noisy modalities, whose
    combination is more confident than either, as synergy; that is redundancy). Returns the normalised composition
    `(B, K + 2)` over [R, U_1..U_K, S] and each sample's total information in units of the problem type's ceiling
    (log C; num_labels x log 2; num_labels / 2 for regression), capped at 1 (0: nobody predicts the label, the sample
    says nothing about routing). Modalities absent from a sample carry no information. `problem_type` defaults to
    transformers' rule on the number of outputs and the labels' dtype.
    """
    kind = problem_type_of(modality_logits, labels, problem_type)
    ceiling = kind.ceiling(modality_logits.shape[-1])

    def information(logits: torch.Tensor) -> torch.Tensor:
        return kind.information(logits.detach(), labels).clamp(min=0.0)

    unimodal = information(modality_logits) * present.float()  # (B, K)
    redundancy = unimodal.masked_fill(~present, float("inf")).min(dim=1).values
    redundancy = torch.where(torch.isinf(redundancy), torch.zeros_like(redundancy), redundancy)
    uniqueness = (unimodal - redundancy.unsqueeze(1)).clamp(min=0.0) * present.float()
    synergy = (information(synergy_logits) - unimodal.sum(dim=1)).clamp(min=0.0)
    composition = torch.cat([redundancy.unsqueeze(1), uniqueness, synergy.unsqueeze(1)], dim=1)
    total = composition.sum(dim=1)
    return composition / total.clamp(min=1e-6).unsqueeze(1), (total / ceiling).clamp(max=1.0)


@dataclass
class GateInputs:
    """What a gate objective sees of one batch."""

    weights: torch.Tensor  # (B, K+2) gate output
    component_logits: torch.Tensor  # (B, K+2, C)
    modality_logits: torch.Tensor  # (B, K, C) level-1 unimodal heads
    available: torch.Tensor  # (B, K+2) bool
    present: torch.Tensor  # (B, K) bool
    problem_type: str | None = None  # config.problem_type (set by the model's first forward with labels)
    combination: str = "mixture"  # config.component_combination

    def combine(self, weights: torch.Tensor) -> torch.Tensor:
        """The final logits from the components under `weights` (the gate's, or them detached)."""
        return COMPONENT_COMBINATIONS[self.combination](weights, self)


def product_of_experts(
    expert_logits: torch.Tensor, available: torch.Tensor, problem_type: str | None = None
) -> torch.Tensor:
    """log prod_e p_e(y | .) up to a per-sample constant, as logits of the problem type: for classes the sum of the
    experts' log-probabilities (softmax renormalises), for multi-label the sum of their log-odds, for a regression
    the mean of their predictions (`problem_types_dmil.combine_experts`). `expert_logits` is `(B, E, C)`, `available`
    `(B, E)` bool; an unavailable expert contributes nothing (its factor is 1)."""
    problem_type = problem_type or infer_problem_type(expert_logits.shape[-1])
    return combine_experts(expert_logits, problem_type, dim=1, available=available)


def mixture_combination(weights: torch.Tensor, inputs: GateInputs) -> torch.Tensor:
    """`"mixture"` (reference): sum_c g_c logits_c. This already is the gated product of the component experts:
    sum_c g_c log p_c differs from it by sum_c g_c logsumexp(logits_c), a per-sample constant, so the two have the
    same softmax, the same CE and the same argmax (`tests/model/test_modeling.py`)."""
    return (weights.unsqueeze(-1) * inputs.component_logits.float()).sum(dim=1)


def product_combination(weights: torch.Tensor, inputs: GateInputs) -> torch.Tensor:
    """`"product"`: I2M2's combination on DMIL's components, sum_c log p_c over the available components, every
    component with weight 1; the gate still gives each sample's interaction weights but does not weigh the
    prediction."""
    return product_of_experts(inputs.component_logits, inputs.available, inputs.problem_type)


def mixture_x_unimodal_combination(weights: torch.Tensor, inputs: GateInputs) -> torch.Tensor:
    """`"mixture_x_unimodal"`: I2M2 with DMIL's gated mixture as the inter-modality expert and the level-1 unimodal
    heads p(y | M_m) as the intra-modality experts: log p_mixture + sum_m log p(y | M_m) over the modalities present.
    Two agreeing modalities sharpen each other (R), and a flat unimodal head leaves the sample to the mixture."""
    mixture = mixture_combination(weights, inputs)
    experts = torch.cat([mixture.unsqueeze(1), inputs.modality_logits], dim=1)
    available = torch.cat([torch.ones_like(inputs.present[:, :1]), inputs.present], dim=1)
    return product_of_experts(experts, available, inputs.problem_type)


COMPONENT_COMBINATIONS = {
    "mixture": mixture_combination,
    "product": product_combination,
    "mixture_x_unimodal": mixture_x_unimodal_combination,
}


def mixture_gate_objective(inputs: GateInputs, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`"mixture"` (reference): the gate learns only through the CE of the gate-weighted logits. That CE rewards
    whichever component is most expressive, so an expressive synergy head takes every sample."""
    return inputs.combine(inputs.weights), {}


def composition_gate_objective(
    inputs: GateInputs, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`"composition"` (default): the gate is trained to predict the sample's interaction composition
    (`interaction_composition`, a cross-entropy to its soft target, weighted by how informative the sample is),
    and the final CE sees the gate's weights detached, so it trains the components, not the routing. The gate
    then says which kind of information a sample rests on instead of which head is strongest."""
    logits = inputs.combine(inputs.weights.detach())
    target, informative = interaction_composition(
        inputs.modality_logits, inputs.component_logits[:, -1], labels, inputs.present, inputs.problem_type
    )
    log_weights = inputs.weights.clamp(min=1e-12).log().masked_fill(~inputs.available, 0.0)
    cross_entropy = -(target * log_weights).sum(dim=1)
    term = (cross_entropy * informative).sum() / informative.sum().clamp(min=1.0)
    return logits, {"gate_composition": term}


GATE_OBJECTIVES = {"mixture": mixture_gate_objective, "composition": composition_gate_objective}



# --------------------------------------------------------------------------------------------------------------
# The heads: what each paradigm does with the projected features of every modality.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ModalityFeatures:
    """What the encoders hand to a head: the projected features Z_m `(batch, width of m)` of every modality (zeros
    for a modality absent from the whole batch), which modalities each sample has `(batch, K)`, and whether that is
    known statically to be all of them (no `modality_mask`, every modality given), which lets DMIL skip its
    missing-modality fallback without a data-dependent branch."""

    z: dict[str, torch.Tensor]
    present: torch.Tensor
    all_given: bool = False


def joint_input(features: ModalityFeatures, modalities: list[str]) -> torch.Tensor:
    """The concatenated features of every modality, a missing modality's zeroed."""
    z, present = features.z, features.present
    return torch.cat([z[m] * present[:, k : k + 1].to(z[m].dtype) for k, m in enumerate(modalities)], dim=-1)


def unimodal_terms(modality_logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor,
                   modalities: list[str], problem_type: str | None = None) -> dict[str, torch.Tensor]:
    """`ce_modality_<m>`: each unimodal head's label loss on the samples that have its modality."""
    return {
        f"ce_modality_{m}": masked_mean(
            task_loss(modality_logits[:, k], labels, problem_type=problem_type), present[:, k]
        )
        for k, m in enumerate(modalities)
    }


def present_mean(modality_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The mean of the unimodal logits `(B, K, C)` over the modalities each sample has."""
    weights = present.to(modality_logits.dtype).unsqueeze(-1)
    return (modality_logits * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class BaselineHead(nn.Module):
    """What the baselines share: the loss is the sum of the stage's terms, weighted by the paradigm's stage table
    (`stages_dmil.PARADIGM_STAGES`)."""

    def __init__(self, config: DMILConfig, widths: dict[str, int] | None = None):
        """`widths`: each modality's feature width (the model's `feature_widths`); `config.feature_dim` for all when
        not given."""
        super().__init__()
        self.config = config
        self.modalities = list(config.modalities)
        self.widths = {m: (widths or {}).get(m, config.feature_dim) for m in self.modalities}

    def weighted_loss(self, terms: dict[str, torch.Tensor], stage: int) -> torch.Tensor:
        weights = stage_term_weights(self.config, stage, terms)
        return sum(weight * terms[name] for name, weight in weights.items() if weight)


class JointHead(BaselineHead):
    """The joint-fusion baseline: an MLP (hidden width `config.baseline_hidden_dim`) on the concatenated features (a
    missing modality's are zeroed), one CE.

    A hidden layer matters: a linear head on a concatenation is a sum of per-modality scores, an ensemble in disguise
    that cannot represent synergy. Its widths matter too: with the features projected to `latent_dim` and a head that
    wide (release 0.1: a 32-wide bottleneck on the real-signal benchmark) it scored below the same model written
    plainly in PyTorch; its features and hidden layer are now `baseline_hidden_dim` wide (README, "Baselines").
    """

    def __init__(self, config: DMILConfig, widths: dict[str, int] | None = None):
        super().__init__(config, widths)
        self.joint_classifier = MLP(sum(self.widths.values()), config.baseline_hidden_dim, config.num_labels)

    def forward(self, features: ModalityFeatures, labels: torch.Tensor | None = None, stage: int = 3) -> DMILOutput:
        logits = self.joint_classifier(joint_input(features, self.modalities))
        loss = terms = None
        if labels is not None:
            terms = {"ce_final": task_loss(logits, labels, "mean", self.config.problem_type)}
            loss = self.weighted_loss(terms, stage)
        return DMILOutput(loss=loss, logits=logits, loss_terms=terms)


class EnsembleHead(BaselineHead):
    """The ensemble baseline: one MLP head per modality (hidden width `config.baseline_hidden_dim`), each with its own
    CE, logits averaged over the modalities each sample has."""

    def __init__(self, config: DMILConfig, widths: dict[str, int] | None = None):
        super().__init__(config, widths)
        hidden = config.baseline_hidden_dim
        self.ensemble_classifiers = nn.ModuleDict(
            {m: MLP(self.widths[m], hidden, config.num_labels) for m in self.modalities}
        )

    def forward(self, features: ModalityFeatures, labels: torch.Tensor | None = None, stage: int = 3) -> DMILOutput:
        z, present = features.z, features.present
        modality_logits = torch.stack([self.ensemble_classifiers[m](z[m]) for m in self.modalities], dim=1)
        logits = present_mean(modality_logits, present)
        loss = terms = None
        if labels is not None:
            # Each head has its own CE on its own modality: the sum trains K independent unimodal models.
            terms = unimodal_terms(modality_logits, labels, present, self.modalities, self.config.problem_type)
            loss = self.weighted_loss(terms, stage)
        return DMILOutput(loss=loss, logits=logits, modality_logits=modality_logits, loss_terms=terms)


class TwoStageHead(BaselineHead):
    """The two-stage baseline (`paradigm="two_stage"`): unimodal pretraining, then joint fine-tuning.

    Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023: a jointly trained model
    under-learns each modality's own features (modality competition); training every encoder on its modality alone
    first, then a joint head on their features, recovers them (the recipe behind their uni-modal teacher, UMT).
    Stage 1 trains the backbones, projections and one MLP head per modality (`unimodal_classifiers`), each with its
    own CE, as the ensemble does; stage 2 trains a joint MLP head (`joint_classifier`) on the concatenated features
    with everything fine-tuned, on one CE (`stages_dmil.PARADIGM_STAGES["two_stage"]`). In stage 1 the prediction is
    the mean of the unimodal heads; from stage 2 on (and by default) it is the joint head's. `modality_logits` are
    always the unimodal heads'.
    """

    def __init__(self, config: DMILConfig, widths: dict[str, int] | None = None):
        super().__init__(config, widths)
        hidden, num_labels = config.baseline_hidden_dim, config.num_labels
        self.unimodal_classifiers = nn.ModuleDict(
            {m: MLP(self.widths[m], hidden, num_labels) for m in self.modalities}
        )
        self.joint_classifier = MLP(sum(self.widths.values()), hidden, num_labels)

    def forward(self, features: ModalityFeatures, labels: torch.Tensor | None = None, stage: int = 3) -> DMILOutput:
        z, present = features.z, features.present
        modality_logits = torch.stack([self.unimodal_classifiers[m](z[m]) for m in self.modalities], dim=1)
        terms = None
        if stage == 1:
            logits = present_mean(modality_logits, present)
            if labels is not None:
                terms = unimodal_terms(modality_logits, labels, present, self.modalities, self.config.problem_type)
        else:
            logits = self.joint_classifier(joint_input(features, self.modalities))
            if labels is not None:
                terms = {"ce_final": task_loss(logits, labels, "mean", self.config.problem_type)}
        loss = self.weighted_loss(terms, stage) if terms else None
        return DMILOutput(loss=loss, logits=logits, modality_logits=modality_logits, loss_terms=terms)


def drop_one_modality(present: torch.Tensor, probability: float) -> torch.Tensor:
    """`present` with one modality masked out of each sample with the given probability: one chosen at random among
    those the sample has, and only where it has at least two (`config.modality_dropout`). Training on such samples
    asks every component and the gate to cope with a modality that says nothing, which the ensemble's independent
    heads get for free."""
    return present & ~one_present_modality(present, probability)


def one_present_modality(present: torch.Tensor, probability: float) -> torch.Tensor:
    """`(B, K)` bool: for each sample with at least two modalities, with the given probability, one of them chosen
    at random among those it has; nothing elsewhere."""
    has_two = present.sum(dim=1, keepdim=True) >= 2
    hit = (torch.rand(present.shape[0], 1, device=present.device) < probability) & has_two
    # A random present modality: the argmax of uniform noise over the present columns.
    scores = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
    return F.one_hot(scores.argmax(dim=1), present.shape[1]).bool() & hit


def corrupt_one_modality(
    z: dict[str, torch.Tensor], present: torch.Tensor, probability: float, modalities: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`z` with one modality of some samples (`one_present_modality`) replaced by Gaussian noise at that modality's
    per-feature batch mean and standard deviation (`config.modality_corruption`), and the `(B, K)` mask of what was
    replaced. The noise has the scale of real features and none of their content: a broken sensor, not a missing
    one."""
    corrupted = one_present_modality(present, probability)
    out = {}
    for k, m in enumerate(modalities):
        features = z[m]
        stats = features.detach()
        noise = stats.mean(0) + stats.std(0, unbiased=False) * torch.randn_like(features)
        out[m] = torch.where(corrupted[:, k : k + 1], noise, features)
    return out, corrupted


class I2M2Head(BaselineHead):
    """The I2M2 baseline (Madaan, Makino, Chopra, Cho, "Jointly Modeling Inter- & Intra-Modality Dependencies for
    Multi-modal Learning", NeurIPS 2024): one intra-modality expert p(y | x_m) per modality (an MLP on Z_m) and one
    inter-modality expert p(y | x_1..x_K) (an MLP on the concatenated Z's, a missing modality's zeroed), combined as a
    product of experts, log p(y | x) = sum_e log p_e(y | .) + const, and trained end to end with one cross-entropy on
    the combined prediction (the paper's objective; it trains no expert with a loss of its own). A missing
    modality's intra expert leaves the product. The paper also reports initialising the experts from separately
    trained models; at an equal step budget that pretraining is not done here.

    `modality_logits` are the intra experts; `component_logits` is not set (I2M2 has no R/U/S components)."""

    def __init__(self, config: DMILConfig, widths: dict[str, int] | None = None):
        super().__init__(config, widths)
        hidden, num_labels = config.baseline_hidden_dim, config.num_labels
        self.intra_experts = nn.ModuleDict({m: MLP(self.widths[m], hidden, num_labels) for m in self.modalities})
        self.inter_expert = MLP(sum(self.widths.values()), hidden, num_labels)

    def forward(self, features: ModalityFeatures, labels: torch.Tensor | None = None, stage: int = 3) -> DMILOutput:
        z, present = features.z, features.present
        modality_logits = torch.stack([self.intra_experts[m](z[m]) for m in self.modalities], dim=1)
        inter_logits = self.inter_expert(joint_input(features, self.modalities))
        experts = torch.cat([modality_logits, inter_logits.unsqueeze(1)], dim=1)
        available = torch.cat([present, torch.ones_like(present[:, :1])], dim=1)
        problem_type = resolve_problem_type(self.config, labels)
        logits = product_of_experts(experts, available, problem_type)
        loss = terms = None
        if labels is not None:
            terms = {"ce_final": task_loss(logits, labels, "mean", problem_type)}
            loss = self.weighted_loss(terms, stage)
        return DMILOutput(loss=loss, logits=logits, modality_logits=modality_logits, loss_terms=terms)


class DMILHead(nn.Module):
    """DMIL (paper Fig. 2): level 1 splits each Z_m into M_m (usable alone) and N_m (the rest); level 2 splits the
    M's into redundancy R and uniquenesses U_m; a fusion of the synergy inputs and their pairwise products gives
    synergy S; a per-sample gate weighs the heads of R, U_1..U_K and S. The stage decides which losses count
    (`stages_dmil.STAGE_PLANS`).

    Example (a head on its own, on fixed features; the model builds it as `model.head`):

    ```python
    >>> import torch
    >>> from dmil_hf import DMILConfig, Modality
    >>> from dmil_hf.models.dmil.heads_dmil import HEADS, ModalityFeatures
    >>> config = DMILConfig(modality_table=[Modality("a", "features"), Modality("b", "features")], num_labels=3,
    ...                     latent_dim=8)
    >>> head = HEADS["dmil"](config).eval()
    >>> z = {"a": torch.randn(2, 8), "b": torch.randn(2, 8)}
    >>> out = head(ModalityFeatures(z, present=torch.tensor([[True, True], [True, False]])))
    >>> out.interaction_weights[1].tolist()[2]  # sample 1 lacks b: no uniqueness_b
    0.0
    ```
    """

    def __init__(self, config: DMILConfig, widths: dict[str, int] | None = None):
        # `widths` is every head's signature; DMIL's features are all `latent_dim` wide (the config refuses the
        # "identity" projection for it).
        super().__init__()
        self.config = config
        self.modalities = list(config.modalities)
        dim, num_labels = config.latent_dim, config.num_labels
        self.intra_decomposition = nn.ModuleDict(
            {m: IntraModalDecomposition(dim, num_labels, config.logvar_clamp, config.level1_initial_logvar) for m in self.modalities}
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

    def forward(self, features: ModalityFeatures, labels: torch.Tensor | None = None, stage: int = 3) -> DMILOutput:
        config, modalities = self.config, self.modalities
        problem_type = config.problem_type
        z, present, all_given = features.z, features.present, features.all_given
        with_losses = labels is not None
        if config.modality_dropout and self.training and with_losses and stage in (2, 3):
            present, all_given = drop_one_modality(present, config.modality_dropout), False
        # Where a modality is corrupted its level-1 losses skip the sample (there is no label in noise to learn).
        level1_mask = present
        if config.modality_corruption and self.training and with_losses and stage in (2, 3):
            z, corrupted = corrupt_one_modality(z, present, config.modality_corruption, modalities)
            level1_mask = present & ~corrupted
        # Level 1's KL and reconstruction count in stages 1 and 3; its unimodal CEs also in stage 2 under
        # stage2_modality_weight (the stage table). What a stage does not count is not computed.
        level1_losses = with_losses and stage in (1, 3)
        unimodal_ces = level1_losses or (with_losses and stage == 2 and bool(config.stage2_modality_weight))
        # N is sampled whenever the head trains, even in stage 2 where level 1 is frozen and held in eval mode.
        level1 = {
            m: self.intra_decomposition[m](z[m], with_losses=level1_losses, sample_n=self.training) for m in modalities
        }
        modality_logits = torch.stack([level1[m].logits for m in modalities], dim=1)
        present_f = present.to(modality_logits.dtype)
        synergy_ok = present.sum(dim=1) >= 2
        synergy_source = {
            "n": lambda: {m: level1[m].n.sample for m in modalities},
            "z": lambda: z,
            # Synergy fuses what the backbones learned without pulling them jointly (no modality competition).
            "z_detached": lambda: {m: z[m].detach() for m in modalities},
        }[config.synergy_input]()
        synergy_inputs = [synergy_source[m] * present_f[:, k : k + 1] for k, m in enumerate(modalities)]

        terms: dict[str, torch.Tensor] = {}
        for k, m in enumerate(modalities):
            p, out = level1_mask[:, k], level1[m]
            if unimodal_ces:
                terms[f"ce_modality_{m}"] = masked_mean(task_loss(out.logits, labels, problem_type=problem_type), p)
            if level1_losses:
                terms[f"kl_M_{m}"] = masked_mean(kl_per_dim(out.m.mu, out.m.logvar), p)
                terms[f"kl_N_{m}"] = masked_mean(kl_per_dim(out.n.mu, out.n.logvar), p)
                # The target is detached: reconstruction asks M and N to keep what Z holds, not Z to shrink.
                rec = (out.reconstruction.float() - z[m].detach().float()).pow(2).mean(-1)
                terms[f"rec_Z_{m}"] = masked_mean(rec, p)

        if stage == 1:
            # No fusion exists yet: the stage-1 prediction is the mean of the unimodal heads on the modalities present.
            logits = (modality_logits * present_f.unsqueeze(-1)).sum(1) / present_f.sum(1, keepdim=True).clamp(min=1.0)
            if with_losses and config.stage1_synergy_weight:
                synergy_logits = self.component_classifiers["synergy"](self.synergy_fusion(synergy_inputs))
                ce = task_loss(synergy_logits, labels, problem_type=problem_type)
                terms["ce_synergy"] = masked_mean(ce, synergy_ok)
            loss = self.weighted_loss(terms, stage) if with_losses else None
            return DMILOutput(loss=loss, logits=logits, modality_logits=modality_logits, loss_terms=terms or None)

        m_means = {m: level1[m].m.mu for m in modalities}
        level2 = self.consistency_decomposition(
            m_means, present, with_losses=with_losses, all_given=all_given,
            need_predictors=config.redundancy_readout != "joint",
        )
        synergy = self.synergy_fusion(synergy_inputs)
        components = [level2.r.sample, *[level2.uniqueness[m].sample for m in modalities], synergy]
        names = config.interaction_components
        redundancy_logits = REDUNDANCY_READOUTS[config.redundancy_readout](RedundancyReadoutInputs(
            self.component_classifiers[names[0]], level2, present, modality_logits, resolve_problem_type(config, labels)
        ))
        component_logits = torch.stack(
            [redundancy_logits, *[self.component_classifiers[name](c) for name, c in zip(names[1:], components[1:])]],
            dim=1,
        )
        available = torch.cat([torch.ones_like(present[:, :1]), present, synergy_ok.unsqueeze(1)], dim=1)
        # An unavailable component is zeroed in the gate's input too: otherwise the U_m of a masked-out modality
        # (computed from whatever its input held) would still steer the weights of the components present.
        gate_input = [c * available[:, k : k + 1].to(c.dtype) for k, c in enumerate(components)]
        if config.gate_reads_predictions:
            # What the gate reads of a prediction depends on the problem type: log-probabilities of the classes, of
            # each label being on, or the predicted values.
            read = PROBLEM_TYPES[resolve_problem_type(config)].gate_features(component_logits.detach())
            read = read.to(gate_input[0].dtype)
            gate_input.append((read * available.unsqueeze(-1).to(read.dtype)).flatten(1))
        weights = self.interaction_gate(gate_input, available)
        gate = GateInputs(
            weights, component_logits, modality_logits, available, present, problem_type=problem_type,
            combination=config.component_combination,
        )
        if not with_losses:
            # Every gate objective predicts with the same combination; they differ only in what trains the gate.
            logits = gate.combine(weights)
        else:
            logits, gate_terms = GATE_OBJECTIVES[config.gate_objective](gate, labels)
            terms["ce_final"] = task_loss(logits, labels, "mean", problem_type)
            terms.update(gate_terms)
            terms.update(self._consistency_terms(level2, m_means, component_logits, present, synergy_ok, labels))
        loss = self.weighted_loss(terms, stage) if with_losses else None
        return DMILOutput(
            loss=loss, logits=logits, interaction_weights=weights, component_logits=component_logits,
            modality_logits=modality_logits, loss_terms=terms or None,
        )

    def _consistency_terms(
        self, level2: ConsistencyLatents, m_means: dict[str, torch.Tensor], component_logits: torch.Tensor,
        present: torch.Tensor, synergy_ok: torch.Tensor, labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The component CEs and level 2's KL, alignment and reconstruction terms."""
        def ce(index: int) -> torch.Tensor:
            return task_loss(component_logits[:, index], labels, problem_type=self.config.problem_type)

        joint_ok = level2.all_present
        terms = {"ce_redundancy": ce(0).mean()}
        # Only the joint posterior q(R | M_1..M_K) is regularised here; a sample lacking a modality takes R from the
        # predictors, whose own pull is the alignment term.
        terms["kl_R"] = masked_mean(kl_per_dim(level2.r.mu, level2.r.logvar), joint_ok)
        for k, m in enumerate(self.modalities):
            p = present[:, k]
            terms[f"ce_uniqueness_{m}"] = masked_mean(ce(1 + k), p)
            u, v = level2.uniqueness[m], level2.predictors[m]
            terms[f"kl_U_{m}"] = masked_mean(kl_per_dim(u.mu, u.logvar), p)
            # Alignment only where the joint posterior exists (every modality present).
            terms[f"align_R_{m}"] = masked_mean(kl_per_dim(level2.r.mu, level2.r.logvar, v.mu, v.logvar), joint_ok)
            rec = (level2.reconstructions[m].float() - m_means[m].detach().float()).pow(2).mean(-1)
            terms[f"rec_M_{m}"] = masked_mean(rec, p)
        terms["ce_synergy"] = masked_mean(ce(len(self.modalities) + 1), synergy_ok)
        return terms

    def weighted_loss(self, terms: dict[str, torch.Tensor], stage: int) -> torch.Tensor:
        """The stage's loss: each term it counts times its weight from the stage table (`stages_dmil.STAGE_PLANS`)."""
        weights = stage_term_weights(self.config, stage, terms)
        return sum(weight * terms[name] for name, weight in weights.items() if weight)


# `config.paradigm` -> the head that reads the modalities' features.
HEADS: dict[str, type[nn.Module]] = {
    "dmil": DMILHead, "joint": JointHead, "ensemble": EnsembleHead, "two_stage": TwoStageHead, "i2m2": I2M2Head,
}
