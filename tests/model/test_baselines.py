"""The baselines: the library's joint, ensemble and I2M2 ARE the plain-PyTorch models of benchmarks/plain_peers.py (same
weights, same inputs: same outputs, losses, gradients and optimizer steps), their head width, and the two-stage
baseline's schedule (unimodal pretraining, then joint fine-tuning) through DMILTrainer."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig

from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments
from dmil_hf.testing_utils import random_inputs
from dmil_hf.testing_utils import tiny_training_dataset as _data
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.training.run_folder import STAGE_MARKER

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from plain_peers import PlainEnsemble, PlainI2M2, PlainJoint  # noqa: E402

MODALITIES = ("vision", "audio")  # [CLS] and unmasked mean pooling: what the plain peers do


def _library(paradigm, projection=None):
    torch.manual_seed(0)
    config = make_config(MODALITIES, paradigm=paradigm, latent_dim=8, baseline_hidden_dim=12, projection=projection)
    # Dropout off in the backbones, so that train-mode steps of the two models are comparable.
    for m in MODALITIES:
        backbone = config.backbone_config(m)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "hidden_dropout", "attention_dropout",
                     "activation_dropout", "feat_proj_dropout", "final_dropout", "layerdrop"):
            if hasattr(backbone, name):
                setattr(backbone, name, 0.0)
    return DMILForMultimodalClassification(config)


def _copy_mlp(target, source):
    """A plain `Linear -> GELU -> Linear` Sequential gets the weights of the library's `MLP`."""
    target[0].load_state_dict(source.fc1.state_dict())
    target[2].load_state_dict(source.fc2.state_dict())


def _plain_copy(model):
    """The plain peer of `model` (with a per-modality projection when the model has a Linear one), holding copies of
    every weight of it."""
    config = model.config
    projected = config.projection == "linear"
    backbones = copy.deepcopy(dict(model.backbones.items()))
    kinds = {m.name: m.kind for m in config.modality_specs}
    args = (backbones, kinds, config.num_labels, config.baseline_hidden_dim, config.feature_dim if projected else None)
    peer = {"joint": PlainJoint, "ensemble": PlainEnsemble, "i2m2": PlainI2M2}[config.paradigm](*args)
    with torch.no_grad():
        for m in MODALITIES:
            if projected and config.paradigm == "ensemble":
                peer.classifiers[m][0].load_state_dict(model.projections[m].state_dict())
            elif projected:
                peer.projections[m].load_state_dict(model.projections[m].state_dict())
        if config.paradigm == "joint":
            _copy_mlp(peer.classifier, model.head.joint_classifier)
        elif config.paradigm == "i2m2":
            for m in MODALITIES:
                _copy_mlp(peer.intra[m], model.head.intra_experts[m])
            _copy_mlp(peer.inter, model.head.inter_expert)
        else:
            for m in MODALITIES:
                _copy_mlp(peer.classifiers[m][1] if projected else peer.classifiers[m],
                          model.head.ensemble_classifiers[m])
    return peer


def _plain_inputs(inputs):
    return {"vision": {"pixel_values": inputs["pixel_values"]}, "audio": {"input_values": inputs["input_values"]}}


