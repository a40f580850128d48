"""A time mask holds 0 (padding) and 1 (kept) only: a video frame mask (or any other) with a 2, a 255 or a -1 weighs
frames in the temporal mean and shifts the logits, so the model refuses it, naming the input and the values."""

import pytest
import torch

from dmil_hf import DMILConfig, DMILForMultimodalClassification, Modality
from dmil_hf.testing_utils import random_inputs, tiny_feature_encoder_config, tiny_text_config, tiny_vision_config

ROWS = {
    "video": lambda: Modality("rgb", "video", tiny_vision_config()),
    "features": lambda: Modality("facs", "features", tiny_feature_encoder_config()),
    "text": lambda: Modality("text", "text", tiny_text_config()),
}
MASKS = {"video": "rgb_attention_mask", "features": "facs_attention_mask", "text": "attention_mask"}


def model_and_inputs(check_inputs=True):
    torch.manual_seed(0)
    config = DMILConfig(modality_table=[ROWS[k]() for k in ROWS], num_labels=3, latent_dim=8,
                        check_inputs=check_inputs)
    inputs = random_inputs(config)
    inputs.pop("labels")
    return DMILForMultimodalClassification(config).eval(), inputs


@pytest.mark.parametrize("kind", list(MASKS))
@pytest.mark.parametrize("value", [2, 255, -1])
def test_a_mask_with_values_other_than_0_and_1_is_refused(kind, value):
    model, inputs = model_and_inputs()
    name = MASKS[kind]
    inputs[name] = inputs[name].clone()
    inputs[name][1, 0] = value
    with pytest.raises(ValueError, match=rf"{name} must hold only 0 \(padding\) and 1 \(kept\).* got the values \[{value}\]"):
        model(**inputs)


def test_0_1_and_bool_masks_give_the_same_logits():
    model, inputs = model_and_inputs()
    inputs["rgb_attention_mask"][1, -1] = 0
    with torch.no_grad():
        ints = model(**inputs).logits
        inputs["rgb_attention_mask"] = inputs["rgb_attention_mask"].bool()
        bools = model(**inputs).logits
    torch.testing.assert_close(ints, bools)
