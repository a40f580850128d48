"""DMILForMultimodalClassification: save/load, construction from pretrained backbones, the method's exact pieces
(KLs, gate, posterior means, fusion modules), synergy learning, missing modalities, input checking, loss terms
and batching equivalence. Offline, tiny random backbones."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.models.dmil.configuration_dmil import REFERENCE_PRESET
from dmil_hf.models.dmil.heads_dmil import I2M2Head, ModalityFeatures, product_of_experts
from dmil_hf.models.dmil.modeling_dmil import DiagonalGaussianHead, InteractionGate, SynergyFusion, gaussian_kl
from dmil_hf.testing_utils import random_inputs, tiny_audio_config, tiny_text_config, tiny_vision_config
from dmil_hf.testing_utils import tiny_dmil_config as make_config

PARADIGMS = ("dmil", "joint", "ensemble", "two_stage", "i2m2")
MODALITY_SETS = (("text", "vision"), ("text", "vision", "audio"))
INPUT_NAMES = {"text": ("input_ids", "attention_mask"), "vision": ("pixel_values",), "audio": ("input_values",)}


def build(config, seed=0):
    torch.manual_seed(seed)
    return DMILForMultimodalClassification(config).eval()


def without(inputs, *modalities):
    """The inputs with every input of the given modalities left out of the call."""
    drop = {name for m in modalities for name in INPUT_NAMES[m]}
    return {k: v for k, v in inputs.items() if k not in drop}


def forbid_backbone(model, modality):
    def boom(*args, **kwargs):
        raise AssertionError(f"the {modality} backbone must not run for an absent modality")

    model.backbones[modality].forward = boom


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread: with two, every small op pays a thread hand-off, and on cores shared
    with other jobs the waiting threads make a 10 ms forward take a second or more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("modalities", MODALITY_SETS, ids=len)
@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_save_then_automodel_load_gives_same_outputs(tmp_path, paradigm, modalities):
    config = make_config(modalities, paradigm=paradigm)
    model = build(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        expected = model(**inputs)
    model.save_pretrained(tmp_path)

    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is DMILForMultimodalClassification
    assert loaded.config.paradigm == paradigm and loaded.modalities == list(modalities)
    with torch.no_grad():
        got = loaded(**inputs)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-6)
    if paradigm == "dmil":
        torch.testing.assert_close(got.interaction_weights, expected.interaction_weights, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.component_logits, expected.component_logits, rtol=0, atol=1e-6)
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())


def test_return_dict_false_gives_tuple_in_field_order():
    config = make_config(("text", "vision"))
    model = build(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        out, tup = model(**inputs), model(**inputs, return_dict=False)
    assert isinstance(tup, tuple)
    torch.testing.assert_close(tup[0], out.loss)
    torch.testing.assert_close(tup[1], out.logits)
    torch.testing.assert_close(tup[2], out.interaction_weights)


# ------------------------------------------------------------------------------------------- from_backbones_pretrained


@pytest.fixture(scope="module")
def saved_backbones(tmp_path_factory):
    """Three 'pretrained' backbones: built from tiny configs and saved; with the state dicts they were saved from
    (the files themselves may hold legacy key names, which loading converts)."""
    root = tmp_path_factory.mktemp("backbones")
    saved = {}
    for modality, config in (("text", tiny_text_config()), ("vision", tiny_vision_config()), ("audio", tiny_audio_config())):
        torch.manual_seed(123)
        backbone = AutoModel.from_config(config)
        backbone.save_pretrained(root / modality)
        saved[modality] = (str(root / modality), {k: v.clone() for k, v in backbone.state_dict().items()})
    return saved


def test_from_backbones_pretrained_keeps_loaded_weights(saved_backbones, tmp_path):
    paths = {m: p for m, (p, _) in saved_backbones.items()}
    id2label = {0: "a", 1: "b", 2: "c", 3: "d"}
    model = DMILForMultimodalClassification.from_backbones_pretrained(
        **paths, id2label=id2label, label2id={v: k for k, v in id2label.items()}, latent_dim=8
    ).eval()
    assert model.modalities == ["text", "vision", "audio"]
    assert model.config.num_labels == 4 and model.config.id2label == id2label and model.config.latent_dim == 8
    for modality, (_, weights) in saved_backbones.items():
        state = model.backbones[modality].state_dict()
        # Every backbone weight is the saved one, bit for bit: loaded, and not re-initialised by post_init.
        # (The saved models keep their pooler, which DMIL builds without.)
        assert set(state) <= set(weights), modality
        for key, value in state.items():
            assert torch.equal(value, weights[key]), f"{modality}.{key} is not the saved weight"
        assert state[next(iter(state))].dtype == torch.float32
    assert model.config.text_config is model.backbones["text"].config

    # The composite reloads from its own folder alone.
    inputs = random_inputs(model.config)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=1e-6)


def test_from_backbones_pretrained_routes_prefixed_kwargs(saved_backbones):
    paths = {m: p for m, (p, _) in saved_backbones.items() if m != "audio"}
    model = DMILForMultimodalClassification.from_backbones_pretrained(
        **paths,
        text_hidden_dropout_prob=0.0,  # a backbone config attribute
        text_attn_implementation="eager",  # a from_pretrained argument
        vision_attention_probs_dropout_prob=0.25,
        num_labels=2,  # DMILConfig's
    )
    text, vision = model.config.text_config, model.config.vision_config
    assert text.hidden_dropout_prob == 0.0 and vision.hidden_dropout_prob == tiny_vision_config().hidden_dropout_prob
    assert vision.attention_probs_dropout_prob == 0.25
    assert text.attention_probs_dropout_prob == tiny_text_config().attention_probs_dropout_prob
    assert text._attn_implementation == "eager" and vision._attn_implementation == "sdpa"
    assert model.backbones["text"].config._attn_implementation == "eager"
    assert model.config.num_labels == 2
    model(**random_inputs(model.config))  # and it runs


def test_from_backbones_pretrained_needs_two_backbones(saved_backbones):
    with pytest.raises(ValueError, match="at least two"):
        DMILForMultimodalClassification.from_backbones_pretrained(text=saved_backbones["text"][0])


# ------------------------------------------------------------------------------------------- exact pieces of the method


def test_gaussian_kl_closed_form_and_torch_distributions():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, -0.3]])
    prior_mu, prior_logvar = torch.tensor([[0.1, 0.2]]), torch.tensor([[0.4, -0.1]])
    # 0.5 * sum(mu^2 + e^lv - 1 - lv), and the general two-Gaussian form, evaluated by hand.
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.tensor([0.6561104894209439]), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        gaussian_kl(mu, logvar, prior_mu, prior_logvar), torch.tensor([0.8680794177752993]), rtol=0, atol=1e-6
    )

    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    prior_mu, prior_logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    normal = lambda m, lv: torch.distributions.Normal(m, (0.5 * lv).exp())  # noqa: E731
    to_standard = torch.distributions.kl_divergence(normal(mu, logvar), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    to_prior = torch.distributions.kl_divergence(normal(mu, logvar), normal(prior_mu, prior_logvar)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), to_standard, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gaussian_kl(mu, logvar, prior_mu, prior_logvar), to_prior, rtol=1e-5, atol=1e-5)
    assert gaussian_kl(mu, logvar).shape == (5,)
    # Identical posteriors: exactly zero. Half-precision inputs: computed in float32.
    assert torch.equal(gaussian_kl(mu, logvar, mu, logvar), torch.zeros(5))
    assert gaussian_kl(mu.bfloat16(), logvar.bfloat16()).dtype == torch.float32


def test_alignment_kl_is_zero_when_joint_posterior_equals_predictor():
    config = make_config(("text", "vision"), latent_dim=8)
    model = build(config)
    d = config.latent_dim
    level2 = model.head.consistency_decomposition
    with torch.no_grad():
        joint, predictor = level2.redundancy.linear, level2.redundancy_predictors["text"].linear
        # q(R | M_text, M_vision) ignores M_vision and equals v_text(R | M_text).
        joint.weight.zero_()
        joint.weight[:, :d].copy_(predictor.weight)
        joint.bias.copy_(predictor.bias)
        out = model(**random_inputs(config))
    assert out.loss_terms["align_R_text"].abs().item() < 1e-6
    assert out.loss_terms["align_R_vision"].item() > 1e-3  # the other predictor still differs


def test_gate_rows_are_a_distribution_over_named_components():
    config = make_config()
    model = build(config)
    inputs = random_inputs(config, batch_size=5)
    for stage in (2, 3):
        with torch.no_grad():
            out = model(**inputs, stage=stage)
        weights = out.interaction_weights
        assert weights.shape == (5, len(config.interaction_components)) == (5, 5)
        assert out.component_logits.shape == (5, 5, config.num_labels)
        assert bool((weights >= 0).all())
        torch.testing.assert_close(weights.sum(-1), torch.ones(5), rtol=0, atol=1e-6)
        # The final logits are the gate-weighted sum of the component logits.
        torch.testing.assert_close(out.logits, (weights.unsqueeze(-1) * out.component_logits).sum(1), rtol=0, atol=1e-6)
    with torch.no_grad():
        stage1 = model(**inputs, stage=1)
    assert stage1.interaction_weights is None and stage1.modality_logits.shape == (5, 3, 3)


def _heads_train_backbones_eval(model):
    model.train()
    for backbone in model.backbones.values():
        backbone.eval()  # no dropout: only the latent samples can make two calls differ


def test_eval_uses_posterior_means_and_train_samples(monkeypatch):
    config = make_config(("text", "vision"))
    model = build(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
        torch.testing.assert_close(first.logits, second.logits, rtol=0, atol=0)

        _heads_train_backbones_eval(model)
        torch.manual_seed(1)
        sampled = model(**inputs)
        torch.manual_seed(2)
        resampled = model(**inputs)
        torch.manual_seed(1)
        replayed = model(**inputs)
        assert (sampled.logits - resampled.logits).abs().max() > 1e-4
        torch.testing.assert_close(sampled.logits, replayed.logits, rtol=0, atol=0)

        # Training with zero noise is exactly evaluation: evaluation uses the posterior means.
        monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
        noiseless = model(**inputs)
    torch.testing.assert_close(noiseless.logits, first.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(noiseless.interaction_weights, first.interaction_weights, rtol=0, atol=1e-6)


# Pinned outputs of the small fusion modules, with fixed weights on fixed tensors (values worked out by hand).


def test_diagonal_gaussian_head_pinned():
    head = DiagonalGaussianHead(2, 1, logvar_clamp=3.0)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -4.0]]))
        head.linear.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    mu_expected = torch.tensor([[3.5], [0.5]])
    logvar_expected = torch.tensor([[-1.0], [3.0]])  # 10 is clamped to 3
    sample, mu, logvar = head.eval()(x)
    torch.testing.assert_close(mu, mu_expected, rtol=0, atol=0)
    torch.testing.assert_close(logvar, logvar_expected, rtol=0, atol=0)
    torch.testing.assert_close(sample, mu_expected, rtol=0, atol=0)

    torch.manual_seed(7)
    eps = torch.randn(2, 1)
    torch.manual_seed(7)
    sample, mu, logvar = head.train()(x)
    torch.testing.assert_close(sample, mu_expected + eps * torch.exp(0.5 * logvar_expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(mu, mu_expected, rtol=0, atol=0)


def test_synergy_fusion_pinned():
    fusion = SynergyFusion(num_modalities=2, dim=2)
    assert fusion.fusion.in_features == 6  # [N1, N2, N1*N2]
    with torch.no_grad():
        fusion.fusion.weight.copy_(torch.tensor([[1.0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, -1]]))
        fusion.fusion.bias.copy_(torch.tensor([0.5, -1.0]))
    n1, n2 = torch.tensor([[1.0, -1.0], [2.0, 0.5]]), torch.tensor([[-1.0, -1.0], [3.0, 4.0]])
    # row 0: concat = [1, -1, -1, -1, -1, 1]; row 1: [2, 0.5, 3, 4, 6, 2]
    torch.testing.assert_close(fusion([n1, n2]), torch.tensor([[0.5, -3.0], [8.5, 1.0]]), rtol=0, atol=0)

    # Three modalities: pairs in the order (0,1), (0,2), (1,2).
    fusion3 = SynergyFusion(num_modalities=3, dim=1)
    with torch.no_grad():
        fusion3.fusion.weight.copy_(torch.tensor([[1.0, 10, 100, 1000, 10000, 100000]]))
        fusion3.fusion.bias.zero_()
    a, b, c = torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[3.0]])
    assert fusion3([a, b, c]).item() == 1 + 20 + 300 + 2000 + 30000 + 600000


def test_i2m2_product_of_experts_pinned():
    """I2M2's combination: the sum of the experts' log-probabilities, a missing modality's intra expert left out."""
    # Experts (intra a, intra b, inter) on 2 classes; sample 1 lacks modality b.
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]],
                           [[3.0, 0.0], [9.0, -9.0], [0.0, 0.0]]])
    available = torch.tensor([[True, True, True], [True, False, True]])
    l2, l3, l4 = math.log(2.0), math.log1p(math.exp(-1.0)), math.log1p(math.exp(-2.0))
    l5 = math.log1p(math.exp(-3.0))
    # log_softmax of [0, 0] is -log 2 each; of [1, 0]: [-log(1+e^-1), -1-log(1+e^-1)]; of [0, 2]: [-2-l4, -l4].
    expected = torch.tensor([[-l2 - l3 - 2.0 - l4, -l2 - 1.0 - l3 - l4],
                             [-l5 - l2, -3.0 - l5 - l2]])
    torch.testing.assert_close(product_of_experts(logits, available), expected, rtol=0, atol=1e-6)

    # The head: intra experts on Z_a and Z_b, the inter expert on [Z_a, Z_b * present_b], summed as above.
    config = make_config(("text", "vision"), paradigm="i2m2", num_labels=2, latent_dim=2, baseline_hidden_dim=2)
    head = I2M2Head(config)
    with torch.no_grad():
        for expert in (*head.intra_experts.values(), head.inter_expert):
            expert.fc1.weight.copy_(torch.eye(2, expert.fc1.in_features))
            expert.fc1.bias.zero_()
            expert.fc2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
            expert.fc2.bias.copy_(torch.tensor([0.0, 0.5]))
    z = {"text": torch.tensor([[1.0, 2.0], [0.5, -1.0]]), "vision": torch.tensor([[-1.0, 3.0], [7.0, 7.0]])}
    present = torch.tensor([[True, True], [True, False]])
    out = head(ModalityFeatures(z, present), labels=torch.tensor([0, 1]))

    def mlp(x):  # the pinned weights: fc1 = first two inputs, fc2 = [h0, 0.5 - h1]
        h = F.gelu(x[:, :2])
        return torch.stack([h[:, 0], 0.5 - h[:, 1]], dim=-1)

    intra = torch.stack([mlp(z["text"]), mlp(z["vision"])], dim=1)
    inter = mlp(torch.cat([z["text"], z["vision"] * present[:, 1:].float()], dim=-1))  # first 2 inputs: Z_text
    expected = F.log_softmax(intra[:, 0], -1) + F.log_softmax(inter, -1)
    expected[0] += F.log_softmax(intra[0, 1], -1)
    torch.testing.assert_close(out.modality_logits, intra, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-6)
    assert set(out.loss_terms) == {"ce_final"}  # one CE on the combined prediction, no per-expert loss
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, torch.tensor([0, 1])), rtol=0, atol=1e-6)
    assert out.interaction_weights is None and out.component_logits is None


