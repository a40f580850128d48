"""Weights that are broken or diverged never pass silently: a `model.safetensors` that is cut, empty or has an edited
header is an error naming the file and what is wrong with it (not safetensors' bare "incomplete metadata"), and a
model whose weights hold NaN or inf warns on load, naming the folder and how many tensors are non-finite."""

import json
import logging

import pytest
import torch

from dmil_hf import DMILConfig, DMILForMultimodalClassification, Modality
from dmil_hf.models.dmil import nonfinite_parameters
from dmil_hf.testing_utils import tiny_feature_encoder_config, tiny_text_config


def tiny_model():
    torch.manual_seed(0)
    config = DMILConfig(modality_table=[Modality("text", "text", tiny_text_config()),
                                        Modality("facs", "features", tiny_feature_encoder_config())],
                        num_labels=3, latent_dim=8)
    return DMILForMultimodalClassification(config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(folder)
    return folder


def _edited_header(data: bytes) -> bytes:
    """The file with one tensor's shape changed in its header (valid JSON, same length)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    key = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2 and v["shape"][0] < 9)
    header[key]["shape"][0] += 1
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(raw) == length
    return data[:8] + raw + data[8 + length :]


BREAKS = {
    "cut": (lambda data: data[: len(data) // 2], r"up to byte \d+, but the file has \d+ bytes \(cut short\)"),
    "empty": (lambda data: b"", r"it is empty \(0 bytes\)"),
    "header length": (lambda data: b"\xff" * 8 + data[8:], r"first 8 bytes give a header of \d+ bytes"),
    "header json": (lambda data: data[:8] + b"#" + data[9:], "header is not the JSON table of tensors"),
    "header shape": (_edited_header, r"takes? \d+ \(the header was edited\)"),
}


@pytest.mark.parametrize("damage", list(BREAKS))
def test_a_damaged_weight_file_is_an_error_naming_the_file_and_what_is_wrong(damage, saved, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in saved.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    weights = folder / "model.safetensors"
    make, says = BREAKS[damage]
    weights.write_bytes(make(weights.read_bytes()))
    with pytest.raises(OSError, match=says) as raised:
        DMILForMultimodalClassification.from_pretrained(folder)
    assert str(weights) in str(raised.value) and "incomplete metadata" not in str(raised.value).split("(")[0]


def test_an_intact_folder_still_loads_and_other_errors_pass_through(saved, tmp_path):
    model = DMILForMultimodalClassification.from_pretrained(saved)
    assert nonfinite_parameters(model) == []
    with pytest.raises(OSError) as raised:  # a folder without weights: transformers' own error, unchanged
        DMILForMultimodalClassification.from_pretrained(tmp_path)
    assert "cannot load the weights" not in str(raised.value)


def test_nonfinite_weights_warn_on_load_naming_the_folder_and_the_count(tmp_path, caplog):
    model = tiny_model()
    with torch.no_grad():
        next(model.head.parameters()).view(-1)[0] = float("nan")
        next(model.projections["text"].parameters()).fill_(float("inf"))
    broken = nonfinite_parameters(model)
    assert len(broken) == 2 and any(name.startswith("projections.text") for name in broken)
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dmil_hf.models.dmil.modeling_dmil"):
        loaded = DMILForMultimodalClassification.from_pretrained(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(warnings) == 1
    assert str(tmp_path) in warnings[0] and "in 2 of its" in warnings[0]
    assert sorted(nonfinite_parameters(loaded)) == sorted(broken)
