"""LoRA adapters run wherever the backbone table puts them: for every family in the table, the unmerged peft model,
the merged model and the saved adapter reloaded onto the saved base give the same logits, in train and eval, with
and without gradients; targets whose weight the parent reads directly are refused."""

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModel

from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments, Modality
from dmil_hf.models.dmil.backbones_dmil import BACKBONES
from dmil_hf.testing_utils import TINY_BACKBONES, random_inputs, tiny_backbone_config, tiny_feature_encoder_config
from dmil_hf.training.lora import add_lora

MODES = [(train, grad) for train in (True, False) for grad in (True, False)]


def family_config(family):
    """The family under test as modality `m`, next to a cheap features modality (a model needs two)."""
    kind, backbone = tiny_backbone_config(family)
    frames = backbone.num_frames if kind == "video" else None
    rows = [Modality("m", kind, backbone, num_frames=frames),
            Modality("vec", "features", tiny_feature_encoder_config(num_hidden_layers=0))]
    return DMILConfig(modality_table=rows, num_labels=3, latent_dim=16)


def logits(model, inputs, train, grad):
    model.train(train)
    torch.manual_seed(1)  # the same dropout (and LayerDrop) draws for every model compared
    with torch.set_grad_enabled(grad):
        return model(**inputs).logits.detach()


def test_every_family_in_the_table_has_a_tiny_config():
    assert set(TINY_BACKBONES) == set(BACKBONES)


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_adapters_run_in_every_mode_and_survive_merge_and_reload(family, tmp_path):
    config = family_config(family)
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(config)
    model.save_pretrained(tmp_path / "stage-2")
    inputs = random_inputs(config, batch_size=2, seed=1)
    inputs.pop("labels")
    base = logits(model, inputs, False, False)

    peft_model = add_lora(model, r=4, lora_alpha=8, lora_dropout=0.0)
    adapted = [name for name, _ in peft_model.named_modules() if name.endswith(".lora_B.default")]
    assert adapted and all(".backbones.m." in name or ".backbones.vec." in name for name in adapted)
    assert any(".backbones.m." in name for name in adapted)  # the family under test has adapters of its own
    with torch.no_grad():  # adapters away from their zero init, so that each one changes the output
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    unmerged = {mode: logits(peft_model, inputs, *mode) for mode in MODES}
    peft_model.save_pretrained(tmp_path / "stage-3" / "adapter")
    merged = peft_model.merge_and_unload()
    assert (logits(merged, inputs, False, False) - base).abs().max() > 1e-3  # the adapters change the model
    for mode in MODES:
        torch.testing.assert_close(unmerged[mode], logits(merged, inputs, *mode), atol=1e-5, rtol=0, msg=f"{mode}")

    reloaded = PeftModel.from_pretrained(
        DMILForMultimodalClassification.from_pretrained(tmp_path / "stage-2"), tmp_path / "stage-3" / "adapter"
    )
    for mode in MODES:
        torch.testing.assert_close(unmerged[mode], logits(reloaded, inputs, *mode), atol=1e-5, rtol=0, msg=f"{mode}")


def test_a_lora_stage_3_over_feature_encoders_saves_an_adapter_that_gives_the_merged_model(tmp_path):
    # The case: stage-3/adapter loaded with peft onto stage-2/ (as the README documents) against stage-3/.
    config = DMILConfig(
        modality_table=[Modality("facs", "features", tiny_feature_encoder_config(num_hidden_layers=2)),
                        Modality("vec", "features", tiny_feature_encoder_config(num_hidden_layers=1))],
        num_labels=3, latent_dim=16,
    )
    columns = {k: v.tolist() for k, v in random_inputs(config, batch_size=16, seed=2).items()}
    torch.manual_seed(0)
    args = DMILTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True, seed=0, learning_rate=5e-2, finetune_method="lora",
        dataloader_num_workers=0,
    )
    DMILTrainer(model=DMILForMultimodalClassification(config), args=args, train_dataset=Dataset.from_dict(columns)).train()
    run = tmp_path / "run"
    reloaded = PeftModel.from_pretrained(DMILForMultimodalClassification.from_pretrained(run / "stage-2"),
                                         run / "stage-3" / "adapter").eval()
    merged = AutoModel.from_pretrained(run / "stage-3").eval()
    stage2 = AutoModel.from_pretrained(run / "stage-2").eval()
    inputs = random_inputs(config, batch_size=4, seed=3)
    inputs.pop("labels")
    with torch.no_grad():
        expected = merged(**inputs).logits
        assert (expected - stage2(**inputs).logits).abs().max() > 1e-3  # stage 3 trained the model
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family, target", [
    ("dmil_feature_encoder", r".*\.out_proj"),  # nn.MultiheadAttention's out_proj
    ("wavlm", ["q_proj", "v_proj"]),  # WavLM's attention passes its projections' weights to F.multi_head_attention_forward
])
def test_add_lora_refuses_targets_whose_weight_is_read_directly(family, target):
    model = DMILForMultimodalClassification(family_config(family))
    with pytest.raises(ValueError, match="never run"):
        add_lora(model, target_modules=target)
    assert not any("lora_" in name for name, _ in model.named_parameters())  # refused before wrapping


def test_add_lora_refuses_a_backbone_that_no_target_matches():
    # GPT-2 (not in the table) has no query/value/q_proj/v_proj: its backbone got no adapter and, in a LoRA stage 3,
    # silently did not train, while peft was content with the other backbone's adapters.
    from transformers import GPT2Config

    rows = [Modality("words", "text", GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=99)),
            Modality("vec", "features", tiny_feature_encoder_config(num_hidden_layers=1))]
    model = DMILForMultimodalClassification(DMILConfig(modality_table=rows, num_labels=3, latent_dim=16))
    with pytest.raises(ValueError, match=r"match no module of the backbone\(s\) words \(gpt2\)"):
        add_lora(model)
    add_lora(model, target_modules=["c_attn", "linear1"])  # names each backbone has: taken


def test_lora_target_modules_that_name_one_familys_leaves_only_are_refused():
    # The trainer's lora_target_modules override goes to every backbone: query/value fit BERT, not wav2vec2.
    from dmil_hf.training.lora import lora_target_regex

    config = DMILConfig(modality_table=[Modality("text", "text", tiny_backbone_config("bert")[1]),
                                        Modality("audio", "audio", tiny_backbone_config("wav2vec2")[1])],
                        num_labels=3, latent_dim=16)
    model = DMILForMultimodalClassification(config)
    with pytest.raises(ValueError, match=r"backbone\(s\) audio \(wav2vec2\), which would then not train"):
        add_lora(model, target_modules=lora_target_regex(model, ["query", "value"]))