def test_interaction_gate_pinned():
    gate = InteractionGate(num_components=3, dim=1)
    with torch.no_grad():
        gate.mlp.fc1.weight.copy_(torch.tensor([[1.0, 1.0, 1.0]]))
        gate.mlp.fc1.bias.zero_()
        gate.mlp.fc2.weight.copy_(torch.tensor([[1.0], [0.0], [-1.0]]))
        gate.mlp.fc2.bias.zero_()
    # sample 0: h = 1 + 1 + 0 = 2, gelu(2) = 1.95449973...; scores [g, 0, -g]. sample 1: h = -1.
    components = [torch.tensor([[1.0], [0.5]]), torch.tensor([[1.0], [-1.5]]), torch.tensor([[0.0], [0.0]])]
    all_on = torch.ones(2, 3, dtype=torch.bool)
    expected = torch.tensor(
        [[0.8608104930925793, 0.12192116449057372, 0.017268342416846962],
         [0.2820585789774415, 0.3305539984852715, 0.38738742253728703]]
    )
    torch.testing.assert_close(gate(components, all_on), expected, rtol=0, atol=1e-6)
    # An unavailable component gets exactly 0 and the rest renormalise.
    middle_off = torch.tensor([[True, False, True], [True, True, True]])
    weights = gate(components, middle_off)
    assert weights[0, 1].item() == 0.0
    torch.testing.assert_close(weights[0], torch.tensor([0.9803339498476482, 0.0, 0.019666050152351705]), rtol=0, atol=1e-6)
    torch.testing.assert_close(weights[1], expected[1], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- synergy: XOR


def _xor_bits(repeats):
    a = torch.tensor([0, 0, 1, 1] * repeats)
    b = torch.tensor([0, 1, 0, 1] * repeats)
    return a, b, a ^ b


def test_synergy_fusion_fits_xor_that_an_ensemble_cannot():
    """Module level: inputs in {-1,+1}^d encode one bit each; the label is their XOR."""
    torch.manual_seed(0)
    d = 8
    a, b, y = _xor_bits(4)
    v1, v2 = torch.sign(torch.randn(d)), torch.sign(torch.randn(d))
    x1, x2 = (2.0 * a - 1)[:, None] * v1, (2.0 * b - 1)[:, None] * v2

    def fit(params, loss_fn, steps=200):
        opt = torch.optim.Adam(params, lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()

    fusion, head = SynergyFusion(2, d), nn.Linear(d, 2)
    synergy_logits = lambda: head(fusion([x1, x2]))  # noqa: E731
    fit([*fusion.parameters(), *head.parameters()], lambda: F.cross_entropy(synergy_logits(), y))
    with torch.no_grad():
        assert (synergy_logits().argmax(-1) == y).float().mean().item() == 1.0

    # The ensemble paradigm: one MLP head per input, each trained with its own CE, logits averaged. Each input is
    # independent of the label, so each head learns the uniform prediction.
    heads = [nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2)) for _ in range(2)]
    ensemble_logits = lambda: (heads[0](x1) + heads[1](x2)) / 2  # noqa: E731
    fit(
        [p for h in heads for p in h.parameters()],
        lambda: F.cross_entropy(heads[0](x1), y) + F.cross_entropy(heads[1](x2), y),
    )
    with torch.no_grad():
        p_true = ensemble_logits().softmax(-1).gather(1, y[:, None])
    assert ((p_true - 0.5).abs() < 0.05).all()
    # Even trained end to end on the averaged logits, f(a) + g(b) cannot fit XOR: the four sign conditions
    # contradict each other, so at most 3 of the 4 input patterns are right.
    fit([p for h in heads for p in h.parameters()], lambda: F.cross_entropy(ensemble_logits(), y), steps=300)
    with torch.no_grad():
        assert (ensemble_logits().argmax(-1) == y).float().mean().item() <= 0.75


