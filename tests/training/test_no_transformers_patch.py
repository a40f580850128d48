"""DMILTrainer changes nothing in transformers: importing dmil_hf's training leaves `transformers.trainer` as it is
(no import-time patch of `align_special_tokens`), and a model without text trains with its tokenizer-less
DMILProcessor as processing_class, which the trainer keeps out of `Trainer.train`'s special-token alignment only."""

import numpy as np
import torch
import transformers.trainer
import transformers.trainer_utils
from transformers import ViTImageProcessorPil, Wav2Vec2FeatureExtractor

from dmil_hf import (
    DMILConfig,
    DMILDataCollator,
    DMILForMultimodalClassification,
    DMILProcessor,
    DMILTrainer,
    DMILTrainingArguments,
)
from dmil_hf.testing_utils import tiny_audio_config, tiny_vision_config


def test_importing_the_training_package_patches_nothing():
    import dmil_hf.hub.run_publisher  # noqa: F401
    import dmil_hf.training  # noqa: F401

    assert transformers.trainer.align_special_tokens is transformers.trainer_utils.align_special_tokens


def test_a_model_without_text_trains_with_its_processor(tmp_path):
    config = DMILConfig(vision_config=tiny_vision_config(), audio_config=tiny_audio_config(), num_labels=2,
                        latent_dim=16, paradigm="joint")
    processor = DMILProcessor.for_model(config, image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}),
                                        feature_extractor=Wav2Vec2FeatureExtractor())
    assert processor.tokenizer is None
    rng = np.random.default_rng(0)
    examples = [{"image": rng.integers(0, 255, (20, 20, 3), dtype=np.uint8),
                 "audio": rng.standard_normal(1600).astype(np.float32), "label": i % 2} for i in range(8)]
    args = DMILTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="steps", save_steps=1, disable_tqdm=True, remove_unused_columns=False,
    )
    torch.manual_seed(0)
    trainer = DMILTrainer(model=DMILForMultimodalClassification(config), args=args, train_dataset=examples,
                          data_collator=DMILDataCollator(processor), processing_class=processor)
    trainer.train()
    assert trainer.processing_class is processor
    assert transformers.trainer.align_special_tokens is transformers.trainer_utils.align_special_tokens
    # The Trainer had the processor back before it saved: the checkpoints, the stage and final/ carry it.
    run = tmp_path / "run"
    for folder in (run / "stage-1" / "checkpoint-1", run / "stage-1", run / "final"):
        assert (folder / "processor_config.json").is_file(), folder
    assert DMILProcessor.from_pretrained(run / "final").tokenizer is None
