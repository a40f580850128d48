"""torch.compile: the decomposition, gate and losses trace without graph breaks (no host syncs, no data-dependent
Python branches), so compiled training keeps them in one graph with the backbones."""

import pytest
import torch

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.testing_utils import random_inputs
from dmil_hf.testing_utils import tiny_dmil_config as make_config


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_dmil_forward_and_loss_trace_in_one_graph(stage):
    import torch._dynamo as dynamo

    # text + vision: BERT and ViT trace cleanly, so any break would be ours. (wav2vec2 itself breaks twice, inside
    # transformers: a requires_grad setattr in its feature encoder and a data-dependent branch in its encoder.)
    config = make_config(("text", "vision"), check_inputs=False)
    model = DMILForMultimodalClassification(config).train()
    inputs = random_inputs(config, batch_size=4)
    inputs["modality_mask"] = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    dynamo.reset()
    explanation = dynamo.explain(model)(**inputs, stage=stage)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_compiled_model_matches_eager():
    config = make_config(("text", "vision"), check_inputs=False)
    model = DMILForMultimodalClassification(config).eval()
    inputs = random_inputs(config, batch_size=3)
    with torch.no_grad():
        eager = model(**inputs)
        compiled = torch.compile(model, backend="eager")(**inputs)
    torch.testing.assert_close(compiled.logits, eager.logits)
    torch.testing.assert_close(compiled.interaction_weights, eager.interaction_weights)
