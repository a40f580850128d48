"""The problem-type registry (`problem_types_dmil.PROBLEM_TYPES`), the one place that says what a label is and how a
head's output becomes a prediction and a score: each entry pinned on fixed tensors, and the rule that reads a label
column's type from its values."""

import math

import numpy as np
import pytest
import torch

from dmil_hf.models.dmil.problem_types_dmil import (
    MULTI_LABEL,
    PROBLEM_TYPES,
    REGRESSION,
    SINGLE_LABEL,
    problem_type_of_label_values,
    resolve_problem_type,
)

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [-0.5, 0.5, 0.0]])


def test_single_label_decides_by_argmax_and_scores_by_softmax():
    problem = PROBLEM_TYPES[SINGLE_LABEL]
    assert problem.score_function == "softmax" and problem.final_loss_metric == "ce_final"
    assert problem.decide(LOGITS).tolist() == [0, 1]
    z = math.exp(2) + 1 + math.exp(-1)
    torch.testing.assert_close(problem.scores(LOGITS)[0], torch.tensor([math.exp(2) / z, 1 / z, math.exp(-1) / z]))
    assert problem.decide_labels(torch.tensor([2, 0])).tolist() == [2, 0]


def test_multi_label_decides_above_one_half_and_scores_each_label_by_sigmoid():
    problem = PROBLEM_TYPES[MULTI_LABEL]
    assert problem.score_function == "sigmoid" and problem.final_loss_metric == "bce_final"
    # A logit of exactly 0 is probability 1/2: not above it, so off.
    assert problem.decide(LOGITS).tolist() == [[1, 0, 0], [0, 1, 0]]
    torch.testing.assert_close(problem.scores(LOGITS), torch.sigmoid(LOGITS))
    # Soft targets count as on from 1/2.
    assert problem.decide_labels(torch.tensor([[0.5, 0.49, 1.0]])).tolist() == [[1, 0, 1]]


def test_regression_decides_and_scores_the_values_themselves():
    problem = PROBLEM_TYPES[REGRESSION]
    assert problem.score_function == "none" and problem.final_loss_metric is None
    values = torch.tensor([[0.25], [-3.0]])
    assert problem.decide(values).tolist() == [[0.25], [-3.0]]  # never argmaxed
    assert problem.scores(values).tolist() == [[0.25], [-3.0]]
    assert problem.decide_labels(torch.tensor([[1.5]])).tolist() == [[1.5]]


def test_read_labels_of_each_type():
    label2id = {"cat": 0, "dog": 1, "bird": 2}
    ids = PROBLEM_TYPES[SINGLE_LABEL].read_labels([2, "dog", np.int64(0)], label2id)
    assert ids.dtype == torch.long and ids.tolist() == [2, 1, 0]
    hot = PROBLEM_TYPES[MULTI_LABEL].read_labels([["bird", "cat"], [], [0, 1, 0.5]], label2id)
    assert hot.dtype == torch.float32 and hot.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0.5]]
    targets = PROBLEM_TYPES[REGRESSION].read_labels([0.5, 2], None)
    assert targets.dtype == torch.float32 and targets.tolist() == [0.5, 2.0]
    assert PROBLEM_TYPES[REGRESSION].read_labels([[1.0, 2.0], [3.0, 4.0]], None).shape == (2, 2)
    with pytest.raises(ValueError, match=r"examples\[1\] has the label 'fish', which is not in label2id"):
        PROBLEM_TYPES[SINGLE_LABEL].read_labels(["cat", "fish"], label2id)
    with pytest.raises(TypeError, match="int class id"):
        PROBLEM_TYPES[SINGLE_LABEL].read_labels([True], None)
    with pytest.raises(ValueError, match="no label2id"):
        PROBLEM_TYPES[MULTI_LABEL].read_labels([["cat"]], None)
    with pytest.raises(TypeError, match="regression"):
        PROBLEM_TYPES[REGRESSION].read_labels(["cat"], None)


def test_a_label_columns_values_say_its_type():
    assert problem_type_of_label_values([0, 2, 1]) == SINGLE_LABEL
    assert problem_type_of_label_values(["cat", "dog"]) == SINGLE_LABEL
    assert problem_type_of_label_values([0.5, 2]) == REGRESSION  # one float makes the column real-valued
    assert problem_type_of_label_values([np.float32(0.5)]) == REGRESSION
    assert problem_type_of_label_values([[1, 0], [0, 1]]) == MULTI_LABEL
    assert problem_type_of_label_values([["cat"], [], None]) == MULTI_LABEL  # None: an unlabelled row
    assert problem_type_of_label_values([np.array([0.0, 1.0])]) == MULTI_LABEL


def test_without_a_named_type_the_model_rule_decides():
    class Config:
        problem_type = None
        num_labels = 1

    assert resolve_problem_type(Config()) == REGRESSION
    Config.num_labels = 3
    assert resolve_problem_type(Config()) == SINGLE_LABEL
    assert resolve_problem_type(Config(), torch.zeros(2, 3)) == MULTI_LABEL
    Config.problem_type = REGRESSION
    assert resolve_problem_type(Config(), torch.tensor([1, 0])) == REGRESSION


def test_the_collator_reads_labels_through_the_registry():
    from dmil_hf.data import SyntheticInteractionSpec, synthetic_processor
    from dmil_hf.training.data_collator import DMILDataCollator

    processor = synthetic_processor(SyntheticInteractionSpec(modalities=("text", "vision")))
    image = np.zeros((16, 16, 3), np.uint8)
    for labels in ([1, 0], [0.5, -1.0], [[1, 0, 1], [0, 1, 0]]):
        batch = DMILDataCollator(processor)([{"text": "a1 b0", "image": image, "label": y} for y in labels])
        problem = PROBLEM_TYPES[problem_type_of_label_values(labels)]
        assert torch.equal(batch["labels"], problem.read_labels(labels, None))
