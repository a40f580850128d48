"""Problem types (`config.problem_type`): single-label, multi-label and regression through the loss of every paradigm,
transformers' inference rule, label checks, DMIL's per-sample information estimate and composition gate, the collator,
the metrics, the pipeline, the model card and the synthetic regression task. Mechanisms on fixed tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import EvalPrediction

from dmil_hf import DMILConfig, DMILForMultimodalClassification, Modality
from dmil_hf.models.dmil.heads_dmil import (
    HEADS,
    GateInputs,
    ModalityFeatures,
    composition_gate_objective,
    interaction_composition,
    task_loss,
)
from dmil_hf.evaluation import make_compute_metrics, per_type_summary
from dmil_hf.models.dmil.problem_types_dmil import PROBLEM_TYPES, combine_experts, infer_problem_type
from dmil_hf.testing_utils import random_inputs
from dmil_hf.testing_utils import tiny_dmil_config as make_config

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


def feature_config(num_labels, problem_type=None, paradigm="dmil", **kwargs):
    """Two feature modalities: the heads alone run on fixed features, no backbone needed."""
    return DMILConfig(modality_table=[Modality("a", "features"), Modality("b", "features")], num_labels=num_labels,
                      latent_dim=8, baseline_hidden_dim=8, paradigm=paradigm, problem_type=problem_type, **kwargs)


def features(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = {"a": torch.randn(batch, 8, generator=g), "b": torch.randn(batch, 8, generator=g)}
    return ModalityFeatures(z, present=torch.ones(batch, 2, dtype=torch.bool), all_given=True)


def onehot(k, size=4, scale=10.0):
    v = torch.zeros(size)
    v[k] = scale
    return v


# ------------------------------------------------------------------------------------------- losses


def test_task_loss_is_transformers_loss_of_each_problem_type():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g)
    ids = torch.tensor([0, 2, 1, 1, 0])
    hot = (torch.rand(5, 3, generator=g) > 0.5).float()
    targets = torch.randn(5, 3, generator=g)
    torch.testing.assert_close(task_loss(logits, ids, "mean", SINGLE), torch.nn.CrossEntropyLoss()(logits, ids))
    torch.testing.assert_close(task_loss(logits, hot, "mean", MULTI), torch.nn.BCEWithLogitsLoss()(logits, hot))
    torch.testing.assert_close(task_loss(logits, targets, "mean", REGRESSION), torch.nn.MSELoss()(logits, targets))
    # Per sample: the mean over labels / targets, so that masked means over samples weigh every sample alike.
    per_sample = task_loss(logits, targets, problem_type=REGRESSION)
    torch.testing.assert_close(per_sample, (logits - targets).pow(2).mean(-1))
    torch.testing.assert_close(task_loss(logits, targets, "sum", REGRESSION), per_sample.sum())
    # Without a problem type: transformers' rule on the outputs and the labels' dtype.
    torch.testing.assert_close(task_loss(logits, hot), task_loss(logits, hot, problem_type=MULTI))
    torch.testing.assert_close(task_loss(logits[:, :1], targets[:, :1]), (logits[:, 0] - targets[:, 0]).pow(2))
    with pytest.raises(ValueError, match="reduction"):
        task_loss(logits, ids, "max")


@pytest.mark.parametrize("paradigm", ["dmil", "joint", "ensemble", "two_stage", "i2m2"])
@pytest.mark.parametrize("problem_type, num_labels", [(REGRESSION, 1), (REGRESSION, 2), (MULTI, 3)])
def test_every_paradigm_trains_with_the_problem_types_loss(paradigm, problem_type, num_labels):
    config = feature_config(num_labels, problem_type, paradigm)
    head = HEADS[paradigm](config).train()
    g = torch.Generator().manual_seed(1)
    labels = torch.randn(4, num_labels, generator=g) if problem_type == REGRESSION else (
        torch.rand(4, num_labels, generator=g) > 0.5).float()
    torch.manual_seed(0)
    out = head(features(), labels, stage=3)
    loss_fn = torch.nn.MSELoss() if problem_type == REGRESSION else torch.nn.BCEWithLogitsLoss()
    assert torch.isfinite(out.loss)
    if paradigm == "ensemble":
        for k, m in enumerate(["a", "b"]):
            torch.testing.assert_close(out.loss_terms[f"ce_modality_{m}"], loss_fn(out.modality_logits[:, k], labels))
    else:
        # DMIL's ce_final reads the logits it returns (the gate-weighted components).
        torch.testing.assert_close(out.loss_terms["ce_final"], loss_fn(out.logits, labels))
    if paradigm == "dmil":
        torch.testing.assert_close(out.loss_terms["ce_synergy"], loss_fn(out.component_logits[:, -1], labels))
        # Stage 1 predicts with the mean of the unimodal heads, for every problem type.
        torch.manual_seed(0)
        stage1 = head.eval()(features(), None, stage=1)
        torch.testing.assert_close(stage1.logits, stage1.modality_logits.mean(1))


def test_combine_experts_for_i2m2():
    experts = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]])  # (B=1, 2 experts, 2)
    combined = combine_experts(experts, SINGLE)
    # The product of the experts' distributions, renormalised: p ∝ (1/4, 3/4) * (2/3, 1/3) = (1/6, 1/4).
    torch.testing.assert_close(combined.softmax(-1), torch.tensor([[0.4, 0.6]]))
    # Multi-label: the product of each label's Bernoullis has the summed log-odds.
    torch.testing.assert_close(combine_experts(experts, MULTI), torch.tensor([[math.log(2.0), math.log(3.0)]]))
    torch.testing.assert_close(combine_experts(torch.tensor([[[1.0], [3.0]]]), REGRESSION), torch.tensor([[2.0]]))
    with pytest.raises(ValueError, match="problem_type"):
        combine_experts(experts, "ranking")


# ------------------------------------------------------------------------------------------- inference and checks


def test_transformers_rule_for_the_problem_type():
    assert infer_problem_type(1, torch.tensor([1, 0])) == REGRESSION
    assert infer_problem_type(3, torch.tensor([1, 0])) == SINGLE
    assert infer_problem_type(3, torch.tensor([1, 0], dtype=torch.uint8)) == SINGLE  # any integer dtype: class ids
    assert infer_problem_type(3, torch.zeros(2, 3)) == MULTI
    assert infer_problem_type(3, torch.zeros(2, 3, dtype=torch.bool)) == MULTI
    assert infer_problem_type(3) == SINGLE


@pytest.mark.parametrize(
    "num_labels, labels, expected",
    [
        (1, torch.tensor([0.5, -1.0, 2.0, 0.0]), REGRESSION),
        (1, torch.tensor([0, 3, 1, 2]), REGRESSION),  # integer targets of a regression
        (3, torch.tensor([0, 2, 1, 1]), SINGLE),
        (3, torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool), MULTI),
    ],
)
def test_the_first_forward_with_labels_sets_the_problem_type(num_labels, labels, expected):
    config = make_config(("text", "vision"), num_labels=num_labels)
    model = DMILForMultimodalClassification(config).train()
    assert config.problem_type is None
    inputs = {**random_inputs(config), "labels": labels}
    out = model(**inputs)
    assert config.problem_type == expected and torch.isfinite(out.loss)
    with torch.no_grad():
        assert model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.shape == (4, num_labels)


def test_one_label_is_a_regression_not_a_nan_loss():
    # Before: num_labels=1 was a one-class cross-entropy (always 0) and the composition's log C = 0 made the loss NaN.
    config = make_config(("text", "vision"), num_labels=1)
    model = DMILForMultimodalClassification(config).train()
    inputs = random_inputs(config)  # integer labels, all 0
    out = model(**inputs)
    assert torch.isfinite(out.loss) and config.problem_type == REGRESSION
    assert all(torch.isfinite(v) for v in out.loss_terms.values())
    # ce_final is the squared error of the prediction, not a one-class cross-entropy (identically 0).
    torch.testing.assert_close(out.loss_terms["ce_final"], out.logits.float().squeeze(1).pow(2).mean())
    assert out.loss_terms["ce_final"] > 0


BAD_LABELS = {
    "multi-label ids": (MULTI, 3, torch.tensor([0, 1, 2, 0]), ValueError, r"\(batch, num_labels\) = \(4, 3\)"),
    "multi-label out of [0, 1]": (MULTI, 3, torch.full((4, 3), 2.0), ValueError, r"in \[0, 1\]"),
    "multi-label wrong width": (MULTI, 3, torch.zeros(4, 2), ValueError, "multi-hot"),
    "regression NaN": (REGRESSION, 1, torch.tensor([0.0, float("nan"), 1.0, 2.0]), ValueError, "NaN"),
    "regression wrong width": (REGRESSION, 2, torch.zeros(4), ValueError, r"\(4, 2\)"),
    "regression bool": (REGRESSION, 1, torch.ones(4, dtype=torch.bool), TypeError, "real-valued"),
    "regression list": (REGRESSION, 1, [0.0, 1.0, 2.0, 3.0], TypeError, "torch.Tensor"),
    "single-label floats": (SINGLE, 3, torch.zeros(4), TypeError, "integer"),
    "single-label multi-hot": (SINGLE, 3, torch.zeros(4, 3, dtype=torch.long), ValueError, "multi_label"),
    "single-label with one label": (SINGLE, 1, torch.zeros(4, dtype=torch.long), ValueError, "num_labels >= 2"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_get_a_clear_error_before_any_backbone_runs(case, monkeypatch):
    problem_type, num_labels, labels, error, match = BAD_LABELS[case]
    config = make_config(("text", "vision"), num_labels=max(num_labels, 2), problem_type=problem_type)
    # Set afterwards: transformers >= 5.2x refuses a one-label single-label config at init, older ones do not.
    config.num_labels = num_labels
    model = DMILForMultimodalClassification(config)
    monkeypatch.setattr(model, "encode", lambda *a: pytest.fail("a backbone ran before the labels were checked"))
    with pytest.raises(error, match=match):
        model(**{**random_inputs(config), "labels": labels})


def test_an_inferred_type_that_does_not_fit_says_it_was_inferred_and_is_not_kept():
    config = make_config(("text", "vision"), num_labels=3)
    model = DMILForMultimodalClassification(config)
    with pytest.raises(ValueError, match="inferred from num_labels=3 and labels of dtype torch.float32"):
        model(**{**random_inputs(config), "labels": torch.tensor([0.0, 1.0, 2.0, 1.0])})
    assert config.problem_type is None


# ------------------------------------------------------------------------------------------- information and routing


def test_multi_label_information_is_the_per_label_bernoulli_gain():
    # One label is a two-class problem: its information equals the single-label one with logits [0, z].
    z = torch.tensor([[2.0], [-1.0], [0.0]])
    hot = torch.tensor([[1.0], [1.0], [0.0]])
    single = PROBLEM_TYPES[SINGLE].information(torch.cat([torch.zeros_like(z), z], -1), hot[:, 0].long())
    torch.testing.assert_close(PROBLEM_TYPES[MULTI].information(z, hot), single)
    # Several labels: log 2 + log p(y_l | x) summed; a sure right label gives log 2, a coin 0.
    logits = torch.tensor([[30.0, 0.0, -30.0]])
    info = PROBLEM_TYPES[MULTI].information(logits, torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(info, torch.tensor([2 * math.log(2.0)]))


def test_multi_label_composition_on_fixed_logits():
    # Two labels, label vector (1, 0). Sure = logits (+10, -10); a coin = (0, 0).
    sure, coin, wrong = torch.tensor([10.0, -10.0]), torch.zeros(2), torch.tensor([-10.0, 10.0])
    modality_logits = torch.stack([
        torch.stack([sure, sure]),   # R
        torch.stack([sure, coin]),   # U_a
        torch.stack([coin, wrong]),  # S: neither modality knows ...
    ])
    synergy_logits = torch.stack([sure, coin, sure])  # ... the synergy head does
    labels = torch.tensor([[1.0, 0.0]] * 3)
    composition, informative = interaction_composition(
        modality_logits, synergy_logits, labels, torch.ones(3, 2, dtype=torch.bool), MULTI
    )
    assert composition.argmax(1).tolist() == [0, 1, 3]
    assert (composition.max(1).values > 0.99).all()
    torch.testing.assert_close(informative, torch.ones(3), atol=1e-3, rtol=0)  # 2 log 2 of 2 log 2


def test_regression_information_and_composition_on_fixed_tensors():
    # Labels with mean 0 and variance 1: a perfect prediction holds y^2 / 2 = 1/2 nat, predicting the mean 0 nat.
    labels = torch.tensor([[-1.0], [1.0], [-1.0], [1.0]])
    info = PROBLEM_TYPES[REGRESSION].information(torch.tensor([[-1.0], [0.0], [1.0], [0.5]]), labels)
    torch.testing.assert_close(info, torch.tensor([0.5, 0.0, -1.5, 0.375]))  # ((y-0)^2 - (y-ŷ)^2) / 2
    y = labels
    modality_logits = torch.stack([
        torch.cat([y[0], y[0]]),    # R: both modalities predict the target
        torch.cat([y[1], 0 * y[1]]),  # U_a: only a (b predicts the mean)
        torch.cat([0 * y[2], -y[2]]),  # S: neither (b is wrong: clipped at 0) ...
        torch.cat([0 * y[3], 0 * y[3]]),  # nobody
    ]).unsqueeze(-1)
    synergy_logits = torch.stack([0 * y[0], 0 * y[1], y[2], 0 * y[3]])  # ... the synergy head predicts S
    composition, informative = interaction_composition(
        modality_logits, synergy_logits, labels, torch.ones(4, 2, dtype=torch.bool), REGRESSION
    )
    torch.testing.assert_close(composition[:3], torch.eye(4)[[0, 1, 3]])
    # In units of the ceiling num_labels / 2: each of the first three holds its whole 1/2 nat; the last nothing.
    torch.testing.assert_close(informative, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    # A batch of equal labels says nothing about routing (no variance to explain), and stays finite.
    flat, weight = interaction_composition(modality_logits, synergy_logits, torch.ones(4, 1), torch.ones(4, 2).bool(),
                                           REGRESSION)
    assert weight.tolist() == [0.0] * 4 and torch.isfinite(flat).all()


def test_composition_gate_objective_on_a_regression():
    labels = torch.tensor([[-1.0], [1.0]])
    modality_logits = torch.tensor([[[-1.0], [-1.0]], [[1.0], [0.0]]])  # R, then U_a
    component_logits = torch.tensor([[[-1.0], [0.0], [0.0], [0.0]], [[0.0], [1.0], [0.0], [0.0]]])
    weights = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.1, 0.7, 0.1, 0.1]], requires_grad=True)
    inputs = GateInputs(weights, component_logits, modality_logits, torch.ones(2, 4, dtype=torch.bool),
                        torch.ones(2, 2, dtype=torch.bool), REGRESSION)
    logits, terms = composition_gate_objective(inputs, labels)
    # Targets one-hot on redundancy and uniqueness_a, each sample fully informative: -mean(log 0.4, log 0.7).
    torch.testing.assert_close(terms["gate_composition"], -(math.log(0.4) + math.log(0.7)) / 2 * torch.ones(()))
    torch.testing.assert_close(logits, torch.tensor([[-0.4], [0.7]]))


def test_gate_reads_the_problem_types_view_of_each_prediction():
    for problem_type, num_labels, view in ((REGRESSION, 2, lambda x: x), (MULTI, 3, F.logsigmoid)):
        config = feature_config(num_labels, problem_type, gate_reads_predictions=True)
        head = HEADS["dmil"](config).eval()
        seen = {}

        def keep(module, args):
            seen["input"] = args[0][-1]

        head.interaction_gate.register_forward_pre_hook(keep)
        out = head(features())
        expected = view(out.component_logits).flatten(1)
        torch.testing.assert_close(seen["input"], expected)


def test_the_composition_routes_the_synthetic_regression_task_by_its_types():
    """The estimate on the synthetic regression, with predictions that know exactly what each modality shows (the
    decoded slots): every R sample's information is redundancy, U_m's uniqueness of m, S's synergy. What a trained
    gate learns from it is measured by benchmarks/regression_routing.py."""
    from dmil_hf.data import SyntheticInteractionSpec, decode_slots, regression_target

    spec = SyntheticInteractionSpec(modalities=("text", "vision"), task="regression", mixture="balanced",
                                    target_noise=0.0, noise={"vision": 0.0})
    data = spec.generate(200, seed=3)
    labels = torch.tensor(np.asarray(data["labels"]), dtype=torch.float32).unsqueeze(1)
    slots = {m: decode_slots(data, m) for m in spec.modalities}
    mean = float(labels.mean())  # what a modality without direct evidence predicts best
    unimodal = np.stack([np.where(slots[m][0] >= 0, regression_target(spec, slots[m][0]), mean)
                         for m in spec.modalities], axis=1)
    synergy = regression_target(spec, sum(slots[m][1] for m in spec.modalities) % spec.num_labels)
    composition, informative = interaction_composition(
        torch.tensor(unimodal, dtype=torch.float32).unsqueeze(-1), torch.tensor(synergy, dtype=torch.float32)[:, None],
        labels, torch.ones(len(labels), 2, dtype=torch.bool), REGRESSION,
    )
    columns = {"R": 0, "U_text": 1, "U_vision": 2, "S": 3}
    types = np.asarray(data["interaction_type"])
    for kind, column in columns.items():
        rows = torch.from_numpy(types == kind) & (informative > 0)
        assert rows.sum() > 20
        assert (composition[rows].argmax(1) == column).all(), kind
    assert set(data.unique("interaction_type")) == set(columns)


# ------------------------------------------------------------------------------------------- data, metrics, outputs


def test_synthetic_regression_task():
    from dmil_hf.data import SyntheticInteractionSpec, corrupt, regression_target, tiny_config_for

    classification = SyntheticInteractionSpec(modalities=("text", "vision"))
    spec = classification.replace(task="regression", target_noise=0.1)
    data, reference = spec.generate(400, seed=0), classification.generate(400, seed=0)
    table, reference_table = data.with_format("numpy")[:], reference.with_format("numpy")[:]
    # The same samples, types and inputs; the target is the class value scaled to [-1, 1] plus its noise.
    assert table["label_value"].tolist() == reference_table["labels"].tolist()
    assert (table["input_ids"] == reference_table["input_ids"]).all()
    residual = table["labels"] - regression_target(spec, table["label_value"])
    assert abs(residual.std() - 0.1) < 0.015 and abs(residual.mean()) < 0.02
    assert data[:4]["labels"].dtype == torch.float32
    assert regression_target(spec, np.arange(4)).tolist() == pytest.approx([-1, -1 / 3, 1 / 3, 1])
    assert SyntheticInteractionSpec.from_dataset(data) == spec
    assert (corrupt(data, "vision").with_format("numpy")[:]["labels"] == table["labels"]).all()
    config = tiny_config_for(spec)
    assert (config.num_labels, config.problem_type) == (1, REGRESSION)
    with pytest.raises(ValueError, match="task"):
        SyntheticInteractionSpec(task="ranking")


def test_collator_labels_of_each_problem_type():
    from dmil_hf.training.data_collator import DMILDataCollator
    from dmil_hf.data import SyntheticInteractionSpec, synthetic_processor

    processor = synthetic_processor(SyntheticInteractionSpec(modalities=("text", "vision")))
    image = np.zeros((16, 16, 3), np.uint8)

    def collate(labels, **kwargs):
        return DMILDataCollator(processor, **kwargs)([{"text": "a1 b0", "image": image, "label": y} for y in labels])

    assert collate([1, 0])["labels"].dtype == torch.long
    targets = collate([0.5, -1.0])["labels"]
    assert targets.dtype == torch.float32 and targets.tolist() == [0.5, -1.0]
    assert collate([[0.5, 1.0], [0.0, 1.0]])["labels"].tolist() == [[0.5, 1.0], [0.0, 1.0]]  # lists: (soft) multi-hot
    assert collate([2, 1], problem_type=REGRESSION)["labels"].tolist() == [2.0, 1.0]
    assert collate([[1.0, 2.0], [3.0, 4.0]], problem_type=REGRESSION)["labels"].shape == (2, 2)
    hot = collate([[1, 0, 1], [0, 0, 0]])["labels"]
    assert hot.dtype == torch.float32 and hot.tolist() == [[1, 0, 1], [0, 0, 0]]
    label2id = {"cat": 0, "dog": 1, "bird": 2}
    named = collate([["bird", "cat"], []], label2id=label2id, problem_type=MULTI)["labels"]
    assert named.tolist() == [[1, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="not in label2id"):
        collate([["fish"], []], label2id=label2id)
    with pytest.raises(ValueError, match="different lengths"):
        collate([[1, 0], [1, 0, 1]])
    with pytest.raises(TypeError, match="regression"):
        collate(["cat", 1.0], problem_type=REGRESSION)
    with pytest.raises(ValueError, match="problem_type"):
        DMILDataCollator(processor, problem_type="ranking")


def test_regression_metrics_by_hand():
    config = feature_config(1, REGRESSION)
    compute = make_compute_metrics(config, interaction_types=["R", "R", "S", "S"])
    logits = np.array([[1.0], [2.0], [0.0], [3.0]])
    labels = np.array([1.5, 2.0, 1.0, 3.0], dtype=np.float32)
    weights = np.array([[0.7, 0.1, 0.1, 0.1]] * 2 + [[0.1, 0.1, 0.1, 0.7]] * 2)
    component = np.repeat(logits[:, None], 4, axis=1)
    component[:, 0] += 1.0
    metrics = compute(EvalPrediction({"logits": logits, "interaction_weights": weights, "component_logits": component,
                                      "modality_logits": np.zeros((4, 2, 1))}, labels))
    assert metrics["mae"] == pytest.approx(1.5 / 4) and metrics["mse"] == pytest.approx(1.25 / 4)
    assert metrics["pearson"] == pytest.approx(np.corrcoef(logits[:, 0], labels)[0, 1])
    assert metrics["mae_R"] == pytest.approx(0.25) and metrics["mae_S"] == pytest.approx(0.5)
    assert metrics["gate_synergy_S"] == pytest.approx(0.7) and metrics["gate_redundancy_R"] == pytest.approx(0.7)
    assert metrics["component_mae_uniqueness_a"] == pytest.approx(metrics["mae"])
    assert metrics["modality_mae_b"] == pytest.approx(7.5 / 4)
    assert "accuracy" not in metrics and "synergy_indicator" not in metrics
    assert [row[:2] for row in per_type_summary(metrics, [], prefix="", metric="mae")] == [("R", 0.25), ("S", 0.5)]
    with pytest.raises(ValueError, match="regression"):
        make_compute_metrics(config, unimodal_predictions=np.zeros((4, 2)))(EvalPrediction({"logits": logits}, labels))


def test_multi_label_metrics_by_hand():
    config = feature_config(3)  # no problem type yet: float labels make it multi-label, as the model would
    compute = make_compute_metrics(config, interaction_types=["R", "S"])
    logits = np.array([[2.0, -1.0, 3.0], [-2.0, 1.0, -1.0]])  # predicts (1, 0, 1) and (0, 1, 0)
    labels = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    modality_logits = np.stack([logits, -logits], axis=1)  # a right, b every label wrong
    metrics = compute(EvalPrediction({"logits": logits, "modality_logits": modality_logits}, labels))
    # TP 3, FP 0, FN 1: micro-F1 6/7; per label F1 (2/3, 1, 1).
    assert metrics["f1_micro"] == pytest.approx(6 / 7) and metrics["f1_macro"] == pytest.approx((2 / 3 + 2) / 3)
    assert metrics["accuracy"] == 0.5 and metrics["accuracy_R"] == 1.0 and metrics["accuracy_S"] == 0.0
    assert metrics["f1_micro_S"] == pytest.approx(2 / 3)
    assert metrics["modality_f1_micro_a"] == pytest.approx(6 / 7) and metrics["modality_f1_micro_b"] == pytest.approx(2 / 7)
    assert metrics["synergy_indicator"] == 0.0  # the one exact sample is also exact for modality a
    log_p = -np.logaddexp(0, -logits)
    log_q = -np.logaddexp(0, logits)
    assert metrics["bce_final"] == pytest.approx(float(-(labels * log_p + (1 - labels) * log_q).mean()))


def test_pipeline_scores_of_each_problem_type():
    from dmil_hf.data import SyntheticInteractionSpec, synthetic_processor, tiny_config_for
    from dmil_hf.models.dmil.pipeline_dmil import TASK, MultimodalClassificationPipeline

    classification = SyntheticInteractionSpec(modalities=("text", "vision"), num_labels=3)
    spec = classification.replace(task="regression")
    sample = {"text": "a1 w0 b2", "image": np.zeros((16, 16, 3), np.uint8)}
    for problem_type in (REGRESSION, MULTI):
        torch.manual_seed(0)
        config = tiny_config_for(spec if problem_type == REGRESSION else classification, latent_dim=8,
                                 problem_type=problem_type)
        model = DMILForMultimodalClassification(config).eval()
        pipe = MultimodalClassificationPipeline(model=model, processor=synthetic_processor(spec), task=TASK)
        with torch.no_grad():
            logits = model(**pipe.preprocess(sample)).logits[0]
        result = pipe(sample, top_k=None)
        expected = logits if problem_type == REGRESSION else torch.sigmoid(logits)
        assert sorted(e["score"] for e in result) == pytest.approx(sorted(expected.tolist()), abs=1e-5)
        assert list(result[0]["interactions"]) == config.interaction_components
        if problem_type == MULTI:
            # Independent probabilities, not a distribution over the labels; softmax on request.
            assert sum(e["score"] for e in result) != pytest.approx(1.0)
            softmax = pipe(sample, top_k=None, function_to_apply="softmax")
            assert sum(e["score"] for e in softmax) == pytest.approx(1.0)
        else:
            assert result[0]["label"] == "target" and result[0]["score"] == pytest.approx(logits.item(), abs=1e-5)
    with pytest.raises(ValueError, match="function_to_apply"):
        pipe(sample, function_to_apply="relu")


def test_model_card_says_the_task_and_reads_per_type_mae(tmp_path):
    from dmil_hf.hub.model_card import render_model_card
    from dmil_hf.training.training_args import DMILTrainingArguments

    config = make_config(("text", "vision"), num_labels=1, problem_type=REGRESSION)
    args = DMILTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    results = {3: {"eval_mae": 0.25, "eval_pearson": 0.9, "eval_mae_R": 0.125, "eval_gate_redundancy_R": 0.7}}
    card = render_model_card(DMILForMultimodalClassification(config), args, results).content
    assert "Task: regression of 1 target. In detail, regression: `score` is the predicted value" in card
    assert "multimodal regressor built with" in card and "classifier" not in card.split("Task:")[0]
    assert "| 3 | eval_mae | 0.2500 |" in card and "| 3 | eval_pearson | 0.9000 |" in card
    assert "| type | mae | gate redundancy |" in card and "| R | 0.1250 | 0.7000 |" in card
