"""DMILForMultimodalClassification under the checks transformers' ModelTesterMixin runs on every model of its own
(tests/test_modeling_common.py in the transformers repository), written for a composite model whose attention lives
in its backbones: save/load, determinism, every attention implementation it claims, gradient checkpointing, dtype,
parameter counts, token-embedding resizing.

Common checks covered in other files: batching equivalence (test_modeling.py::test_batching_equivalence), tuple vs
ModelOutput (test_modeling.py::test_return_dict_false_gives_tuple_in_field_order), missing / mismatched keys refused
(test_bad_inputs.py::test_a_folder_whose_config_disagrees_with_its_weights_refuses_to_load), problem types
(test_problem_types.py), torch.compile (test_compile.py), sdpa vs eager for more backbone families and bf16 autocast
(test_modeling_backbones.py), remote code (test_remote_code.py), the configuration (test_configuration_common.py).

Common checks that do not apply, with the reason:
- tied weights (`_tied_weights_keys`): a classifier has no output embedding to tie to an input embedding.
- `_keep_in_fp32_modules`: none declared; the head computes its KLs in float32 itself (test_modeling.py).
- inputs_embeds: forward takes each modality's own inputs; there is no single embedding sequence to replace.
- attention and hidden-state outputs (output_attentions / output_hidden_states): DMILOutput carries the method's
  outputs (logits, interaction weights, component logits); the attentions are the backbones', from the backbones.
- head masking, pruning, feed-forward chunking: removed from transformers 5 or the backbones' own business.
- multi-GPU data/model parallelism, device_map (`_no_split_modules`): the suite runs on CPU; distributed training
  is the Trainer's (tests/training/test_distributed_fsdp.py, tests/cli/test_cli.py).
- generation, past key values, cache: not a generative model.
"""

import copy

import pytest
import torch
from transformers import AutoModel

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.models.dmil.backbones_dmil import BACKBONES, backbone_spec
from dmil_hf.models.dmil.configuration_dmil import PARADIGMS
from dmil_hf.models.dmil.modeling_dmil import _build_backbone
from dmil_hf.testing_utils import random_inputs, tiny_backbone_config, tiny_dmil_config

TVA = ("text", "vision", "audio")


def build(config) -> DMILForMultimodalClassification:
    torch.manual_seed(0)
    return DMILForMultimodalClassification(config)


def inputs_and_labels(config, **kwargs) -> tuple[dict, torch.Tensor]:
    inputs = random_inputs(config, **kwargs)
    return inputs, inputs.pop("labels")


def padded(inputs: dict) -> dict:
    """The same inputs with padding: the last tokens of two texts and the end of two clips masked out."""
    inputs = dict(inputs)
    mask = torch.ones_like(inputs["input_ids"])
    mask[0, -3:] = 0
    mask[2, -5:] = 0
    inputs["attention_mask"] = mask
    audio = torch.ones(inputs["input_values"].shape, dtype=torch.long)
    audio[1, -400:] = 0
    audio[3, -800:] = 0
    inputs["audio_attention_mask"] = audio
    return inputs


def logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny text + vision + audio DMIL model saved the ordinary way, with its inputs and eval logits."""
    folder = tmp_path_factory.mktemp("dmil")
    config = tiny_dmil_config(TVA)
    model = build(config).eval()
    inputs, _ = inputs_and_labels(config)
    model.save_pretrained(folder)
    return folder, inputs, logits(model, inputs)


# ------------------------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_save_load_gives_the_same_weights_and_outputs(tmp_path, paradigm):
    config = tiny_dmil_config(TVA, paradigm=paradigm)
    model = build(config).eval()
    inputs, _ = inputs_and_labels(config)
    model.save_pretrained(tmp_path / "first")
    # safetensors only, as transformers saves by default.
    assert (tmp_path / "first" / "model.safetensors").is_file()
    assert not (tmp_path / "first" / "pytorch_model.bin").exists()
    loaded = AutoModel.from_pretrained(tmp_path / "first").eval()
    assert type(loaded) is DMILForMultimodalClassification
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), rtol=0, atol=0)
    # Saving what was loaded gives the same checkpoint again.
    loaded.save_pretrained(tmp_path / "second")
    again = AutoModel.from_pretrained(tmp_path / "second").eval()
    torch.testing.assert_close(logits(again, inputs), logits(model, inputs), rtol=0, atol=0)


def test_from_pretrained_with_a_state_dict_and_no_checkpoint(saved):
    folder, inputs, expected = saved
    model = AutoModel.from_pretrained(folder)
    again = DMILForMultimodalClassification.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    torch.testing.assert_close(logits(again.eval(), inputs), expected, rtol=0, atol=0)


def test_the_same_seed_builds_the_same_model_with_finite_weights():
    config = tiny_dmil_config(TVA)
    first, second = build(config).state_dict(), build(config).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.isfinite(v).all() for v in first.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------- determinism


def test_eval_is_deterministic_and_train_samples(saved):
    folder, inputs, expected = saved
    model = AutoModel.from_pretrained(folder).eval()
    torch.testing.assert_close(logits(model, inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits(model, inputs), expected, rtol=0, atol=0)
    # Train mode samples the latents (and the backbones' dropout): another answer; eval gives the first one back.
    assert not torch.equal(logits(model.train(), inputs), expected)
    torch.testing.assert_close(logits(model.eval(), inputs), expected, rtol=0, atol=0)


def test_model_is_small():
    # transformers keeps its common-test models under a million parameters so the suite stays fast; so do we.
    assert build(tiny_dmil_config(TVA)).num_parameters() < 1_000_000


# ------------------------------------------------------------------------------------------------- attention


def test_sdpa_matches_eager_with_padding(saved):
    """`_supports_sdpa`: the implementation reaches every backbone and gives eager's logits, padded inputs included."""
    folder, inputs, _ = saved
    inputs = padded(inputs)
    results = {}
    for impl in ("eager", "sdpa"):
        model = AutoModel.from_pretrained(folder, attn_implementation=impl).eval()
        assert model.config._attn_implementation == impl
        assert {m: b.config._attn_implementation for m, b in model.backbones.items()} == dict.fromkeys(TVA, impl)
        results[impl] = logits(model, inputs)
    torch.testing.assert_close(results["sdpa"], results["eager"], rtol=1e-4, atol=1e-5)


def test_the_attention_implementation_can_be_set_after_loading(saved):
    folder, inputs, _ = saved
    model = AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    sdpa = logits(model, inputs)
    model.set_attn_implementation("eager")
    assert {m: b.config._attn_implementation for m, b in model.backbones.items()} == dict.fromkeys(TVA, "eager")
    torch.testing.assert_close(logits(model, inputs), sdpa, rtol=1e-4, atol=1e-5)


# The backbone families that support neither sdpa nor flash attention (they refuse either when asked, naming
# themselves): pinned, so that a new family or a transformers upgrade that changes this shows up here.
EAGER_ONLY = {"deberta-v2", "wavlm", "dmil_feature_encoder"}


def test_flash_attention_claim_is_the_backbones_claim():
    """`_supports_flash_attn` (which cannot run on CPU): DMIL's own modules have no attention, so the claim is a
    dispatch to the backbones, as in transformers' composite models. Every family of the backbone table that takes
    sdpa also takes flash attention, and the others take neither."""
    model = build(tiny_dmil_config(TVA))
    assert DMILForMultimodalClassification._supports_sdpa and DMILForMultimodalClassification._supports_flash_attn
    own = [name for name, module in model.named_modules() if not name.startswith("backbones")]
    attention = [n for n in own if "attention" in type(model.get_submodule(n)).__name__.lower()]
    assert not attention, f"DMIL modules outside the backbones hold attention: {attention}"
    support = {}
    for family in BACKBONES:
        kind, config = tiny_backbone_config(family)
        spec = backbone_spec(family, kind, config)
        backbone = type(_build_backbone(config, spec, spec.pooling))
        support[family] = (backbone._supports_sdpa, backbone._supports_flash_attn)
    assert {f for f, flags in support.items() if flags == (False, False)} == EAGER_ONLY
    assert all(flags == (True, True) for f, flags in support.items() if f not in EAGER_ONLY), support


