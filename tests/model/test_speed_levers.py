"""The speed levers users switch on (`DMILConfig.fast_paths`, `torch_compile` through `DMILTrainer`) compute the same
numbers as the plain path. Their speed is measured in benchmarks/ (speed.py, trainer_loop.py, gpu_check.sh), never
here."""

import copy
import time

import pytest
import torch

from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainer
from dmil_hf.models.dmil.backbones_dmil import FAST_PATHS, apply_fast_paths
from dmil_hf.testing_utils import random_inputs, tiny_audio_config
from dmil_hf.testing_utils import tiny_dmil_config as make_config
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_positional_conv_unfold_matches_the_grouped_convolution(family):
    torch.manual_seed(0)
    config = make_config(("text", "audio"), audio=family)
    plain = DMILForMultimodalClassification(config).eval()
    fast = copy.deepcopy(plain)
    assert apply_fast_paths(fast, ["positional_conv_unfold"]) == {"positional_conv_unfold": 1}
    inputs = random_inputs(config)
    for model in (plain, fast):
        model.zero_grad()
        out = model(**inputs)
        out.loss.backward()
    torch.testing.assert_close(fast(**inputs).logits, plain(**inputs).logits, rtol=1e-5, atol=1e-5)
    conv = dict(plain.named_parameters())
    for name, param in fast.named_parameters():
        torch.testing.assert_close(param.grad, conv[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fast_paths_are_a_config_field_that_saves_and_keeps_the_weights(tmp_path):
    config = make_config(("vision", "audio"), fast_paths=["positional_conv_unfold"])
    model = DMILForMultimodalClassification(config)
    conv = model.backbones["audio"].encoder.pos_conv_embed.conv
    assert conv._conv_forward.__func__.__name__ == "_unfold_conv1d"
    model.save_pretrained(tmp_path)
    loaded = DMILForMultimodalClassification.from_pretrained(tmp_path)
    assert loaded.config.fast_paths == ["positional_conv_unfold"]
    assert loaded.backbones["audio"].encoder.pos_conv_embed.conv._conv_forward.__func__.__name__ == "_unfold_conv1d"
    with pytest.raises(ValueError, match="fast_paths"):
        make_config(fast_paths=["flash_everything"])
    assert sorted(FAST_PATHS) == ["positional_conv_unfold"]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_compiled_model_gives_the_eager_loss_and_gradients_in_every_stage(stage):
    # aot_eager traces and runs the compiled graph without generating code: the graph capture is what DMIL's
    # forward must survive (inductor's codegen is measured on the GPU machine, gpu_check.sh).
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(make_config(("text", "audio"), check_inputs=False)).eval()
    compiled = torch.compile(copy.deepcopy(model), backend="aot_eager")
    inputs = random_inputs(model.config)
    eager_out, compiled_out = model(**inputs, stage=stage), compiled(**inputs, stage=stage)
    torch.testing.assert_close(compiled_out.loss, eager_out.loss, rtol=1e-5, atol=1e-6)
    eager_out.loss.backward()
    compiled_out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, param in compiled.named_parameters():
        name = name.removeprefix("_orig_mod.")
        if name in grads:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("finetune_method", ["lora"])  # full fine-tuning: the per-stage test above
def test_torch_compile_runs_every_stage_through_the_trainer_and_reports_compile_time(tmp_path, finetune_method):
    args = make_args(tmp_path, torch_compile=True, torch_compile_backend="aot_eager", finetune_method=finetune_method)
    trainer = DMILTrainer(model=two_modality_model(check_inputs=False), args=args, train_dataset=make_data(16))
    output = trainer.train()
    for stage in ("1", "2", "3"):
        assert output.metrics["stages"][stage]["compile_seconds"] >= 0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