@pytest.mark.parametrize("projection", [None, "linear"])
@pytest.mark.parametrize("paradigm", ["joint", "ensemble", "i2m2"])
def test_library_baseline_is_the_plain_pytorch_model(paradigm, projection):
    """By default a baseline reads the pooled features as its plain peer does (projection "identity"); with a Linear
    projection it is the plain peer with that projection (`projection_dim`)."""
    model = _library(paradigm, projection)
    assert model.config.projection == (projection or "identity")
    plain = _plain_copy(model)
    inputs = random_inputs(model.config, batch_size=6, seed=1)
    labels = inputs["labels"]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01) for m in (model, plain)]
    model.train(), plain.train()
    for step in range(3):  # same losses and logits at every step, so the same gradients and updates
        out = model(**inputs)
        loss, predictions = plain(_plain_inputs(inputs), labels)
        torch.testing.assert_close(out.logits, predictions["logits"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
        if paradigm in ("joint", "i2m2"):
            torch.testing.assert_close(out.loss, F.cross_entropy(predictions["logits"], labels), rtol=1e-5, atol=1e-6)
        if paradigm != "joint":
            torch.testing.assert_close(out.modality_logits, predictions["modality_logits"], rtol=1e-5, atol=1e-6)
        for optimizer, value in zip(optimizers, (out.loss, loss)):
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    # The backbones moved by the same updates.
    for m in MODALITIES:
        for (name, p), q in zip(model.backbones[m].named_parameters(), plain.encoders.backbones[m].parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_baseline_head_width_and_old_configs():
    config = make_config(MODALITIES, paradigm="joint", latent_dim=8)
    assert config.baseline_hidden_dim == 128  # not the latent_dim bottleneck of the 0.1 heads
    model = DMILForMultimodalClassification(config)
    # By default the head reads the pooled features at the backbones' own widths: no projection in front of it.
    widths = {m: model.backbones[m].config.hidden_size for m in MODALITIES}
    assert config.projection == "identity" and isinstance(model.projections["vision"], torch.nn.Identity)
    assert model.feature_widths == widths
    assert model.head.joint_classifier.fc1.weight.shape == (128, sum(widths.values()))
    # With a Linear projection, its features are baseline_hidden_dim wide, not DMIL's latent_dim.
    linear = DMILForMultimodalClassification(make_config(MODALITIES, paradigm="joint", latent_dim=8, projection="linear"))
    assert linear.config.feature_dim == 128 and linear.projections["vision"].out_features == 128
    assert linear.head.joint_classifier.fc1.weight.shape == (128, 2 * 128)
    dmil = DMILForMultimodalClassification(make_config(MODALITIES, latent_dim=8))
    assert dmil.config.projection == "linear" and dmil.projections["vision"].out_features == 8
    with pytest.raises(ValueError, match="identity"):
        make_config(MODALITIES, latent_dim=8, projection="identity")
    # A saved config keeps its width and projection; one saved before a field existed has what it was trained with:
    # the old heads' width (latent_dim), a Linear projection.
    saved = config.to_dict()
    assert DMILConfig.from_dict(saved).baseline_hidden_dim == 128 and DMILConfig.from_dict(saved).projection == "identity"
    old = {k: v for k, v in saved.items() if k not in ("baseline_hidden_dim", "projection")}
    assert DMILConfig.from_dict(old).baseline_hidden_dim == 8 and DMILConfig.from_dict(old).projection == "linear"
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(ValueError, match="baseline_hidden_dim"):
            make_config(MODALITIES, paradigm="joint", baseline_hidden_dim=bad)


def test_saved_baseline_config_round_trips_its_width(tmp_path):
    make_config(MODALITIES, paradigm="ensemble", baseline_hidden_dim=40).save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).baseline_hidden_dim == 40
    make_config(MODALITIES, paradigm="ensemble").save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).baseline_hidden_dim == 128


# ------------------------------------------------------------------------------------------- two-stage schedule


def _two_stage_trainer(tmp_path, **kwargs):
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(make_config(("text", "vision"), paradigm="two_stage"))
    args = DMILTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0, learning_rate=1e-2, dataloader_num_workers=0,
        **kwargs,
    )
    return DMILTrainer(model=model, args=args, train_dataset=_data(), eval_dataset=_data(8, 1)), model


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_two_stage_pretrains_unimodally_then_finetunes_jointly(tmp_path):
    trainer, model = _two_stage_trainer(tmp_path, stage1_max_steps=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    output = trainer.train()  # args.stages defaults to 1,2,3: the paradigm's own stages run, 1 and 2
    run = tmp_path / "run"
    assert sorted(output.metrics["stages"]) == ["1", "2"]
    assert (run / "final").is_dir() and not (run / "stage-3").exists()
    s1, s2 = _weights(run / "stage-1"), _weights(run / "stage-2")
    markers = [json.loads((run / f"stage-{k}" / STAGE_MARKER).read_text()) for k in (1, 2)]
    assert [m["global_step"] for m in markers] == [3, 2]  # each stage its own schedule (stage1_max_steps)

    def moved(a, b, prefix):
        keys = [k for k in a if k.startswith(prefix)]
        assert keys, prefix
        return any(not torch.equal(a[k], b[k]) for k in keys)

    # Stage 1: encoders and unimodal heads learn, the joint head does not exist for the loss. (The default projection
    # is the identity: no projection weights.)
    assert not any(k.startswith("projections.") for k in start)
    for prefix in ("backbones.text.", "backbones.vision.", "head.unimodal_classifiers."):
        assert moved(start, s1, prefix), prefix
    assert not moved(start, s1, "head.joint_classifier.")
    # Stage 2: the joint head trains with the encoders fine-tuned; the unimodal heads have no loss left.
    for prefix in ("backbones.text.", "backbones.vision.", "head.joint_classifier."):
        assert moved(s1, s2, prefix), prefix
    assert not moved(s1, s2, "head.unimodal_classifiers.")
    # The final model predicts with the joint head; stage 1's evaluation read the unimodal heads' mean.
    final = DMILForMultimodalClassification.from_pretrained(run / "final").eval()
    inputs = random_inputs(final.config)
    with torch.no_grad():
        out, pretraining = final(**inputs), final(**inputs, stage=1)
    assert set(out.loss_terms) == {"ce_final"} and out.modality_logits.shape == (4, 2, 3)
    torch.testing.assert_close(pretraining.logits, pretraining.modality_logits.mean(1))
    assert not torch.allclose(out.logits, pretraining.logits)
    card = (run / "final" / "README.md").read_text()
    assert "two_stage" in card and "unimodal pretraining" in card and "ce_modality_*" in card


def test_two_stage_resumes_its_second_stage_from_the_saved_first(tmp_path):
    trainer, _ = _two_stage_trainer(tmp_path, stages="1")
    trainer.train()
    run = tmp_path / "run"
    assert (run / "stage-1" / STAGE_MARKER).is_file() and not (run / "final").exists()
    # A later run continues: stage 1 is loaded from its folder, stage 2 trains from it and writes final/.
    trainer, _ = _two_stage_trainer(tmp_path)
    output = trainer.train(resume_from_checkpoint=True)
    assert sorted(output.metrics["stages"]) == ["1", "2"] and (run / "final").is_dir()
    s1, s2 = _weights(run / "stage-1"), _weights(run / "stage-2")
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("head.unimodal_classifiers."))
    with pytest.raises(ValueError, match="stages"):
        _two_stage_trainer(tmp_path, stages="3", overwrite_output_dir=True)[0].train()
    with pytest.raises(ValueError, match="stage=3"):
        _two_stage_trainer(tmp_path, overwrite_output_dir=True)[0].train(stage=3)
