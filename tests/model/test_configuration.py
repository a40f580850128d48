"""DMILConfig: sub-config handling, serialisation round trips, validation."""

import json

import pytest
from transformers import (
    AutoConfig,
    BertConfig,
    CLIPConfig,
    CLIPVisionConfig,
    PretrainedConfig,
    RobertaConfig,
    ViTConfig,
    Wav2Vec2Config,
)

from dmil_hf import DMILConfig, DMILForMultimodalClassification
from dmil_hf.testing_utils import tiny_text_config, tiny_vision_config
from dmil_hf.testing_utils import tiny_dmil_config as make_config

LOSS_WEIGHTS = dict(
    logvar_clamp=5.0, kl_weight=0.03, alignment_weight=2.0, stage1_reconstruction_weight=0.2,
    stage2_component_weight=0.7, stage2_reconstruction_weight=0.004, stage3_modality_weight=0.6,
    stage3_component_weight=0.9, stage3_consistency_kl_scale=0.3, stage3_reconstruction_z_weight=0.002,
    stage3_reconstruction_m_weight=0.001,
)


def _non_default_backbones():
    """RoBERTa text and CLIP-vision towers under DMILConfig's bert/vit defaults, with values chosen to equal the
    *default* family's defaults but not their own (the failure mode of transformers PR 36077)."""
    text = RobertaConfig(
        vocab_size=30522,  # BERT's default, not RoBERTa's 50265
        pad_token_id=0,  # BERT's default, not RoBERTa's 1
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    )
    vision = CLIPVisionConfig(
        hidden_act="gelu",  # ViT's default, not CLIP's quick_gelu
        patch_size=16,  # ViT's default, not CLIP's 32
        image_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    )
    return text, vision


def _sub_dict(config: PretrainedConfig) -> dict:
    d = config.to_dict()
    d.pop("transformers_version", None)
    return d


def test_modalities_and_components_follow_fixed_order():
    config = DMILConfig(audio_config=Wav2Vec2Config(), text_config=BertConfig())
    assert config.modalities == ["text", "audio"]
    assert config.interaction_components == ["redundancy", "uniqueness_text", "uniqueness_audio", "synergy"]
    assert make_config().interaction_components == [
        "redundancy", "uniqueness_text", "uniqueness_vision", "uniqueness_audio", "synergy",
    ]


def test_default_constructible_without_backbones():
    # transformers builds DMILConfig() for defaults; the model refuses it.
    config = DMILConfig()
    assert config.modalities == [] and config.paradigm == "dmil" and config.latent_dim == 128
    with pytest.raises(ValueError, match="two or three"):
        DMILForMultimodalClassification(config)


def test_documented_loss_weight_defaults():
    # reference/dmil-method.md §3-4: effective KL 0.02, component CE 0.5 in stage 2 and 0.8 in stage 3.
    config = DMILConfig()
    assert config.kl_weight == pytest.approx(0.02)
    assert config.stage2_component_weight == pytest.approx(0.5)
    assert config.stage3_component_weight == pytest.approx(0.8)
    assert config.alignment_weight == pytest.approx(1.0)
    assert config.logvar_clamp > 0


def test_dict_subconfigs_use_modality_default_type_or_given_type():
    config = DMILConfig(
        text_config={"hidden_size": 32, "num_attention_heads": 4},
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "num_attention_heads": 4},
        audio_config={},
    )
    assert isinstance(config.text_config, BertConfig) and config.text_config.hidden_size == 32
    assert isinstance(config.vision_config, CLIPVisionConfig)
    assert isinstance(config.audio_config, Wav2Vec2Config)


def test_full_clip_config_contributes_its_vision_tower():
    clip = CLIPConfig(vision_config={"hidden_size": 32, "num_attention_heads": 4})
    config = DMILConfig(text_config=BertConfig(), vision_config=clip)
    assert isinstance(config.vision_config, CLIPVisionConfig)
    assert config.vision_config.hidden_size == 32


