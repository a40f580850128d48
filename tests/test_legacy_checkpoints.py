"""Checkpoints saved by release 0.1.0 (before the DMIL variants existed) load with the modules they were trained with
and give the logits they gave then. The fixtures were written by the 0.1.0 code (commit b6e0aab): three tiny
text + vision + audio models, one per paradigm, with their inputs and outputs."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import dmil_hf  # noqa: F401  (registers the Auto classes)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1_0"


@pytest.mark.parametrize("paradigm", ["dmil", "joint", "ensemble"])
def test_release_0_1_0_checkpoints_give_identical_outputs(paradigm):
    folder = FIXTURES / paradigm
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    expected = torch.load(folder / "expected.pt")
    with torch.no_grad():
        out = model.eval()(**expected["inputs"])
    torch.testing.assert_close(out.logits, expected["logits"], rtol=0, atol=0)
    if paradigm == "dmil":
        assert model.config.synergy_fusion == "linear" and model.config.synergy_input == "n"
        torch.testing.assert_close(out.interaction_weights, expected["interaction_weights"], rtol=0, atol=0)
