"""Every supported backbone family inside DMIL: build, forward, backward; pretrained loading of composite
checkpoints (Whisper, CLIP); gradient checkpointing, attention implementations and bf16 autocast."""

import pytest
import torch
from transformers import AutoModel, CLIPConfig, CLIPModel, WhisperForConditionalGeneration

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.testing_utils import (
    AUDIO_FAMILIES,
    TEXT_FAMILIES,
    VISION_FAMILIES,
    random_inputs,
    tiny_audio_config,
    tiny_text_config,
    tiny_vision_config,
)
from dmil_hf.testing_utils import tiny_dmil_config as make_config

FAMILIES = (
    [("text", f) for f in TEXT_FAMILIES] + [("vision", f) for f in VISION_FAMILIES] + [("audio", f) for f in AUDIO_FAMILIES]
)
# Two configurations that between them hold every family once.
FAMILY_SETS = {
    "bert-vit-wav2vec2": dict(text="bert", vision="vit", audio="wav2vec2"),
    "roberta-clip-whisper": dict(text="roberta", vision="clip_vision_model", audio="whisper"),
    "bert-dinov2-ast": dict(text="bert", vision="dinov2", audio="audio-spectrogram-transformer"),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, above all on cores shared with other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(config, seed=0):
    torch.manual_seed(seed)
    return DMILForMultimodalClassification(config)


def grads_reach(module):
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


@pytest.mark.parametrize("modality, family", FAMILIES, ids=[f for _, f in FAMILIES])
def test_backbone_family_forward_backward(modality, family):
    partner = "vision" if modality == "text" else "text"
    config = make_config((modality, partner), **{modality: family})
    assert config.backbone_config(modality).model_type == family
    model = build(config).train()
    inputs = random_inputs(config)
    out = model(**inputs)
    assert out.logits.shape == (4, 3) and out.interaction_weights.shape == (4, 4)
    assert bool(torch.isfinite(out.loss))
    out.loss.backward()
    for m in config.modalities:
        assert grads_reach(model.backbones[m]), f"no gradient reached the {m} backbone"
    assert grads_reach(model.projections[modality])


def test_audio_spectrogram_accepts_either_input_name():
    config = make_config(("text", "audio"), audio="audio-spectrogram-transformer")
    model = build(config).eval()
    inputs = random_inputs(config)
    assert inputs["input_features"].dim() == 3
    with torch.no_grad():
        as_features = model(**inputs).logits
        as_values = model(**{**inputs, "input_features": None, "input_values": inputs["input_features"]}).logits
    torch.testing.assert_close(as_values, as_features, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input_features"):
        model(**{**inputs, "input_features": inputs["input_features"][:, :16]})
    with pytest.raises(ValueError, match="input_features"):
        model(**{**inputs, "input_features": inputs["input_features"][:, :, 0]})


def test_whisper_input_layout_and_mask():
    config = make_config(("text", "audio"), audio="whisper")
    model = build(config).eval()
    inputs = random_inputs(config)
    frames = inputs["input_features"].shape[-1]
    with torch.no_grad():
        plain = model(**inputs).logits
        # The feature extractor's mask counts frames, the last dim of (batch, mel, frames).
        masked = model(**inputs, audio_attention_mask=torch.ones(4, frames, dtype=torch.long)).logits
    torch.testing.assert_close(masked, plain)
    with pytest.raises(ValueError, match="input_features"):
        model(**{**inputs, "input_features": inputs["input_features"][..., : frames // 2]})
    with pytest.raises(ValueError, match="audio_attention_mask"):
        model(**inputs, audio_attention_mask=torch.ones(4, 7, dtype=torch.long))


def test_dinov2_takes_any_image_size():
    config = make_config(("text", "vision"), vision="dinov2")
    model = build(config).eval()
    inputs = random_inputs(config)
    with torch.no_grad():
        for size in (16, 24):
            out = model(**{**inputs, "pixel_values": torch.randn(4, 3, size, size)})
            assert bool(torch.isfinite(out.logits).all())


def test_waveform_mask_maps_to_frames():
    config = make_config(("text", "audio"))
    model = build(config).eval()
    inputs = random_inputs(config)
    mask = torch.ones(4, 1600, dtype=torch.long)
    mask[1, 800:] = 0
    with torch.no_grad():
        full = model(**inputs).logits
        padded = model(**inputs, audio_attention_mask=mask).logits
    torch.testing.assert_close(padded[[0, 2, 3]], full[[0, 2, 3]], rtol=0, atol=1e-5)
    assert (padded[1] - full[1]).abs().max() > 1e-6  # the padded frames left the mean


# ------------------------------------------------------------------------------------------- composite checkpoints


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("checkpoint", ["WhisperModel", "WhisperForConditionalGeneration"])
def test_whisper_encoder_weights_load_from_a_full_checkpoint(tmp_path, checkpoint):
    whisper_config = tiny_audio_config("whisper")
    torch.manual_seed(5)
    full = AutoModel.from_config(whisper_config) if checkpoint == "WhisperModel" else WhisperForConditionalGeneration(whisper_config)
    full.save_pretrained(tmp_path / "whisper")
    expected = _state(full.get_encoder())
    AutoModel.from_config(tiny_text_config()).save_pretrained(tmp_path / "text")

    model = DMILForMultimodalClassification.from_backbones_pretrained(
        text=str(tmp_path / "text"), audio=str(tmp_path / "whisper")
    )
    encoder = model.backbones["audio"]
    assert type(encoder).__name__ == "WhisperEncoder"
    state = encoder.state_dict()
    assert set(state) == set(expected)
    for key, value in state.items():
        assert torch.equal(value, expected[key]), f"whisper encoder {key} was not loaded"


def test_clip_vision_tower_loads_from_a_full_clip_checkpoint(tmp_path):
    vision = tiny_vision_config("clip_vision_model")
    clip_config = CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99),
        vision_config=vision.to_dict(), projection_dim=16,
    )
    torch.manual_seed(6)
    clip = CLIPModel(clip_config)
    clip.save_pretrained(tmp_path / "clip")
    expected = _state(clip.vision_model)
    AutoModel.from_config(tiny_text_config()).save_pretrained(tmp_path / "text")

    model = DMILForMultimodalClassification.from_backbones_pretrained(
        text=str(tmp_path / "text"), vision=str(tmp_path / "clip")
    )
    assert model.config.vision_config.model_type == "clip_vision_model"
    state = model.backbones["vision"].state_dict()
    assert set(state) == set(expected)
    for key, value in state.items():
        assert torch.equal(value, expected[key]), f"clip vision {key} was not loaded"


# ------------------------------------------------------------------------------------------- training features


@pytest.mark.parametrize("families", list(FAMILY_SETS), ids=list(FAMILY_SETS))
def test_gradient_checkpointing(families):
    config = make_config(**FAMILY_SETS[families])
    model = build(config).train()
    assert model.supports_gradient_checkpointing
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    for m, backbone in model.backbones.items():
        flags = [mod.gradient_checkpointing for mod in backbone.modules() if hasattr(mod, "gradient_checkpointing")]
        assert flags and all(flags), f"checkpointing not on in the {m} backbone"
    out = model(**random_inputs(config))
    out.loss.backward()
    for m, backbone in model.backbones.items():
        assert grads_reach(backbone), f"no gradient reached the {m} backbone under checkpointing"
    model.gradient_checkpointing_disable()
    assert not any(getattr(mod, "gradient_checkpointing", False) for mod in model.modules())


@pytest.mark.parametrize("families", list(FAMILY_SETS), ids=list(FAMILY_SETS))
def test_attention_implementation_reaches_every_backbone(tmp_path, families):
    config = make_config(**FAMILY_SETS[families])
    build(config).save_pretrained(tmp_path)
    inputs = random_inputs(config)
    logits = {}
    for impl in ("sdpa", "eager"):
        model = AutoModel.from_pretrained(tmp_path, attn_implementation=impl).eval()
        assert model.config._attn_implementation == impl
        for m in model.modalities:
            assert model.config.backbone_config(m)._attn_implementation == impl, (m, impl)
            assert model.backbones[m].config._attn_implementation == impl, (m, impl)
        with torch.no_grad():
            logits[impl] = model(**inputs).logits
    torch.testing.assert_close(logits["sdpa"], logits["eager"], rtol=1e-4, atol=1e-5)


def _bf16_step(model, inputs):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs)
    out.loss.backward()
    return out


@pytest.mark.parametrize("paradigm", ["dmil", "joint", "ensemble", "two_stage", "i2m2"])
def test_bf16_autocast_forward_backward(paradigm):
    config = make_config(paradigm=paradigm)
    model = build(config).train()
    out = _bf16_step(model, random_inputs(config))
    assert bool(torch.isfinite(out.loss)) and all(bool(torch.isfinite(v)) for v in out.loss_terms.values())
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    if paradigm == "dmil":
        torch.testing.assert_close(out.interaction_weights.sum(-1), torch.ones(4), rtol=0, atol=1e-5)


def test_bf16_large_inputs_stay_finite_thanks_to_the_logvar_clamp():
    config = make_config()
    inputs = random_inputs(config)
    # Large but within the input check's bound (|x| <= 1e4); the projections below blow the latents up further.
    inputs["pixel_values"] = inputs["pixel_values"] * 1e3
    inputs["input_values"] = inputs["input_values"] * 1e3

    def blown_up(logvar_clamp):
        model = build(make_config(logvar_clamp=logvar_clamp)).train()
        with torch.no_grad():  # features ~1e3 in every latent: an unclamped log-variance of ~1e3 overflows exp()
            for projection in model.projections.values():
                projection.weight.mul_(1e4)
        return model

    model = blown_up(config.logvar_clamp)
    out = _bf16_step(model, inputs)
    assert bool(torch.isfinite(out.loss)), out.loss_terms
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())

    # The same model without an effective clamp overflows: the clamp is what keeps it finite.
    unclamped = blown_up(1e9)
    unclamped.load_state_dict(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bad = unclamped(**inputs)
    assert not bool(torch.isfinite(bad.loss))


# ------------------------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("modality", ["text", "vision"])
def test_pooler_pooling_builds_the_pooler(tmp_path, modality):
    """BERT and ViT are built without their pooler by default; choosing 'pooler' pooling must build it."""
    config = make_config(("text", "vision"), pooling={modality: "pooler"})
    model = build(config).eval()
    assert model.backbones[modality].pooler is not None
    inputs = random_inputs(config)
    out = model(**inputs)
    out.loss.backward()
    assert grads_reach(model.backbones[modality].pooler)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=1e-6)


def test_pooler_pooling_from_backbones_pretrained(tmp_path):
    torch.manual_seed(3)
    text = AutoModel.from_config(tiny_text_config())  # saved with its pooler
    text.save_pretrained(tmp_path / "text")
    AutoModel.from_config(tiny_vision_config()).save_pretrained(tmp_path / "vision")
    model = DMILForMultimodalClassification.from_backbones_pretrained(
        text=str(tmp_path / "text"), vision=str(tmp_path / "vision"), pooling={"text": "pooler"}
    )
    assert torch.equal(model.backbones["text"].pooler.dense.weight, text.pooler.dense.weight)
    assert model.backbones["vision"].pooler is None


def test_pooler_pooling_on_a_backbone_without_pooler_is_a_clear_error():
    config = make_config(("text", "audio"), pooling={"audio": "pooler"})
    model = build(config).eval()
    with pytest.raises(ValueError, match="pooler.*audio.*wav2vec2"):
        model(**random_inputs(config))
