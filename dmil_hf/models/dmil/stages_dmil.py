"""The stage tables: per paradigm and training stage, which modules train and which loss terms count with which
weights.

This is the single place that says it. The model's loss (`DMILForMultimodalClassification`), the trainer's stages and
freezing (`DMILTrainer`, `prepare_model_for_stage`) and the model card all read `PARADIGM_STAGES` (DMIL's own table is
`STAGE_PLANS`); nothing else restates it. A paradigm the table does not list trains everything in one stage.

A loss term's weight is the product of the config fields it names (none: weight 1). A field may hold one float or a
dict per modality (the reference code weighs stage 1 per modality); for a per-modality term such as `kl_M_audio` the
modality's entry is used: `per_modality_value` reads it by the modality's name, then its kind, then a `default` key,
and raises when none is there (a missing modality is never silently weighted 0). A term whose weight is 0 is not
computed into the loss, and a module listed only under such terms does not train.

    >>> from dmil_hf.models.dmil.stages_dmil import STAGE_PLANS
    >>> STAGE_PLANS[2].trains
    ('consistency_decomposition', 'synergy_fusion', 'component_classifiers', 'interaction_gate')
    >>> from dmil_hf.models.dmil.stages_dmil import stage_plans
    >>> [plan.title for plan in stage_plans("two_stage").values()]
    ['unimodal pretraining', 'joint fine-tuning']
"""

from __future__ import annotations

from dataclasses import dataclass

EVERYTHING = "*"


@dataclass(frozen=True)
class LossTerm:
    """One loss term of a stage: a term name, or a per-modality family `name_*`, and the weight fields it takes."""

    name: str
    weights: tuple[str, ...] = ()
    # Modules that train in this stage only because this term is on (its weight is not 0).
    modules: tuple[str, ...] = ()
    # (config field, value) pairs under which the model computes this term at all.
    only_if: tuple[tuple[str, object], ...] = ()
    # The earlier stage whose peak learning rate `modules` keep here (None: this stage's own): modules that an
    # earlier stage trained at its rate (a pretrained backbone's) must not jump to the rate set for fresh heads.
    modules_keep_rate_of: int | None = None

    def applies(self, config) -> bool:
        return all(getattr(config, field) == value for field, value in self.only_if)

    def matches(self, term: str) -> str | None:
        """The modality suffix (or "" for a plain term) when `term` belongs to this entry, else None."""
        if self.name.endswith("_*"):
            prefix = self.name[:-1]
            return term[len(prefix):] if term.startswith(prefix) else None
        return "" if term == self.name else None


@dataclass(frozen=True)
class StagePlan:
    """One training stage: its number and title, the top-level modules that train (`"*"`: every module), the loss
    terms it counts, and whether its backbones train the way `finetune_method` says (`"lora"`: through adapters;
    otherwise, and in every stage without this flag, fully)."""

    stage: int
    title: str
    trains: tuple[str, ...]
    terms: tuple[LossTerm, ...]
    finetune: bool = False

    def term_weight(self, config, term: str) -> float | None:
        """The weight of a loss term in this stage, or None when the stage does not count it."""
        for entry in self.terms:
            modality = entry.matches(term)
            if modality is None:
                continue
            weight = 1.0
            for field in entry.weights:
                value = getattr(config, field)
                if isinstance(value, dict):
                    value = per_modality_value(field, value, modality, _kind_of(config, modality))
                weight *= float(value)
            return weight
        return None

    def trained_modules(self, config) -> tuple[str, ...]:
        """Top-level modules that train in this stage under `config` (`("*",)`: every module)."""
        extra = [
            module
            for entry in self.terms
            if entry.modules and entry.applies(config) and _any_weight(config, entry)
            for module in entry.modules
        ]
        return tuple(dict.fromkeys((*self.trains, *extra)))

    def kept_learning_rates(self, config) -> dict[str, int]:
        """Module -> the earlier stage whose learning rate it trains at in this stage (only the modules that do not
        train at this stage's own rate under `config`)."""
        return {
            module: entry.modules_keep_rate_of
            for entry in self.terms
            if entry.modules_keep_rate_of is not None and entry.applies(config) and _any_weight(config, entry)
            for module in entry.modules
        }

    def describe_weights(self, config) -> list[tuple[str, str]]:
        """(term, weight as written) pairs of the terms this stage counts under `config` (applicable, weight not 0),
        for the model card and the docs."""
        rows = []
        for entry in self.terms:
            if not entry.applies(config) or not _any_weight(config, entry):
                continue
            parts = []
            for field in entry.weights:
                value = getattr(config, field)
                parts.append(f"{field}={value}" if not isinstance(value, dict) else f"{field}={dict(value)}")
            rows.append((entry.name, " x ".join(parts) or "1"))
        return rows