def test_flash_attention_request_reaches_transformers_check(saved):
    """On a machine without flash-attn the claimed implementation fails at transformers' package check (an
    unclaimed one would fail as unsupported): it is not silently replaced by another."""
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed: benchmarks/gpu_check.sh runs the model with it on a GPU")
    folder, _, _ = saved
    with pytest.raises(ImportError, match="FlashAttention2"):
        AutoModel.from_pretrained(folder, attn_implementation="flash_attention_2")


def test_flex_attention_is_not_claimed(saved):
    # `_supports_flex_attn` stays False: flex attention compiles a kernel per input shape, which this CPU suite
    # cannot afford to test, and an untested claim is a bug. transformers refuses the request by name.
    folder, _, _ = saved
    assert not DMILForMultimodalClassification._supports_flex_attn
    with pytest.raises(ValueError, match="flex"):
        AutoModel.from_pretrained(folder, attn_implementation="flex_attention")


# ------------------------------------------------------------------------------------------------- training


def _gradients(model, inputs, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(1)  # the same latent samples and dropout masks in both runs
    model(**inputs, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "kwargs", [{}, {"gradient_checkpointing_kwargs": {"use_reentrant": False}}], ids=["default", "non-reentrant"]
)
def test_gradient_checkpointing_gives_the_same_gradients(kwargs):
    config = tiny_dmil_config(TVA)
    model = build(config).train()
    inputs, labels = inputs_and_labels(config)
    plain = _gradients(model, inputs, labels)
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable(**kwargs)
    assert checkpointed.is_gradient_checkpointing
    with_checkpoints = _gradients(checkpointed, inputs, labels)
    assert with_checkpoints.keys() == plain.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in plain.items():
        torch.testing.assert_close(with_checkpoints[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bfloat16_dtype_loads_bfloat16_weights_and_gives_finite_outputs(saved, tmp_path):
    folder, inputs, expected = saved
    model = AutoModel.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = logits(model, inputs)  # float32 inputs are cast to the backbones' dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1)
    # dtype="auto" takes the saved dtype back.
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16


def test_num_parameters():
    model = build(tiny_dmil_config(TVA))
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == total
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert embeddings and model.num_parameters(exclude_embeddings=True) == total - embeddings
    for p in model.backbones.parameters():
        p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < model.num_parameters(only_trainable=True) == trainable < total


# ------------------------------------------------------------------------------------------------- embeddings


def test_input_embeddings_are_the_text_backbones():
    model = build(tiny_dmil_config(TVA))
    assert model.get_input_embeddings() is model.backbones["text"].get_input_embeddings()


def test_resize_token_embeddings_resizes_the_text_backbone_and_round_trips(tmp_path):
    config = tiny_dmil_config(TVA)
    model = build(config).eval()
    old = config.text_config.vocab_size
    model.resize_token_embeddings(old + 5)
    assert model.get_input_embeddings().weight.shape[0] == old + 5
    assert model.config.text_config.vocab_size == old + 5
    inputs, _ = inputs_and_labels(config)
    inputs["input_ids"][0, 1] = old + 4  # a new token
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), rtol=0, atol=0)


def test_resize_token_embeddings_without_a_text_modality_is_an_error():
    model = build(tiny_dmil_config(("vision", "audio")))
    with pytest.raises(ValueError, match="text modality"):
        model.resize_token_embeddings(120)
