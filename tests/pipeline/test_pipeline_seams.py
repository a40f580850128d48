"""The pipeline never answers silently wrong: it refuses a model whose weights hold NaN or inf (instead of scoring
every input NaN), and a regression with several targets returns every target by default, not its highest one."""

import numpy as np
import pytest
import torch

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.data import SyntheticInteractionSpec, synthetic_processor, tiny_config_for
from dmil_hf.models.dmil.pipeline_dmil import TASK, MultimodalClassificationPipeline

SAMPLES = [{"text": "a1 w0 b2", "image": np.full((16, 16, 3), 40 * i, dtype=np.uint8)} for i in range(3)]


def model_and_processor(**config):
    spec = SyntheticInteractionSpec(modalities=("text", "vision"), num_labels=config.pop("num_labels", 3))
    torch.manual_seed(0)
    model = DMILForMultimodalClassification(tiny_config_for(spec, latent_dim=8, **config)).eval()
    return model, synthetic_processor(spec)


def test_a_model_with_nonfinite_weights_is_refused(tmp_path):
    model, processor = model_and_processor()
    with torch.no_grad():
        next(model.head.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 weight tensors .*diverged"):
        MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)
    # The same from a saved folder, as `pipeline(...)` loads it: the folder is named.
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"{tmp_path}.* has NaN or infinite values"):
        MultimodalClassificationPipeline(model=DMILForMultimodalClassification.from_pretrained(tmp_path),
                                         processor=processor, task=TASK)


def test_a_finite_model_is_served():
    model, processor = model_and_processor()
    answer = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)(SAMPLES[0])
    assert len(answer) == 1 and np.isfinite(answer[0]["score"])


def test_a_regression_returns_every_target_in_the_models_order():
    model, processor = model_and_processor(num_labels=2, problem_type="regression",
                                           id2label={0: "valence", 1: "arousal"})
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)
    with torch.no_grad():
        expected = model(**processor(text=[s["text"] for s in SAMPLES], images=[s["image"] for s in SAMPLES])).logits
    for answers in (pipe(SAMPLES), pipe(SAMPLES, top_k=None), pipe(SAMPLES, batch_size=2)):
        for answer, values in zip(answers, expected.tolist()):
            assert [entry["label"] for entry in answer] == ["valence", "arousal"]
            assert [entry["score"] for entry in answer] == pytest.approx(values, abs=1e-5)
    # An explicit top_k keeps the k highest values, as text-classification does.
    best = pipe(SAMPLES[0], top_k=1)
    assert len(best) == 1 and best[0]["score"] == pytest.approx(max(expected[0].tolist()), abs=1e-5)


def test_a_classifier_still_returns_its_best_label_by_default():
    model, processor = model_and_processor()
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)
    assert [len(answer) for answer in pipe(SAMPLES)] == [1, 1, 1]
    assert len(pipe(SAMPLES[0], top_k=None)) == 3

