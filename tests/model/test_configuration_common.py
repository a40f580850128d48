"""DMILConfig under the checks transformers' ConfigTester runs on the config of every model of its own
(tests/test_configuration_common.py in the transformers repository), written for a composite config whose
sub-configs are the backbones' own. Behaviour specific to DMILConfig (validation, the modality table, loss weights)
is in test_configuration.py.

Not applicable here, with the reason:
- "common properties" (hidden_size, num_attention_heads, num_hidden_layers, vocab_size on the config): DMILConfig
  has no transformer of its own; those properties belong to each backbone config, whose own model tests check them.
"""

import json

import pytest
from transformers import AutoConfig, BertConfig, PretrainedConfig, ViTConfig, Wav2Vec2Config

from dmil_hf import DMILConfig
from dmil_hf.testing_utils import tiny_dmil_config

# Non-default values of DMILConfig's own arguments and of arguments every PretrainedConfig takes.
OWN_KWARGS = dict(paradigm="joint", latent_dim=24, num_labels=4, check_inputs=False, kl_weight=0.5)
COMMON_KWARGS = dict(
    return_dict=False, output_hidden_states=True, output_attentions=True, problem_type="multi_label_classification"
)


def _dict(config: PretrainedConfig) -> dict:
    # The folder a config was read from is not part of its value.
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


@pytest.fixture
def config() -> DMILConfig:
    return tiny_dmil_config(**OWN_KWARGS, **COMMON_KWARGS)


def test_to_json_string_holds_the_given_values(config):
    saved = json.loads(config.to_json_string())
    for key, value in OWN_KWARGS.items():
        # num_labels is saved as the label maps it builds, as in every transformers config.
        assert (len(saved["id2label"]) if key == "num_labels" else saved[key]) == value, key
    assert saved["problem_type"] == "multi_label_classification"
    # The backbones are nested configs with their model_type, as transformers' composite configs save them.
    assert [saved[f"{m}_config"]["model_type"] for m in ("text", "vision", "audio")] == ["bert", "vit", "wav2vec2"]


def test_to_json_file_and_from_json_file(config, tmp_path):
    config.to_json_file(tmp_path / "config.json")
    assert _dict(DMILConfig.from_json_file(tmp_path / "config.json")) == _dict(config)


@pytest.mark.parametrize("loader", [DMILConfig, AutoConfig])
def test_save_pretrained_and_from_pretrained(config, tmp_path, loader):
    config.save_pretrained(tmp_path)
    loaded = loader.from_pretrained(tmp_path)
    assert type(loaded) is DMILConfig and _dict(loaded) == _dict(config)


def test_save_pretrained_and_from_pretrained_subfolder(config, tmp_path):
    config.save_pretrained(tmp_path / "sub")
    assert _dict(DMILConfig.from_pretrained(tmp_path, subfolder="sub")) == _dict(config)


def test_composite_sub_configs_load_back_as_their_own_classes(config, tmp_path):
    """ConfigTester's composite check: every sub-config `sub_configs` lists comes back as its own class and value."""
    config.save_pretrained(tmp_path)
    loaded = DMILConfig.from_pretrained(tmp_path)
    expected = {"text_config": BertConfig, "vision_config": ViTConfig, "audio_config": Wav2Vec2Config}
    assert set(expected) <= set(loaded.sub_configs)
    for key, cls in expected.items():
        assert type(getattr(loaded, key)) is cls, key
        assert _dict(getattr(loaded, key)) == _dict(getattr(config, key)), key


def test_num_labels_sets_the_label_maps_and_can_change():
    config = tiny_dmil_config(num_labels=5)
    assert len(config.id2label) == len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == len(config.label2id) == 3


def test_config_can_be_built_without_arguments():
    # transformers builds `DMILConfig()` for its defaults (to_diff_dict); a model needs two backbones, so that
    # config serves only that purpose (test_configuration.py: the model refuses it).
    config = DMILConfig()
    assert config.modalities == [] and json.loads(config.to_json_string())["model_type"] == "dmil"


def test_common_arguments_are_set(config):
    """ConfigTester's check_config_arguments_init: every PretrainedConfig argument given reaches the config."""
    for key, value in COMMON_KWARGS.items():
        assert getattr(config, key) == value, key


def test_from_dict_round_trip_and_unused_kwargs(config):
    again, unused = DMILConfig.from_dict(config.to_dict(), return_unused_kwargs=True, not_a_field=1)
    assert _dict(again) == _dict(config) and unused == {"not_a_field": 1}