@pytest.mark.parametrize("loader", [DMILConfig, AutoConfig])
def test_round_trip_non_default_backbones_labels_and_weights(tmp_path, loader):
    text, vision = _non_default_backbones()
    id2label = {0: "neg", 1: "neu", 2: "pos", 3: "other"}
    config = DMILConfig(
        text_config=text, vision_config=vision, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        latent_dim=24, paradigm="ensemble", pooling={"vision": "cls"}, check_inputs=False, **LOSS_WEIGHTS,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "dmil"
    assert saved["text_config"]["model_type"] == "roberta"
    assert saved["vision_config"]["model_type"] == "clip_vision_model"
    assert "audio_config" not in saved or saved["audio_config"] is None

    loaded = loader.from_pretrained(tmp_path)
    assert type(loaded) is DMILConfig
    assert type(loaded.text_config) is RobertaConfig
    assert type(loaded.vision_config) is CLIPVisionConfig
    assert loaded.audio_config is None
    assert loaded.modalities == ["text", "vision"]
    # The values equal to BERT/ViT defaults survive (they are not RoBERTa/CLIP defaults).
    assert loaded.text_config.vocab_size == 30522 and loaded.text_config.pad_token_id == 0
    assert loaded.vision_config.hidden_act == "gelu" and loaded.vision_config.patch_size == 16
    assert _sub_dict(loaded.text_config) == _sub_dict(config.text_config)
    assert _sub_dict(loaded.vision_config) == _sub_dict(config.vision_config)
    assert loaded.num_labels == 4
    assert loaded.id2label == id2label
    assert loaded.label2id == {"neg": 0, "neu": 1, "pos": 2, "other": 3}
    assert (loaded.latent_dim, loaded.paradigm, loaded.pooling, loaded.check_inputs) == (24, "ensemble", {"vision": "cls"}, False)
    for name, value in LOSS_WEIGHTS.items():
        assert getattr(loaded, name) == pytest.approx(value), name
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())


def test_num_labels_builds_label_maps_and_round_trips(tmp_path):
    config = make_config(num_labels=5)
    assert config.num_labels == 5 and config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    config.save_pretrained(tmp_path)
    loaded = DMILConfig.from_pretrained(tmp_path)
    assert loaded.num_labels == 5 and loaded.id2label == config.id2label


def test_to_json_string_and_from_dict_round_trip():
    config = make_config(("vision", "audio"), paradigm="joint", audio="hubert", vision="dinov2")
    again = DMILConfig.from_dict(json.loads(config.to_json_string()))
    assert again.modalities == ["vision", "audio"]
    assert again.audio_config.model_type == "hubert" and again.vision_config.model_type == "dinov2"
    assert again.to_dict() == config.to_dict()


def test_backbone_attention_choice_is_kept():
    """PretrainedConfig.__init__ would reset every sub-config's attn_implementation to None; DMILConfig keeps them."""
    text = tiny_text_config()
    text._attn_implementation = "eager"
    config = DMILConfig(text_config=text, vision_config=tiny_vision_config())
    assert config.text_config._attn_implementation == "eager"
    forced = DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), attn_implementation="eager")
    assert forced.text_config._attn_implementation == forced.vision_config._attn_implementation == "eager"


def test_backbone_config_lookup():
    config = make_config(("text", "vision"))
    assert config.backbone_config("text") is config.text_config
    with pytest.raises(ValueError, match="no audio backbone"):
        config.backbone_config("audio")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(text_config=BertConfig()), ValueError, "only \\['text'\\]"),
        (dict(vision_config=ViTConfig()), ValueError, "at least two"),
        (dict(text_config=BertConfig(), vision_config=ViTConfig(), paradigm="late_fusion"), ValueError, "paradigm"),
        (dict(text_config=BertConfig(), vision_config=ViTConfig(), latent_dim=0), ValueError, "latent_dim"),
        (dict(text_config=BertConfig(), vision_config=ViTConfig(), pooling={"text": "max"}), ValueError, "pooling"),
        (dict(text_config=BertConfig(), vision_config=ViTConfig(), pooling={"video": "cls"}), ValueError, "pooling"),
        (dict(text_config="bert", vision_config=ViTConfig()), TypeError, "text_config"),
        (dict(text_config=BertConfig(), audio_config=42), TypeError, "audio_config"),
    ],
)
def test_bad_config_is_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        DMILConfig(**kwargs)


@pytest.mark.parametrize("field, value", [
    ("kl_weight", -1.0), ("stage2_component_weight", float("nan")), ("gate_composition_weight", float("inf")),
    ("stage1_kl_weight", {"text": 0.1, "vision": -0.5}), ("stage1_reconstruction_weight", {"default": float("nan")}),
])
def test_a_loss_weight_must_be_finite_and_not_negative(field, value):
    # A negative weight maximised its term and a NaN one made every loss NaN, both accepted without a word.
    with pytest.raises(ValueError, match=f"{field} must be a finite loss weight >= 0"):
        DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), **{field: value})
    DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), **{field: 0.0})  # 0 turns a term off


def test_num_labels_below_one_is_refused():
    with pytest.raises(ValueError, match="num_labels must be at least 1"):
        DMILConfig(num_labels=0)
    assert DMILConfig(num_labels=1).num_labels == 1