# Keys of a per-modality dict besides modality names and kinds: the image kind's three-slot name, and the fallback.
IMAGE_SLOT_NAME, DEFAULT_KEY = "vision", "default"


def per_modality_value(field: str, value: dict, modality: str, kind: str | None) -> float:
    """The entry of a per-modality dict (`field` of the config) for one modality: by its name, then its kind (the
    image kind also as `"vision"`, its three-slot name), then `"default"`; a `ValueError` naming both if none."""
    keys = [modality, *([kind] if kind else []), *([IMAGE_SLOT_NAME] if kind == "image" else []), DEFAULT_KEY]
    for key in keys:
        if key in value:
            return float(value[key])
    raise ValueError(
        f"{field} gives no value for modality {modality!r} (kind {kind!r}): it has keys {sorted(value)}; add the "
        f"modality's name, its kind or a {DEFAULT_KEY!r} key"
    )


def _kind_of(config, modality: str) -> str | None:
    return next((row["kind"] for row in config.modality_table if row["name"] == modality), None)


def _any_weight(config, entry: LossTerm) -> bool:
    for field in entry.weights:
        value = getattr(config, field)
        values = value.values() if isinstance(value, dict) else [value]
        if not any(float(v) for v in values):
            return False
    return True


_COMPOSITION_GATE = (("gate_objective", "composition"),)
_LEVEL1 = (
    LossTerm("kl_M_*", ("stage1_kl_weight",)),
    LossTerm("kl_N_*", ("stage1_kl_weight",)),
    LossTerm("rec_Z_*", ("stage1_reconstruction_weight",)),
)

STAGE_PLANS: dict[int, StagePlan] = {
    1: StagePlan(
        1,
        "decomposition pretraining, intra-modal",
        trains=("backbones", "projections", "intra_decomposition"),
        terms=(
            LossTerm("ce_modality_*"),
            *_LEVEL1,
            # Our default: synergy learns from N while the backbones still train (the reference starts it in stage 2,
            # on a frozen N that no label loss has shaped).
            LossTerm("ce_synergy", ("stage1_synergy_weight",), modules=("synergy_fusion", "component_classifiers")),
        ),
    ),
    2: StagePlan(
        2,
        "decomposition pretraining, consistency",
        trains=("consistency_decomposition", "synergy_fusion", "component_classifiers", "interaction_gate"),
        terms=(
            LossTerm("ce_final"),
            LossTerm("ce_redundancy", ("stage2_component_weight",)),
            LossTerm("ce_uniqueness_*", ("stage2_component_weight",)),
            LossTerm("ce_synergy", ("stage2_component_weight",)),
            LossTerm("kl_R", ("kl_weight",)),
            LossTerm("kl_U_*", ("kl_weight",)),
            LossTerm("align_R_*", ("kl_weight", "alignment_weight")),
            LossTerm("rec_M_*", ("stage2_reconstruction_weight",)),
            LossTerm("gate_composition", ("gate_composition_weight",), only_if=_COMPOSITION_GATE),
            # The unimodal heads keep training the backbones through stage 2 (a backbone that is slow to take off
            # then gets stage 2's steps too, instead of waiting frozen for stage 3), at stage 1's learning rate.
            LossTerm("ce_modality_*", ("stage2_modality_weight",),
                     modules=("backbones", "projections", "intra_decomposition"), modules_keep_rate_of=1),
        ),
    ),
    3: StagePlan(
        3,
        "interaction fine-tuning",
        trains=(EVERYTHING,),
        finetune=True,
        terms=(
            LossTerm("ce_final"),
            LossTerm("ce_modality_*", ("stage3_modality_weight",)),
            LossTerm("kl_M_*", ("kl_weight",)),
            LossTerm("kl_N_*", ("kl_weight",)),
            LossTerm("rec_Z_*", ("stage3_reconstruction_z_weight",)),
            LossTerm("ce_redundancy", ("stage3_component_weight",)),
            LossTerm("ce_uniqueness_*", ("stage3_component_weight",)),
            LossTerm("ce_synergy", ("stage3_component_weight",)),
            LossTerm("kl_R", ("kl_weight", "stage3_consistency_kl_scale")),
            LossTerm("kl_U_*", ("kl_weight", "stage3_consistency_kl_scale")),
            LossTerm("align_R_*", ("kl_weight", "stage3_consistency_kl_scale", "alignment_weight")),
            LossTerm("rec_M_*", ("stage3_reconstruction_m_weight",)),
            LossTerm("gate_composition", ("gate_composition_weight",), only_if=_COMPOSITION_GATE),
        ),
    ),
}

