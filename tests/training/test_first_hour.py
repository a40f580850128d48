"""What a new user sees: no alarming warnings or reports from a normal build, LoRA wrap or load, and a clear word
when a saved model cannot serve the pipeline."""

import logging
import warnings


from dmil_hf import DMILForMultimodalClassification, DMILTrainer
from dmil_hf.testing_utils import save_tiny_backbones
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model
from dmil_hf.training.lora import add_lora


def test_pretrained_backbones_load_without_pooler_reports_and_lora_without_future_warnings(tmp_path, caplog):
    paths = save_tiny_backbones(str(tmp_path / "backbones"))  # BERT and ViT saved with their poolers
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = DMILForMultimodalClassification.from_backbones_pretrained(**paths, num_labels=2)
        add_lora(model)
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage() or "UNEXPECTED" in r.getMessage()]
    assert not [r for r in caplog.records if "not sharded" in r.getMessage()]


def test_a_real_missing_weight_is_still_reported(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    paths = save_tiny_backbones(str(tmp_path / "backbones"), modalities=("text", "vision"))
    weights = load_file(f"{paths['text']}/model.safetensors")
    weights.pop(next(k for k in weights if "encoder.layer.0.attention" in k))
    save_file(weights, f"{paths['text']}/model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        DMILForMultimodalClassification.from_backbones_pretrained(**paths, num_labels=2)
    assert any("missing (initialised at random)" in r.getMessage() for r in caplog.records)


def test_final_without_a_processor_says_the_pipeline_cannot_serve_it(tmp_path, caplog):
    trainer = DMILTrainer(model=two_modality_model(), args=make_args(tmp_path), train_dataset=make_data())
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert any("has no processor" in r.getMessage() for r in caplog.records)


def test_the_tiny_backbones_tokenizer_knows_its_words(tmp_path):
    # transformers 5's BertTokenizer(vocab_file=...) ignored the file: five special tokens, every word [UNK], and the
    # README's training example's text carried no signal.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_backbones(str(tmp_path / "b"), modalities=("text",))["text"])
    assert len(tokenizer) == 20
    ids = [tokenizer(sentence)["input_ids"] for sentence in ("a red cat", "the big dog")]  # the README's two sentences
    assert ids[0] != ids[1] and len(ids[0]) == len(ids[1]) == 5
    assert tokenizer.unk_token_id not in ids[0] + ids[1]
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "a", "red", "cat", "[SEP]"]
