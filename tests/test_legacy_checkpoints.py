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


# Saved by the last code with three fixed modality slots (commit ca35480, before the modality table and the head
# registry): text + vision + wav2vec2 audio for each paradigm, and a DMIL with a Whisper encoder, a per-modality
# pooling override and a gate that reads predictions. Inputs include a modality_mask with missing modalities.
THREE_SLOT = Path(__file__).resolve().parent / "fixtures" / "three_slot"


@pytest.mark.parametrize("name", ["dmil", "joint", "ensemble", "dmil_whisper"])
def test_three_slot_checkpoints_give_identical_outputs(name):
    folder = THREE_SLOT / name
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    expected = torch.load(folder / "expected.pt")
    with torch.no_grad():
        out = model.eval()(**expected["inputs"])
    torch.testing.assert_close(out.logits, expected["logits"], rtol=0, atol=0)
    if "interaction_weights" in expected:
        torch.testing.assert_close(out.interaction_weights, expected["interaction_weights"], rtol=0, atol=0)
