"""`torch.export` of a DMIL model, as docs/inference.md shows it: with the input checks on (the default), the
exported program (saved and loaded as a .pt2 file) gives eager's logits and gate; a dynamic batch and sequence
length work through a wrapper with named inputs; and eager forward still checks input values."""

import pytest
import torch

from dmil_hf import DMILConfig, DMILForMultimodalClassification
from dmil_hf.testing_utils import random_inputs, tiny_text_config, tiny_vision_config


def _trained_model(check_inputs=True):
    """A tiny text + vision model after a few optimizer steps (not its initial weights)."""
    config = DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), num_labels=3,
                        latent_dim=8, check_inputs=check_inputs)
    model = DMILForMultimodalClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        model(**random_inputs(config, batch_size=4, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def _inputs(config, batch_size, seq_len, seed):
    inputs = random_inputs(config, batch_size=batch_size, seq_len=seq_len, seed=seed)
    inputs.pop("labels")
    inputs["attention_mask"][1, seq_len // 2:] = 0  # padding in one sample
    return inputs


def test_export_with_input_checks_on_matches_eager(tmp_path):
    model = _trained_model()
    assert model.config.check_inputs
    inputs = _inputs(model.config, batch_size=3, seq_len=7, seed=10)
    # The call of docs/inference.md: keyword inputs, nothing else; saved and loaded as a .pt2 file.
    torch.export.save(torch.export.export(model, args=(), kwargs=inputs), tmp_path / "dmil.pt2")
    program = torch.export.load(tmp_path / "dmil.pt2")
    with torch.no_grad():
        exported, eager = program.module()(**inputs), model(**inputs)
    torch.testing.assert_close(exported.logits, eager.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(exported.interaction_weights, eager.interaction_weights, atol=1e-5, rtol=0)
    # Eager forward still reads values: an out-of-vocabulary id is refused, as before.
    bad = dict(inputs, input_ids=inputs["input_ids"].clone())
    bad["input_ids"][0, 0] = model.config.text_config.vocab_size
    with pytest.raises(ValueError, match="input_ids"):
        model(**bad)


class NamedInputs(torch.nn.Module):
    """docs/inference.md's wrapper: named inputs, so that dynamic_shapes can name them (torch.export cannot give
    dynamic shapes to the inputs of a `**kwargs` forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        return outputs.logits, outputs.interaction_weights


def test_export_with_a_dynamic_batch_and_sequence_length():
    model = _trained_model()
    batch, sequence = torch.export.Dim("batch", max=1024), torch.export.Dim("sequence", max=64)
    shapes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence},
              "pixel_values": {0: batch}}
    program = torch.export.export(NamedInputs(model), args=(), kwargs=_inputs(model.config, 3, 7, seed=1),
                                  dynamic_shapes=shapes)
    other = _inputs(model.config, batch_size=5, seq_len=11, seed=2)  # another batch size and length
    with torch.no_grad():
        logits, weights = program.module()(**other)
        eager = model(**other)
    torch.testing.assert_close(logits, eager.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights, eager.interaction_weights, atol=1e-5, rtol=0)
