"""DMIL's method mechanisms: the stage table, the reference preset, the swappable variants, consistent N sampling,
presence masking of kl_R, the interaction-composition estimate and the composition gate. Accuracy on the benchmarks
is measured by `benchmarks/`, not asserted here."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmil_hf import DMILConfig, DMILForMultimodalClassification, Modality
from dmil_hf.models.dmil.configuration_dmil import REFERENCE_PRESET
from dmil_hf.models.dmil.heads_dmil import HEADS, GateInputs, ModalityFeatures, corrupt_one_modality, drop_one_modality
from dmil_hf.models.dmil.modeling_dmil import (
    MLPSynergyFusion,
    SynergyFusion,
    interaction_composition,
)
from dmil_hf.models.dmil.stages_dmil import STAGE_PLANS
from dmil_hf.models.dmil.modalities_dmil import KINDS
from dmil_hf.testing_utils import random_inputs, tiny_audio_config, tiny_backbone_config, tiny_vision_config
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.training.stages import prepare_model_for_stage

TEXT_VISION = ("text", "vision")


def _trained(model):
    return sorted({name.removeprefix("head.").split(".")[0] for name, p in model.named_parameters() if p.requires_grad})


# ------------------------------------------------------------------------------------------- the stage table


def test_stage_table_drives_the_trainers_freezing():
    default = DMILForMultimodalClassification(make_config(TEXT_VISION, stage1_synergy_weight=1.0))
    reference = DMILForMultimodalClassification(DMILConfig.reference(**_backbones(make_config(TEXT_VISION))))
    stage1 = ["backbones", "intra_decomposition", "projections"]
    prepare_model_for_stage(reference, 1, "full")
    assert _trained(reference) == stage1
    # With stage1_synergy_weight > 0, synergy trains from stage 1 on (its CE counts there).
    prepare_model_for_stage(default, 1, "full")
    assert _trained(default) == sorted([*stage1, "component_classifiers", "synergy_fusion"])
    for model in (default, reference):
        prepare_model_for_stage(model, 2, "full")
        # The default's encoders keep training through stage 2 on the unimodal CEs (stage2_modality_weight).
        encoders = stage1 if model is default else []
        assert _trained(model) == sorted([*STAGE_PLANS[2].trains, *encoders])
        prepare_model_for_stage(model, 3, "full")
        assert all(p.requires_grad for p in model.parameters())


def test_stage_table_weights_per_modality_and_zero_weights_leave_modules_frozen():
    config = make_config(TEXT_VISION, stage1_kl_weight={"text": 0.5, "vision": 0.25}, stage1_synergy_weight=0.0)
    plan = STAGE_PLANS[1]
    assert plan.term_weight(config, "kl_M_text") == 0.5 and plan.term_weight(config, "kl_N_vision") == 0.25
    assert plan.term_weight(config, "ce_modality_text") == 1.0
    assert plan.term_weight(config, "ce_final") is None  # stage 1 has no fused prediction
    assert "synergy_fusion" not in plan.trained_modules(config)
    assert STAGE_PLANS[3].term_weight(config, "align_R_text") == pytest.approx(
        config.kl_weight * config.stage3_consistency_kl_scale * config.alignment_weight
    )
    with pytest.raises(ValueError, match="stage1_kl_weight"):
        make_config(TEXT_VISION, stage1_kl_weight={"video": 1.0})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_reference_preset_weighs_stage_1_for_every_kind_of_modality(kind):
    # A row of any kind under any name gets the reference's stage-1 weights (audio its own, every other kind the
    # visual ones), never a silent 0: the preset's dicts once had only text/vision/audio keys.
    other = "features" if kind == "audio" else "audio"
    rows = [Modality(f"my_{kind}", kind, tiny_backbone_config(KINDS[kind].default_model_type)[1]),
            Modality(f"my_{other}", other, tiny_backbone_config(KINDS[other].default_model_type)[1])]
    config = DMILConfig.reference(modality_table=rows, num_labels=3, latent_dim=16)
    kl, rec = (0.04, 0.01) if kind == "audio" else (0.008, 0.002)
    assert STAGE_PLANS[1].term_weight(config, f"kl_M_my_{kind}") == kl
    assert STAGE_PLANS[1].term_weight(config, f"rec_Z_my_{kind}") == rec
    assert config.stage1_kl_weight[f"my_{kind}"] == kl  # stored resolved, one entry per modality


def test_a_per_modality_dict_resolves_by_name_then_kind_then_default_or_raises(caplog):
    rows = [Modality("rgb", "video", tiny_vision_config()), Modality("flow", "video", tiny_vision_config()),
            Modality("snd", "audio", tiny_audio_config())]
    config = DMILConfig(modality_table=rows, stage1_reconstruction_weight={"rgb": 0.3, "video": 0.2, "default": 0.1})
    assert config.stage1_reconstruction_weight == {"rgb": 0.3, "flow": 0.2, "snd": 0.1}
    assert [STAGE_PLANS[1].term_weight(config, f"rec_Z_{m}") for m in ("rgb", "flow", "snd")] == [0.3, 0.2, 0.1]
    assert DMILConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    # A modality that no key covers is an error at construction, naming the field and the modality.
    with pytest.raises(ValueError, match=r"stage1_kl_weight gives no value for modality 'snd' \(kind 'audio'\)"):
        DMILConfig(modality_table=rows, stage1_kl_weight={"video": 0.5})
    with pytest.raises(ValueError, match="stage1_kl_weight .* got keys \\['vidoe'\\]"):  # a typo is no key at all
        DMILConfig(modality_table=rows, stage1_kl_weight={"vidoe": 0.5, "default": 0.1})
    # A config saved when a missing modality silently weighed 0 loads with that 0 written out, and says so.
    saved = {**config.to_dict(), "stage1_kl_weight": {"text": 0.008, "vision": 0.008, "audio": 0.04}}
    with caplog.at_level("WARNING"):
        loaded = DMILConfig.from_dict(saved)
    assert loaded.stage1_kl_weight == {"rgb": 0.0, "flow": 0.0, "snd": 0.04} and "['rgb', 'flow']" in caplog.text


def _backbones(config):
    return {f"{m}_config": config.backbone_config(m) for m in config.modalities}


# ------------------------------------------------------------------------------------------- presets


def test_reference_preset_values():
    # bjlfzs/DMIL (dmil-method.md §3-4): lamb 0.2 x internal 0.1; stage-1 weights per modality; 0.5 / 0.8 CE weights.
    assert REFERENCE_PRESET == {
        "latent_dim": 32, "synergy_fusion": "linear", "synergy_input": "n", "redundancy_readout": "joint", "gate_objective": "mixture",
        "stage1_synergy_weight": 0.0, "gate_composition_weight": 0.0, "gate_reads_predictions": False,
        "kl_weight": 0.02, "alignment_weight": 1.0,
        "stage1_kl_weight": {"audio": 0.04, "default": 0.008},
        "stage1_reconstruction_weight": {"audio": 0.01, "default": 0.002},
        "stage2_component_weight": 0.5, "stage2_reconstruction_weight": 0.005, "stage2_modality_weight": 0.0,
        "level1_initial_logvar": 0.0, "stage3_modality_weight": 0.5,
        "stage3_component_weight": 0.8, "stage3_consistency_kl_scale": 0.4, "stage3_reconstruction_z_weight": 0.003,
        "stage3_reconstruction_m_weight": 0.001,
    }
    config = DMILConfig.reference(**_backbones(make_config(TEXT_VISION)), num_labels=4)
    assert config.num_labels == 4 and config.synergy_fusion == "linear"
    assert DMILConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    model = DMILForMultimodalClassification(config)
    assert type(model.head.synergy_fusion) is SynergyFusion


def test_default_differs_from_reference_only_in_documented_fields():
    default, reference = DMILConfig(), DMILConfig.reference()
    differing = sorted(k for k in REFERENCE_PRESET if getattr(default, k) != getattr(reference, k))
    assert differing == sorted([
        "latent_dim", "synergy_fusion", "synergy_input", "gate_objective", "gate_composition_weight", "stage1_kl_weight",
        "stage1_reconstruction_weight", "stage2_modality_weight", "level1_initial_logvar",
    ])
    for name in differing:  # every departure has its reason in the config's docstring
        assert f"{name} (" in DMILConfig.__doc__


def test_configs_saved_before_the_variants_load_with_their_modules(tmp_path):
    config = make_config(TEXT_VISION)
    legacy = {k: v for k, v in config.to_dict().items() if k not in REFERENCE_PRESET or k in ("kl_weight", "latent_dim")}
    loaded = DMILConfig.from_dict(legacy)
    assert (loaded.synergy_fusion, loaded.redundancy_readout, loaded.gate_objective) == ("linear", "joint", "mixture")
    assert loaded.stage1_synergy_weight == 0.0 and loaded.stage1_kl_weight == config.kl_weight


def test_a_config_saved_before_issue_25s_fields_keeps_its_frozen_stage_2_and_its_level_1():
    new_fields = ("stage2_modality_weight", "level1_initial_logvar")
    saved = {k: v for k, v in make_config(TEXT_VISION).to_dict().items() if k not in new_fields}
    loaded = DMILConfig.from_dict(saved)
    assert (loaded.stage2_modality_weight, loaded.level1_initial_logvar) == (0.0, 0.0)
    assert DMILConfig.from_dict(saved, stage2_modality_weight=0.5).stage2_modality_weight == 0.5
    assert (DMILConfig().stage2_modality_weight, DMILConfig().level1_initial_logvar) == (1.0, -2.0)


@pytest.mark.parametrize("field, value", [("synergy_fusion", "bilinear"), ("gate_objective", "oracle"),
                                          ("redundancy_readout", "max"), ("synergy_input", "x"),
                                          ("component_combination", "stacking"), ("modality_dropout", 1.0),
                                          ("modality_dropout", -0.1)])
def test_unknown_variant_is_an_error(field, value):
    with pytest.raises(ValueError, match=field):
        make_config(TEXT_VISION, **{field: value})


# ------------------------------------------------------------------------------------------- variants


def test_mlp_fusion_learns_a_sum_modulo_c_that_the_linear_fusion_cannot():
    # y = (a + b) mod 3 from random embeddings of a and b: diagonal products plus one Linear are not enough.
    torch.manual_seed(0)
    c, d = 3, 8
    a, b = torch.arange(c).repeat_interleave(c), torch.arange(c).repeat(c)
    y = (a + b) % c
    emb_a, emb_b = torch.randn(c, d), torch.randn(c, d)
    x = [emb_a[a], emb_b[b]]

    def fit(fusion):
        head = nn.Linear(d, c)
        opt = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
        for _ in range(400):
            opt.zero_grad()
            F.cross_entropy(head(fusion(x)), y).backward()
            opt.step()
        with torch.no_grad():
            return (head(fusion(x)).argmax(-1) == y).float().mean().item()

    assert fit(MLPSynergyFusion(2, d)) == 1.0
    assert fit(SynergyFusion(2, d)) <= fit(MLPSynergyFusion(2, d))


def _gate_inputs(combination):
    # 2 modalities, 2 classes: components [R, U_a, U_b, S]; sample 1 lacks modality b (no U_b, no S).
    component_logits = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]],
                                     [[0.0, 1.0], [2.0, 0.0], [5.0, -5.0], [7.0, 0.0]]])
    modality_logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[4.0, 0.0], [-6.0, 6.0]]])
    available = torch.tensor([[True, True, True, True], [True, True, False, False]])
    present = torch.tensor([[True, True], [True, False]])
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.0, 0.0]])
    return GateInputs(weights, component_logits, modality_logits, available, present, combination=combination)


def test_component_combinations_pinned():
    lse = lambda *x: math.log(sum(math.exp(v) for v in x))  # noqa: E731
    mixture = _gate_inputs("mixture")
    # sum_c g_c logits_c: row 0 [0.1 + 0.9, 0.4], row 1 [1.0, 0.5].
    torch.testing.assert_close(mixture.combine(mixture.weights), torch.tensor([[1.0, 0.4], [1.0, 0.5]]))
    product = _gate_inputs("product")
    # sum of log-softmax over the available components (row 1: R and U_a only).
    row0 = [sum(c[k] - lse(*c) for c in ([1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0])) for k in range(2)]
    row1 = [sum(c[k] - lse(*c) for c in ([0.0, 1.0], [2.0, 0.0])) for k in range(2)]
    torch.testing.assert_close(product.combine(product.weights), torch.tensor([row0, row1]), rtol=0, atol=1e-6)
    both = _gate_inputs("mixture_x_unimodal")
    # log-softmax of the mixture plus the present unimodal heads' log-softmax (row 1: modality a only).
    row0 = [[1.0, 0.4][k] - lse(1.0, 0.4) + [0.0, 1.0][k] - lse(0.0, 1.0) + [1.0, 0.0][k] - lse(1.0, 0.0)
            for k in range(2)]
    row1 = [[1.0, 0.5][k] - lse(1.0, 0.5) + [4.0, 0.0][k] - lse(4.0, 0.0) for k in range(2)]
    torch.testing.assert_close(both.combine(both.weights), torch.tensor([row0, row1]), rtol=0, atol=1e-6)


def test_the_mixture_of_logits_is_the_gated_product_of_the_component_experts():
    """sum_c g_c logits_c and sum_c g_c log p_c differ by a per-sample constant: same softmax, CE and gradients. A
    'gated product' with convex gate weights would therefore change nothing; what I2M2's product changes is the
    weights (1 for every expert), which `"product"` and `"mixture_x_unimodal"` measure."""
    inputs = _gate_inputs("mixture")
    logits = inputs.component_logits.clone().requires_grad_(True)
    labels = torch.tensor([1, 0])
    mixture = (inputs.weights.unsqueeze(-1) * logits).sum(1)
    gated_product = (inputs.weights.unsqueeze(-1) * F.log_softmax(logits, -1)).sum(1)
    torch.testing.assert_close(mixture.softmax(-1), gated_product.softmax(-1))
    grad_mixture, = torch.autograd.grad(F.cross_entropy(mixture, labels), logits)
    grad_product, = torch.autograd.grad(F.cross_entropy(gated_product, labels), logits)
    torch.testing.assert_close(grad_mixture, grad_product)


def test_drop_one_modality_masks_exactly_one_present_modality_of_the_chosen_samples():
    torch.manual_seed(0)
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False]]).repeat(200, 1)
    dropped = drop_one_modality(present, 0.999999)
    assert not bool((dropped & ~present).any())  # never adds a modality
    lost = (present & ~dropped).sum(1)
    torch.testing.assert_close(lost, (present.sum(1) >= 2).long())  # one gone where two or more were, none otherwise
    # The modality dropped is chosen at random among those present.
    assert (present & ~dropped)[0::3].float().mean(0).min() > 0.2
    assert bool((drop_one_modality(present, 0.0) == present).all())
    half = drop_one_modality(present, 0.5)
    assert 0.4 < (present & ~half).any(1)[present.sum(1) >= 2].float().mean() < 0.6


def test_modality_dropout_acts_in_training_stages_2_and_3_only():
    base = make_config(TEXT_VISION)
    dropping = make_config(TEXT_VISION, modality_dropout=0.9)
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(base)
    other = DMILForMultimodalClassification(dropping)
    other.load_state_dict(model.state_dict())
    inputs = random_inputs(base, batch_size=8)
    with torch.no_grad():
        model.eval(), other.eval()
        torch.testing.assert_close(other(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
        model.train(), other.train()
        for stage, differs in ((1, False), (2, True), (3, True)):
            torch.manual_seed(1)
            a = model(**inputs, stage=stage)
            torch.manual_seed(1)
            b = other(**inputs, stage=stage)
            assert (not torch.equal(a.logits, b.logits)) == differs, stage
    # A dropped modality leaves the gate like a missing one: some training samples lose uniqueness_vision or S.
    torch.manual_seed(2)
    with torch.no_grad():
        weights = other(**inputs, stage=2).interaction_weights
    assert bool((weights == 0).any())


def test_per_modality_redundancy_readout_averages_the_predictor_logits():
    config = make_config(TEXT_VISION, redundancy_readout="per_modality")
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config)
    captured = {}
    model.head.consistency_decomposition.register_forward_hook(lambda m, i, out: captured.update(level2=out))
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs.items() if k != "labels"})
    head = model.head.component_classifiers["redundancy"]
    expected = torch.stack([head(captured["level2"].predictors[m].mu) for m in config.modalities]).mean(0)
    torch.testing.assert_close(out.component_logits[:, 0], expected)



def test_unimodal_product_redundancy_readout_is_the_product_of_the_present_unimodal_experts():
    config = make_config(TEXT_VISION, redundancy_readout="unimodal_product")
    head = HEADS["dmil"](config).eval()
    z = {m: torch.randn(3, config.latent_dim, generator=torch.Generator().manual_seed(k))
         for k, m in enumerate(config.modalities)}
    present = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        out = head(ModalityFeatures(z, present=present))
    log_p = out.modality_logits.log_softmax(-1)
    # Both present: the experts' log-probabilities add; one present: that expert alone.
    expected = torch.stack([log_p[0, 0] + log_p[0, 1], log_p[1, 0], log_p[2, 1]])
    torch.testing.assert_close(out.component_logits[:, 0].log_softmax(-1), expected.log_softmax(-1))

def test_synergy_input_z_reads_the_projected_features():
    config = make_config(TEXT_VISION, synergy_input="z")
    model = DMILForMultimodalClassification(config).eval()
    seen = []
    model.head.synergy_fusion.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    projected = []
    for m in config.modalities:
        model.projections[m].register_forward_hook(lambda mod, i, o: projected.append(o))
    with torch.no_grad():
        model(**{k: v for k, v in random_inputs(config).items() if k != "labels"})
    for fused, z in zip(seen[0], projected):
        torch.testing.assert_close(fused, z)


# ------------------------------------------------------------------------------------------- sampling and masks


def test_n_is_sampled_whenever_the_model_trains_even_with_level1_frozen():
    """Stage 2 holds level 1 in eval mode; N must still be sampled there, as in stage 3 (the reference does so)."""
    config = make_config(TEXT_VISION, synergy_fusion="linear", synergy_input="n")
    model = DMILForMultimodalClassification(config)
    inputs = random_inputs(config)
    seen = []
    model.head.synergy_fusion.register_forward_hook(lambda m, i, o: seen.append([n.clone() for n in i[0]]))
    model.train()
    for name in ("backbones", "projections", "intra_decomposition"):  # what the trainer does in stage 2
        model.stage_modules()[name].eval()
    with torch.no_grad():
        first, second = model(**inputs, stage=2), model(**inputs, stage=2)
    assert not torch.equal(seen[0][0], seen[1][0])  # sampled: two draws differ
    torch.testing.assert_close(first.modality_logits, second.modality_logits)  # M's head reads the mean (eval module)
    model.eval()
    with torch.no_grad():
        model(**inputs), model(**inputs)
    assert torch.equal(seen[2][0], seen[3][0])  # evaluation reads the mean


def test_kl_R_counts_only_samples_with_the_joint_posterior():
    config = make_config(TEXT_VISION)
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config, batch_size=6)
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[:3, 1] = False  # three samples lack vision: their R comes from the text predictor
    captured = {}
    model.head.consistency_decomposition.register_forward_hook(lambda m, i, out: captured.update(level2=out))
    with torch.no_grad():
        out = model(**inputs, modality_mask=mask, stage=2)
    r, full = captured["level2"].r, captured["level2"].all_present
    assert full.tolist() == [False] * 3 + [True] * 3
    kl = 0.5 * (r.mu.pow(2) + r.logvar.exp() - 1 - r.logvar).mean(-1)
    torch.testing.assert_close(out.loss_terms["kl_R"], kl[full].mean())


# ------------------------------------------------------------------------------------------- the composition gate


def test_interaction_composition_on_fixed_logits():
    # Three samples, two modalities, 4 classes; label 0. Confident = logit 10 on a class.
    def onehot(k, scale=10.0):
        v = torch.zeros(4)
        v[k] = scale
        return v

    flat = torch.zeros(4)
    modality_logits = torch.stack([
        torch.stack([onehot(0), onehot(0)]),  # R: both modalities know
        torch.stack([onehot(0), onehot(2)]),  # U_1: only the first knows
        torch.stack([onehot(3), onehot(1)]),  # S: neither knows ...
    ])
    synergy_logits = torch.stack([onehot(0), flat, onehot(0)])  # ... the synergy head does on S (and R)
    labels = torch.zeros(3, dtype=torch.long)
    present = torch.ones(3, 2, dtype=torch.bool)
    composition, informative = interaction_composition(modality_logits, synergy_logits, labels, present)
    assert composition.shape == (3, 4)
    torch.testing.assert_close(composition.sum(1), torch.ones(3))
    assert composition[0].argmax() == 0 and composition[0, 0] > 0.99  # redundancy
    assert composition[1].argmax() == 1 and composition[1, 1] > 0.99  # uniqueness of modality 1
    assert composition[2].argmax() == 3 and composition[2, 3] > 0.99  # synergy
    torch.testing.assert_close(informative, torch.ones(3), atol=1e-3, rtol=0)
    # A sample nobody predicts carries no routing information; an absent modality carries none either.
    nobody, weight = interaction_composition(modality_logits[2:], flat[None], labels[:1], present[:1])
    assert weight.item() == 0.0
    masked, _ = interaction_composition(modality_logits[:1], flat[None], labels[:1], torch.tensor([[True, False]]))
    assert masked[0, 2] == 0.0  # no uniqueness for the absent modality
    assert math.isclose(masked[0, 0].item(), 1.0, abs_tol=1e-6)  # the one present modality's information is R


def test_composition_gate_trains_from_its_own_loss_not_from_the_final_ce():
    config = make_config(TEXT_VISION)
    model = DMILForMultimodalClassification(config).train()
    out = model(**random_inputs(config), stage=2)
    out.loss_terms["ce_final"].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.head.interaction_gate.parameters())
    out.loss_terms["gate_composition"].backward()
    assert any(p.grad is not None and p.grad.any() for p in model.head.interaction_gate.parameters())
    # The mixture objective (reference) trains the gate through the final CE.
    reference = DMILForMultimodalClassification(make_config(TEXT_VISION, gate_objective="mixture")).train()
    reference(**random_inputs(config), stage=2).loss_terms["ce_final"].backward()
    assert any(p.grad is not None and p.grad.any() for p in reference.head.interaction_gate.parameters())


def test_gate_can_read_the_heads_predictions():
    config = make_config(TEXT_VISION, gate_reads_predictions=True)
    model = DMILForMultimodalClassification(config).eval()
    assert model.head.interaction_gate.mlp.fc1.in_features == 4 * config.latent_dim + 4 * config.num_labels
    with torch.no_grad():
        out = model(**{k: v for k, v in random_inputs(config).items() if k != "labels"})
    torch.testing.assert_close(out.interaction_weights.sum(-1), torch.ones(4))


def test_model_card_loss_lists_only_terms_the_model_computes():
    from dmil_hf.hub.model_card import _stage_loss

    default, mixture = make_config(TEXT_VISION), make_config(TEXT_VISION, gate_objective="mixture")
    assert "gate_composition" in _stage_loss(default, 2) and "gate_composition" not in _stage_loss(mixture, 2)
    assert "ce_synergy" not in _stage_loss(default, 1)  # stage1_synergy_weight is 0 by default
    assert "stage1_synergy_weight=1.0 · ce_synergy" in _stage_loss(make_config(TEXT_VISION, stage1_synergy_weight=1.0), 1)


def test_projection_registry_builds_the_named_module_and_round_trips(tmp_path):
    """`projection` picks Z_m's module from `PROJECTIONS`; a saved model keeps it, and the default is the Linear every
    earlier config had (so old checkpoints keep their keys)."""
    from dmil_hf.models.dmil.heads_dmil import MLP

    assert make_config(("vision", "audio")).projection == "linear"
    model = DMILForMultimodalClassification(make_config(("vision", "audio"), latent_dim=8, projection="mlp"))
    assert isinstance(model.projections["vision"], MLP) and model.projections["vision"].fc2.out_features == 8
    model.save_pretrained(tmp_path)
    loaded = DMILForMultimodalClassification.from_pretrained(tmp_path)
    assert loaded.config.projection == "mlp" and isinstance(loaded.projections["audio"], MLP)
    with pytest.raises(ValueError, match="projection must be one of"):
        make_config(("vision", "audio"), projection="conv")


def test_modality_corruption_replaces_one_present_modality_with_noise_at_the_batch_scale():
    torch.manual_seed(0)
    z = {"a": torch.randn(2000, 4) * 3 + 5, "b": torch.randn(2000, 4)}
    present = torch.ones(2000, 2, dtype=torch.bool)
    present[:500, 1] = False  # one modality only: never corrupted
    out, corrupted = corrupt_one_modality(z, present, 0.5, ["a", "b"])
    assert not corrupted[:500].any() and (corrupted[500:].sum(1) <= 1).all()
    assert 0.4 < corrupted[500:].any(1).float().mean() < 0.6
    hit = corrupted[:, 0]
    assert torch.equal(out["a"][~hit], z["a"][~hit]) and torch.equal(out["b"][~corrupted[:, 1]], z["b"][~corrupted[:, 1]])
    assert not torch.equal(out["a"][hit], z["a"][hit])
    # The noise keeps the modality's scale (mean 5, std 3), so it looks like features, not like a missing modality.
    torch.testing.assert_close(out["a"][hit].mean(), torch.tensor(5.0), atol=0.3, rtol=0)
    torch.testing.assert_close(out["a"][hit].std(), torch.tensor(3.0), atol=0.3, rtol=0)


def test_a_corrupted_modality_leaves_its_level1_losses_and_routes_the_sample_elsewhere():
    config = make_config(TEXT_VISION, modality_corruption=0.99)
    model = DMILForMultimodalClassification(config).train()
    inputs = random_inputs(config)
    seen = {}
    model.head.intra_decomposition["text"].register_forward_hook(lambda m, i, o: seen.update(text=i[0]))
    projected = {}
    model.projections["text"].register_forward_hook(lambda m, i, o: projected.update(text=o))
    torch.manual_seed(0)
    out = model(**inputs, stage=3)
    # Level 1 read noise, not the projected text features, for the corrupted samples.
    assert not torch.equal(seen["text"], projected["text"])
    assert {"ce_modality_text", "ce_modality_vision"} <= set(out.loss_terms)
    assert torch.isfinite(out.loss)
    # Out of training nothing is corrupted.
    model.eval()
    with torch.no_grad():
        model(**{k: v for k, v in inputs.items() if k != "labels"})
    torch.testing.assert_close(seen["text"], projected["text"])


def test_stage2_modality_weight_keeps_the_backbones_training_through_stage_2_on_the_unimodal_ces():
    for weight, trains in ((0.0, False), (0.7, True)):
        config = make_config(TEXT_VISION, stage2_modality_weight=weight)
        model = DMILForMultimodalClassification(config)
        prepared, frozen = prepare_model_for_stage(model, 2, finetune_method="full")
        assert any(p.requires_grad for p in model.backbones.parameters()) is trains
        assert any(p.requires_grad for p in model.head.intra_decomposition.parameters()) is trains
        out = prepared(**random_inputs(config), stage=2)
        assert ("ce_modality_text" in out.loss_terms) is trains
        if trains:
            rest = {k: v for k, v in out.loss_terms.items() if not k.startswith("ce_modality_")}
            expected = DMILForMultimodalClassification(config).head.weighted_loss(rest, 2) + 0.7 * (
                out.loss_terms["ce_modality_text"] + out.loss_terms["ce_modality_vision"])
            torch.testing.assert_close(out.loss, expected)


def test_level1_initial_logvar_offsets_the_level1_posteriors_log_variance():
    from dmil_hf.models.dmil.heads_dmil import DiagonalGaussianHead

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    plain, narrow = DiagonalGaussianHead(4, 2, 8.0), DiagonalGaussianHead(4, 2, 8.0, logvar_offset=-4.0)
    narrow.load_state_dict(plain.state_dict())
    a, b = plain(x), narrow(x)
    torch.testing.assert_close(b.mu, a.mu)
    torch.testing.assert_close(b.logvar, (a.logvar - 4.0).clamp(-8.0, 8.0))
    model = DMILForMultimodalClassification(make_config(TEXT_VISION, level1_initial_logvar=-3.0))
    level1 = model.head.intra_decomposition["text"]
    assert level1.m_posterior.logvar_offset == level1.n_posterior.logvar_offset == -3.0
    assert model.head.consistency_decomposition.redundancy.logvar_offset == 0.0  # level 2 is left as it is
    with pytest.raises(ValueError, match="level1_initial_logvar"):
        make_config(TEXT_VISION, level1_initial_logvar=-9.0)
