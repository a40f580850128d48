"""Checkpoints saved by release 0.1.0 (before the DMIL variants existed) load with the modules they were trained with
and give the logits they gave then. The fixtures were written by the 0.1.0 code (commit b6e0aab): three tiny
text + vision + audio models, one per paradigm, with their inputs and outputs."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import dmil_hf  # noqa: F401  (registers the Auto classes)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1_0"

# The expected outputs were computed by the transformers release of their day: a later release may sum a backbone's
# floats in another order (transformers 5.25 moves the logits by about 2e-8). A wrong or re-initialised weight moves
# them by orders of magnitude more, so float32 round-off is the bar, not bit equality.
ROUND_OFF = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("paradigm", ["dmil", "joint", "ensemble"])
def test_release_0_1_0_checkpoints_give_identical_outputs(paradigm):
    folder = FIXTURES / paradigm
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    expected = torch.load(folder / "expected.pt")
    with torch.no_grad():
        out = model.eval()(**expected["inputs"])
    torch.testing.assert_close(out.logits, expected["logits"], **ROUND_OFF)
    if paradigm == "dmil":
        assert model.config.synergy_fusion == "linear" and model.config.synergy_input == "n"
        torch.testing.assert_close(out.interaction_weights, expected["interaction_weights"], **ROUND_OFF)


# Saved by the last code with three fixed modality slots (commit ca35480, before the modality table and the head
# registry): text + vision + wav2vec2 audio for each paradigm, and a DMIL with a Whisper encoder, a per-modality
# pooling override and a gate that reads predictions. Inputs include a modality_mask with missing modalities.
THREE_SLOT = Path(__file__).resolve().parents[1] / "fixtures" / "three_slot"


@pytest.mark.parametrize("name", ["dmil", "joint", "ensemble", "dmil_whisper"])
def test_three_slot_checkpoints_give_identical_outputs(name):
    folder = THREE_SLOT / name
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    expected = torch.load(folder / "expected.pt")
    with torch.no_grad():
        out = model.eval()(**expected["inputs"])
    torch.testing.assert_close(out.logits, expected["logits"], **ROUND_OFF)
    if "interaction_weights" in expected:
        torch.testing.assert_close(out.interaction_weights, expected["interaction_weights"], **ROUND_OFF)


# Saved by the code whose feature encoder stacked nn.TransformerEncoderLayer (commit 1ecb244): a DMIL over a
# two-layer feature encoder (padded sequences) and a projection-only one (vectors). The own pre-norm layer that
# replaced it keeps the parameter names and the function, so the checkpoint loads as it was and gives its outputs.
FEATURE_ENCODER = Path(__file__).resolve().parents[1] / "fixtures" / "feature_encoder" / "dmil"


@pytest.mark.parametrize("grad", [False, True])
def test_feature_encoder_checkpoints_of_nn_transformer_layers_give_identical_outputs(grad):
    model, info = AutoModel.from_pretrained(FEATURE_ENCODER, output_loading_info=True)
    assert not any(info.values()), info
    expected = torch.load(FEATURE_ENCODER / "expected.pt")
    with torch.set_grad_enabled(grad):
        out = model.eval()(**expected["inputs"])
    torch.testing.assert_close(out.logits.detach(), expected["logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.interaction_weights.detach(), expected["interaction_weights"], rtol=0, atol=1e-6)