def _xor_batch(config, repeats=4):
    """Text token 5/6 encodes bit a, an all -1 / all +1 image encodes bit b; label a XOR b."""
    a, b, y = _xor_bits(repeats)
    input_ids = torch.stack([torch.full_like(a, 2), 5 + a], dim=1)
    v = config.vision_config
    pixels = (2.0 * b - 1).view(-1, 1, 1, 1).expand(-1, v.num_channels, v.image_size, v.image_size).contiguous()
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixels, labels=y)


def _train_end_to_end(paradigm, steps):
    # Default loss weights: with the KL terms on the reference's per-dimension scale, kl_weight=0.02 leaves N
    # enough room to carry the two bits (a KL summed over dimensions with the same weight collapsed N onto the prior).
    config = make_config(("text", "vision"), paradigm=paradigm, num_labels=2, latent_dim=16)
    model = build(config).train()
    batch = _xor_batch(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        model(**batch, stage=3).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model(**batch), batch["labels"]


def test_dmil_end_to_end_fits_xor_through_synergy():
    out, y = _train_end_to_end("dmil", steps=150)
    assert (out.logits.argmax(-1) == y).float().mean().item() == 1.0
    synergy = out.component_logits[:, -1]
    assert (synergy.argmax(-1) == y).float().mean().item() == 1.0
    # The gate favours synergy, the only component that can carry XOR.
    assert out.interaction_weights[:, -1].mean().item() > 1 / 4


def test_ensemble_end_to_end_stays_at_chance_on_xor():
    out, y = _train_end_to_end("ensemble", steps=150)
    p_true = out.logits.softmax(-1).gather(1, y[:, None])
    assert ((p_true - 0.5).abs() < 0.1).all()
    assert (out.logits.argmax(-1) == y).float().mean().item() <= 0.75


# ------------------------------------------------------------------------------------------- missing modalities


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_modality_left_out_of_the_call(paradigm):
    config = make_config(paradigm=paradigm)
    model = build(config)
    inputs = random_inputs(config)
    forbid_backbone(model, "vision")
    with torch.no_grad():
        two = model(**without(inputs, "vision"))
        forbid_backbone(model, "audio")
        one = model(**without(inputs, "vision", "audio"))
    for out in (two, one):
        assert out.logits.shape == (4, 3) and bool(torch.isfinite(out.logits).all())
        assert bool(torch.isfinite(out.loss))
    if paradigm == "dmil":
        components = config.interaction_components
        w2, w1 = two.interaction_weights, one.interaction_weights
        assert bool((w2[:, components.index("uniqueness_vision")] == 0).all())
        assert bool((w2[:, components.index("synergy")] > 0).all())  # text and audio remain
        for name in ("uniqueness_vision", "uniqueness_audio", "synergy"):
            assert bool((w1[:, components.index(name)] == 0).all()), name
        for w in (w2, w1):
            torch.testing.assert_close(w.sum(-1), torch.ones(4), rtol=0, atol=1e-6)
        assert one.loss_terms["ce_synergy"].item() == 0.0  # no sample has two modalities
        assert one.loss_terms["ce_modality_vision"].item() == 0.0 and one.loss_terms["kl_U_audio"].item() == 0.0
        assert one.loss_terms["align_R_text"].item() == 0.0  # no joint posterior without every modality
    if paradigm == "ensemble":
        torch.testing.assert_close(one.logits, one.modality_logits[:, 0], rtol=0, atol=1e-6)
        assert one.loss_terms["ce_modality_audio"].item() == 0.0
    if paradigm == "i2m2":
        # Text alone: the product of text's intra expert and the inter expert; the other intra experts are left out.
        head, seen = model.head, []
        handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        with torch.no_grad():
            model(**without(inputs, "vision", "audio"))
        handle.remove()
        text_z = seen[0].z["text"]
        zero = torch.zeros_like(text_z)
        with torch.no_grad():
            inter = head.inter_expert(torch.cat([text_z, zero, zero], dim=-1))
            intra = head.intra_experts["text"](text_z)
        torch.testing.assert_close(one.modality_logits[:, 0], intra, rtol=0, atol=1e-6)
        torch.testing.assert_close(one.logits, F.log_softmax(intra, -1) + F.log_softmax(inter, -1), rtol=0, atol=1e-5)
    if paradigm == "two_stage":
        with torch.no_grad():
            pretraining = model(**without(inputs, "vision", "audio"), stage=1)
        torch.testing.assert_close(pretraining.logits, pretraining.modality_logits[:, 0], rtol=0, atol=1e-6)
        assert pretraining.loss_terms["ce_modality_audio"].item() == 0.0


def test_missing_modality_trains(config_factory):
    config = config_factory()
    model = build(config).train()
    model(**without(random_inputs(config), "audio")).loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.backbones["audio"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbones["text"].parameters())


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_per_sample_modality_mask(paradigm):
    config = make_config(paradigm=paradigm)
    model = build(config)
    inputs = random_inputs(config)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = model(**inputs, modality_mask=mask)
        # A masked-out input does not matter: other values there give the same outputs.
        other = model(**{**inputs, "pixel_values": torch.randn_like(inputs["pixel_values"]) * 5}, modality_mask=mask)
        # Sample 2 masked to text only equals text given alone.
        alone = model(**{k: v[2:3] for k, v in without(inputs, "vision", "audio").items()})
        full = model(**inputs)
    assert bool(torch.isfinite(out.logits).all()) and bool(torch.isfinite(out.loss))
    masked = ~mask[:, 1]  # rows whose vision is masked out
    torch.testing.assert_close(other.logits[masked], out.logits[masked], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits[2:3], alone.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits[0], full.logits[0], rtol=0, atol=1e-5)  # an all-present row is unchanged
    if paradigm == "dmil":
        w = out.interaction_weights
        names = config.interaction_components
        col = {n: names.index(n) for n in names}
        torch.testing.assert_close(w.sum(-1), torch.ones(4), rtol=0, atol=1e-6)
        assert bool((w > 0).all(dim=1)[0])
        assert w[1, col["uniqueness_vision"]] == 0 and w[1, col["synergy"]] > 0
        assert w[2, col["uniqueness_vision"]] == 0 and w[2, col["uniqueness_audio"]] == 0 and w[2, col["synergy"]] == 0
        assert w[3, col["uniqueness_text"]] == 0 and w[3, col["uniqueness_audio"]] == 0 and w[3, col["synergy"]] == 0
        torch.testing.assert_close(other.interaction_weights[masked], w[masked], rtol=0, atol=1e-6)
        torch.testing.assert_close(w[2:3], alone.interaction_weights, rtol=0, atol=1e-5)


def test_integer_modality_mask_is_accepted():
    config = make_config(("text", "vision"))
    model = build(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        as_bool = model(**inputs, modality_mask=torch.tensor([[True, False]] * 4))
        as_int = model(**inputs, modality_mask=torch.tensor([[1, 0]] * 4))
    torch.testing.assert_close(as_int.logits, as_bool.logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def checked_model():
    # An explicit problem type: without one, float or bool labels would make a multi-label task by transformers'
    # rule (tests/model/test_problem_types.py covers that), and the module-scoped model would keep whichever type the first
    # case's labels set.
    config = make_config(problem_type="single_label_classification")
    return build(config), random_inputs(config)


def _bad(inputs, **changes):
    return {**inputs, **changes}


BAD_INPUTS = {
    "pixel_values wrong size": (lambda x: _bad(x, pixel_values=torch.randn(4, 3, 20, 20)), ValueError, "pixel_values"),
    "pixel_values wrong channels": (lambda x: _bad(x, pixel_values=torch.randn(4, 1, 16, 16)), ValueError, "pixel_values"),
    "pixel_values 3-D": (lambda x: _bad(x, pixel_values=torch.randn(4, 16, 16)), ValueError, "pixel_values"),
    "input_ids 1-D": (lambda x: _bad(x, input_ids=x["input_ids"][0], attention_mask=None), ValueError, "input_ids"),
    "attention_mask shape": (lambda x: _bad(x, attention_mask=torch.ones(4, 5, dtype=torch.long)), ValueError, "attention_mask"),
    "attention_mask alone": (lambda x: _bad(x, input_ids=None), ValueError, "attention_mask"),
    "audio wrong rank": (lambda x: _bad(x, input_values=torch.randn(4, 1, 1600)), ValueError, "input_values"),
    "audio_attention_mask shape": (
        lambda x: _bad(x, audio_attention_mask=torch.ones(4, 7, dtype=torch.long)), ValueError, "audio_attention_mask",
    ),
    "both audio names": (lambda x: _bad(x, input_features=torch.randn(4, 1600)), ValueError, "input_features"),
    "float input_ids": (lambda x: _bad(x, input_ids=x["input_ids"].float()), TypeError, "input_ids"),
    "int pixel_values": (lambda x: _bad(x, pixel_values=torch.ones(4, 3, 16, 16, dtype=torch.long)), TypeError, "pixel_values"),
    "int input_values": (lambda x: _bad(x, input_values=torch.ones(4, 1600, dtype=torch.int16)), TypeError, "input_values"),
    "list input_ids": (lambda x: _bad(x, input_ids=x["input_ids"].tolist()), TypeError, "input_ids"),
    "input_ids out of vocab": (lambda x: _bad(x, input_ids=torch.full((4, 8), 99)), ValueError, "input_ids"),
    "empty batch": (
        lambda x: {"input_ids": torch.zeros(0, 8, dtype=torch.long), "pixel_values": torch.zeros(0, 3, 16, 16)},
        ValueError, "input_ids.*empty",
    ),
    "empty pixel batch": (lambda x: {"pixel_values": torch.zeros(0, 3, 16, 16)}, ValueError, "pixel_values.*empty"),
    "NaN pixel_values": (
        lambda x: _bad(x, pixel_values=x["pixel_values"].index_fill(0, torch.tensor([1]), float("nan"))),
        ValueError, "pixel_values.*NaN",
    ),
    "inf input_values": (
        lambda x: _bad(x, input_values=x["input_values"].index_fill(1, torch.tensor([3]), float("inf"))),
        ValueError, "input_values.*infinite",
    ),
    "label too large": (lambda x: _bad(x, labels=torch.tensor([0, 1, 2, 3])), ValueError, "labels"),
    "negative label": (lambda x: _bad(x, labels=torch.tensor([0, -1, 2, 1])), ValueError, "labels"),
    "labels 2-D": (lambda x: _bad(x, labels=x["labels"][:, None]), ValueError, "labels"),
    "labels batch": (lambda x: _bad(x, labels=x["labels"][:3]), ValueError, "labels"),
    "float labels": (lambda x: _bad(x, labels=x["labels"].float()), TypeError, "labels"),
    "bool labels": (lambda x: _bad(x, labels=x["labels"] > 0), TypeError, "labels"),
    "batch sizes disagree": (lambda x: _bad(x, pixel_values=x["pixel_values"][:3]), ValueError, "batch size.*pixel_values"),
    "modality_mask shape": (
        lambda x: _bad(x, modality_mask=torch.ones(4, 2, dtype=torch.bool)), ValueError, "modality_mask",
    ),
    "modality_mask batch": (
        lambda x: _bad(x, modality_mask=torch.ones(3, 3, dtype=torch.bool)), ValueError, "modality_mask",
    ),
    "modality_mask not a tensor": (lambda x: _bad(x, modality_mask=[[1, 1, 1]] * 4), ValueError, "modality_mask"),
    "modality_mask empty row": (
        lambda x: _bad(x, modality_mask=torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 1]])),
        ValueError, "modality_mask",
    ),
    "modality_mask row of absent modalities": (
        lambda x: {**without(x, "vision", "audio"), "modality_mask": torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])},
        ValueError, "modality_mask",
    ),
    "stage 0": (lambda x: _bad(x, stage=0), ValueError, "stage"),
    "stage 4": (lambda x: _bad(x, stage=4), ValueError, "stage"),
    "stage as string": (lambda x: _bad(x, stage="2"), ValueError, "stage"),
    "no input": (lambda x: {"labels": x["labels"]}, ValueError, "no input"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_clear_error(checked_model, case):
    model, inputs = checked_model
    make, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        model(**make(dict(inputs)))


@pytest.mark.parametrize(
    "name, value",
    [
        ("input_values", torch.randn(2, 1600)),
        ("input_features", torch.randn(2, 1600)),
        ("audio_attention_mask", torch.ones(2, 1600, dtype=torch.long)),
    ],
)
def test_input_for_a_modality_the_config_lacks(name, value):
    config = make_config(("text", "vision"))
    model = build(config)
    inputs = {k: v[:2] for k, v in random_inputs(config).items()}
    with pytest.raises(ValueError, match=f"{name} was given, but this model has no audio backbone"):
        model(**inputs, **{name: value})


def test_label_ids_of_any_integer_dtype():
    config = make_config(("text", "vision"))
    model = build(config)
    inputs = random_inputs(config)
    with torch.no_grad():
        reference = model(**inputs).loss
        for dtype in (torch.int32, torch.uint8):
            torch.testing.assert_close(model(**{**inputs, "labels": inputs["labels"].to(dtype)}).loss, reference)


def test_model_from_bad_config_is_rejected():
    with pytest.raises(ValueError, match="two to four"):
        DMILForMultimodalClassification(make_config(()))
    with pytest.raises(ValueError, match="paradigm"):
        make_config(paradigm="stacking")
    with pytest.raises(ValueError, match="only \\['vision'\\]"):
        make_config(("vision",))


def test_check_inputs_off_skips_value_checks():
    config = make_config(("text", "vision"), check_inputs=False)
    model = build(config)
    inputs = random_inputs(config)
    inputs["pixel_values"][0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        out = model(**inputs)  # no value check: no error (and no host sync) ...
    assert out.logits.shape == (4, 3)
    with pytest.raises(TypeError, match="input_ids"):  # ... but dtype and shape checks stay on
        model(**{**inputs, "input_ids": inputs["input_ids"].float()})


# ------------------------------------------------------------------------------------------- loss terms


WEIGHTS = dict(
    kl_weight=0.07, alignment_weight=1.7, stage1_reconstruction_weight=0.3, stage2_component_weight=0.45,
    stage2_reconstruction_weight=0.11, stage3_modality_weight=0.55, stage3_component_weight=0.85,
    stage3_consistency_kl_scale=0.35, stage3_reconstruction_z_weight=0.13, stage3_reconstruction_m_weight=0.17,
    stage1_kl_weight=0.09, stage1_synergy_weight=0.6, gate_composition_weight=0.7, stage2_modality_weight=0.4,
)
# The reference preset's stage-1 weights are per modality; the rest of WEIGHTS applies on top of it.
REFERENCE_WEIGHTS = {**REFERENCE_PRESET, **{k: v for k, v in WEIGHTS.items()
                                             if not k.startswith(("stage1_", "gate_", "stage2_modality"))}}


def _stage_terms(modalities, config):
    stage1 = {f"{p}_{m}" for m in modalities for p in ("ce_modality", "kl_M", "kl_N", "rec_Z")}
    stage2 = {"ce_final", "ce_redundancy", "ce_synergy", "kl_R"} | {
        f"{p}_{m}" for m in modalities for p in ("ce_uniqueness", "kl_U", "align_R", "rec_M")
    }
    if config.gate_objective == "composition":
        stage2 |= {"gate_composition"}
    # With stage2_modality_weight stage 2 counts the unimodal CEs too (and computes no other level-1 term).
    unimodal = {f"ce_modality_{m}" for m in modalities}
    return {1: stage1 | ({"ce_synergy"} if config.stage1_synergy_weight else set()),
            2: stage2 | (unimodal if config.stage2_modality_weight else set()), 3: stage1 | stage2}


def _expected_loss(t, c, stage, modalities):
    """The stage losses of reference/dmil-method.md §4 (plus the default's two extra terms), written out again from
    the config's weights."""

    def s(prefix, weight=None):
        per = (lambda m: weight.get(m)) if isinstance(weight, dict) else (lambda m: 1.0 if weight is None else weight)
        return sum(per(m) * t[f"{prefix}_{m}"] for m in modalities)

    gate = c.gate_composition_weight * t.get("gate_composition", 0.0)
    if stage == 1:
        return (
            s("ce_modality") + s("kl_M", c.stage1_kl_weight) + s("kl_N", c.stage1_kl_weight)
            + s("rec_Z", c.stage1_reconstruction_weight) + c.stage1_synergy_weight * t.get("ce_synergy", 0.0)
        )
    kl_level2 = t["kl_R"] + s("kl_U") + c.alignment_weight * s("align_R")
    components = t["ce_redundancy"] + s("ce_uniqueness") + t["ce_synergy"]
    if stage == 2:
        return (
            t["ce_final"] + c.stage2_component_weight * components + c.kl_weight * kl_level2
            + c.stage2_reconstruction_weight * s("rec_M") + gate
            + (c.stage2_modality_weight * s("ce_modality") if c.stage2_modality_weight else 0.0)
        )
    return (
        t["ce_final"] + c.stage3_modality_weight * s("ce_modality") + c.kl_weight * (s("kl_M") + s("kl_N"))
        + c.stage3_reconstruction_z_weight * s("rec_Z") + c.kl_weight * c.stage3_consistency_kl_scale * kl_level2
        + c.stage3_reconstruction_m_weight * s("rec_M") + c.stage3_component_weight * components + gate
    )


@pytest.mark.parametrize("preset", ["default", "reference"])
@pytest.mark.parametrize("modalities", MODALITY_SETS, ids=len)
def test_loss_terms_per_stage_and_weighted_loss(modalities, preset):
    config = make_config(modalities, **(WEIGHTS if preset == "default" else REFERENCE_WEIGHTS))
    model = build(config)
    inputs = random_inputs(config, batch_size=6)
    labels = inputs["labels"]
    for stage, names in _stage_terms(modalities, config).items():
        with torch.no_grad():
            out = model(**inputs, stage=stage)
        assert set(out.loss_terms) == names, f"stage {stage}"
        for name, value in out.loss_terms.items():
            assert value.dim() == 0 and value.dtype == torch.float32 and bool(torch.isfinite(value)), name
            if name.startswith(("kl_", "align_", "rec_")):
                assert value.item() >= 0, name
        torch.testing.assert_close(out.loss, _expected_loss(out.loss_terms, config, stage, modalities), rtol=1e-6, atol=1e-6)
        # The CE terms are the CEs of the returned logits.
        for k, m in enumerate(modalities):
            if f"ce_modality_{m}" in out.loss_terms:
                torch.testing.assert_close(out.loss_terms[f"ce_modality_{m}"], F.cross_entropy(out.modality_logits[:, k], labels))
            if stage != 1:
                torch.testing.assert_close(out.loss_terms[f"ce_uniqueness_{m}"], F.cross_entropy(out.component_logits[:, 1 + k], labels))
        if stage != 1:
            torch.testing.assert_close(out.loss_terms["ce_final"], F.cross_entropy(out.logits, labels))
            torch.testing.assert_close(out.loss_terms["ce_redundancy"], F.cross_entropy(out.component_logits[:, 0], labels))
            torch.testing.assert_close(out.loss_terms["ce_synergy"], F.cross_entropy(out.component_logits[:, -1], labels))
        else:
            torch.testing.assert_close(out.logits, out.modality_logits.mean(1))  # stage 1: mean of unimodal heads


def test_baseline_losses():
    unimodal = {"ce_modality_text", "ce_modality_vision"}
    for paradigm, stage, names in (
        ("joint", None, {"ce_final"}), ("ensemble", None, unimodal),
        ("two_stage", 1, unimodal), ("two_stage", 2, {"ce_final"}), ("two_stage", None, {"ce_final"}),
        ("i2m2", None, {"ce_final"}),
    ):
        config = make_config(("text", "vision"), paradigm=paradigm)
        model = build(config)
        inputs = random_inputs(config)
        with torch.no_grad():
            out = model(**inputs, stage=stage)
        assert set(out.loss_terms) == names
        torch.testing.assert_close(out.loss, sum(out.loss_terms.values()))
        if names == {"ce_final"}:
            torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, inputs["labels"]))
            assert out.interaction_weights is None
            # two_stage keeps its unimodal heads', i2m2 its intra experts'
            assert (out.modality_logits is None) == (paradigm == "joint")
        else:
            torch.testing.assert_close(out.logits, out.modality_logits.mean(1))


def test_no_labels_no_loss():
    config = make_config(("text", "vision"))
    model = build(config)
    inputs = random_inputs(config)
    inputs.pop("labels")
    with torch.no_grad():
        out = model(**inputs)
    assert out.loss is None and out.loss_terms is None and out.logits.shape == (4, 3)


# ------------------------------------------------------------------------------------------- batching equivalence


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_batching_equivalence(paradigm):
    config = make_config(paradigm=paradigm)
    model = build(config)
    inputs = random_inputs(config, batch_size=3)
    inputs.pop("labels")
    inputs["attention_mask"][1, 5:] = 0  # one padded text row
    with torch.no_grad():
        batched = model(**inputs)
        for i in range(3):
            single = model(**{k: v[i : i + 1] for k, v in inputs.items()})
            torch.testing.assert_close(single.logits[0], batched.logits[i], rtol=0, atol=1e-5)
            for field in ("interaction_weights", "component_logits", "modality_logits"):
                if getattr(batched, field) is not None:
                    torch.testing.assert_close(getattr(single, field)[0], getattr(batched, field)[i], rtol=0, atol=1e-5)