# The baselines' stages (heads_dmil: JointHead, EnsembleHead, TwoStageHead). Their backbones train fully in every
# stage, whatever finetune_method says, except two_stage's fine-tuning stage, which is the counterpart of DMIL's stage 3.
_SINGLE_STAGE = {1: StagePlan(1, "training", trains=(EVERYTHING,), terms=())}
PARADIGM_STAGES: dict[str, dict[int, StagePlan]] = {
    "dmil": STAGE_PLANS,
    "joint": {1: StagePlan(1, "joint training", trains=(EVERYTHING,), terms=(LossTerm("ce_final"),))},
    "ensemble": {1: StagePlan(1, "unimodal training", trains=(EVERYTHING,), terms=(LossTerm("ce_modality_*"),))},
    # Madaan et al. (NeurIPS 2024): the experts train end to end through the one loss of their product.
    "i2m2": {1: StagePlan(1, "joint training of the experts", trains=(EVERYTHING,), terms=(LossTerm("ce_final"),))},
    # Du et al. (ICML 2023): the encoders first learn their modality alone (each with its own head and CE), then a
    # joint head on their concatenated features trains with everything fine-tuned.
    "two_stage": {
        1: StagePlan(1, "unimodal pretraining", trains=("backbones", "projections", "unimodal_classifiers"),
                     terms=(LossTerm("ce_modality_*"),)),
        2: StagePlan(2, "joint fine-tuning", trains=(EVERYTHING,), terms=(LossTerm("ce_final"),), finetune=True),
    },
}
# Every stage number any paradigm has (the model's `stage` argument takes these).
STAGES = tuple(sorted({k for plans in PARADIGM_STAGES.values() for k in plans}))
# Every config field that weighs a loss term in some stage (the config checks each is a finite weight >= 0).
WEIGHT_FIELDS = tuple(sorted({
    field for plans in PARADIGM_STAGES.values() for plan in plans.values() for term in plan.terms
    for field in term.weights
}))


def stage_plans(paradigm: str) -> dict[int, StagePlan]:
    """The stages of a paradigm, by number (one stage that trains everything for a paradigm the table lacks)."""
    return PARADIGM_STAGES.get(paradigm, _SINGLE_STAGE)


def stage_plan(config, stage: int) -> StagePlan:
    """The plan of `stage` for `config.paradigm`; a stage past the paradigm's last is its last (the model's default
    stage, 3, means the finished model: a baseline's only stage, two_stage's joint fine-tuning)."""
    plans = stage_plans(config.paradigm)
    return plans[stage] if stage in plans else plans[max(plans)]


def stage_term_weights(config, stage: int, terms) -> dict[str, float]:
    """Weight of each of `terms` (names) in `stage`; terms the stage does not count are left out."""
    plan = stage_plan(config, stage)
    weights = {}
    for name in terms:
        weight = plan.term_weight(config, name)
        if weight is not None:
            weights[name] = weight
    return weights
