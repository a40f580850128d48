"""Bad input that used to crash deep inside a backbone or be silently coerced: each gets a clear error naming the
input, or is cast to what the backbone needs."""

import pytest
import torch

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.testing_utils import random_inputs
from dmil_hf.testing_utils import tiny_dmil_config as make_config

TVA = ("text", "vision", "audio")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DMILForMultimodalClassification(make_config(TVA)).eval()


def _inputs(model, **changes):
    inputs = {k: v for k, v in random_inputs(model.config, batch_size=2).items() if k != "labels"}
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, float("nan")])
def test_modality_mask_values_other_than_zero_or_one(model, value):
    mask = torch.ones(2, 3)
    mask[0, 1] = value
    with pytest.raises(ValueError, match="modality_mask must hold only 0/1"):
        model(**_inputs(model), modality_mask=mask)


def test_integer_modality_mask_of_zeros_and_ones_is_fine(model):
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.uint8)
    with torch.no_grad():
        out = model(**_inputs(model), modality_mask=mask)
    assert out.interaction_weights[0, 2].item() == 0.0  # uniqueness_vision of the sample without vision


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8])
def test_input_ids_of_bool_or_uint8(model, dtype):
    inputs = _inputs(model)
    with pytest.raises(TypeError, match="input_ids must be integer token ids"):
        model(**{**inputs, "input_ids": inputs["input_ids"].to(dtype)})


@pytest.mark.parametrize("length", [0, 67])
def test_text_of_length_zero_or_beyond_the_position_embeddings(model, length):
    ids = torch.full((2, length), 5, dtype=torch.long)
    with pytest.raises(ValueError, match="input_ids must have between 1 and 66 tokens"):
        model(**_inputs(model, input_ids=ids, attention_mask=torch.ones_like(ids)))


@pytest.mark.parametrize("samples", [1, 10, 44])
def test_audio_shorter_than_the_feature_encoders_receptive_field(model, samples):
    # The tiny wav2vec2: kernels (10, 8), strides (5, 4) -> 10 + 7 * 5 = 45 samples make one frame.
    with pytest.raises(ValueError, match="input_values must have at least 45 samples"):
        model(**_inputs(model, input_values=torch.randn(2, samples)))
    with torch.no_grad():
        model(**_inputs(model, input_values=torch.randn(2, 45)))


@pytest.mark.parametrize("name, value", [("pixel_values", 3e38), ("input_values", 1e30)])
def test_huge_finite_values_are_an_error_not_nan_logits(model, name, value):
    inputs = _inputs(model)
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[0] = value
    with pytest.raises(ValueError, match=f"{name} has values up to"):
        model(**inputs)


def test_float64_and_float32_inputs_are_cast_to_the_backbones_dtype():
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(make_config(TVA)).eval()
    inputs = _inputs(model)
    with torch.no_grad():
        reference = model(**inputs).logits
        as_float64 = model(**{k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}).logits
        torch.testing.assert_close(as_float64, reference)
        model.to(torch.bfloat16)
        out = model(**inputs)  # float32 images and audio into a bf16 model
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("edit", ["paradigm", "synergy_fusion", "drop_gate"])
def test_a_folder_whose_config_disagrees_with_its_weights_refuses_to_load(tmp_path, edit):
    import json

    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    DMILForMultimodalClassification(make_config(("text", "vision"))).save_pretrained(tmp_path)
    config_path, weights_path = tmp_path / "config.json", tmp_path / "model.safetensors"
    if edit == "drop_gate":
        weights = {k: v for k, v in load_file(weights_path).items() if not k.startswith("head.interaction_gate.")}
        save_file(weights, weights_path, metadata={"format": "pt"})
    else:
        config = json.loads(config_path.read_text())
        config[edit] = {"paradigm": "joint", "synergy_fusion": "linear"}[edit]
        config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match the model its config describes"):
        DMILForMultimodalClassification.from_pretrained(tmp_path)
