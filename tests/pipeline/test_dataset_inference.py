"""Inference over a 🤗 `datasets.Dataset`: `add_predictions` adds the prediction, score and interaction columns
to every row (ids, labels and inputs kept), the pipeline takes the dataset itself (its rows, with a mapping from
columns to modalities), and both say what the pipeline says of the same rows given as dicts, for each problem type."""

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from dmil_hf import DMILForMultimodalClassification
from dmil_hf.data import SyntheticInteractionSpec, synthetic_processor, tiny_config_for
from dmil_hf.inference import add_predictions, prediction_column_names
from dmil_hf.models.dmil.pipeline_dmil import TASK, MultimodalClassificationPipeline
from dmil_hf.models.dmil.problem_types_dmil import MULTI_LABEL, REGRESSION, SINGLE_LABEL

NAMES = {0: "cat", 1: "dog", 2: "bird"}
N = 7


def _model_and_processor(problem_type, paradigm="dmil"):
    spec = SyntheticInteractionSpec(modalities=("text", "vision"), num_labels=3)
    if problem_type == REGRESSION:
        spec, labels = spec.replace(task="regression"), {}
    else:
        labels = {"id2label": NAMES, "label2id": {v: k for k, v in NAMES.items()}}
    torch.manual_seed(0)
    config = tiny_config_for(spec, paradigm=paradigm, latent_dim=8, problem_type=problem_type, **labels)
    return DMILForMultimodalClassification(config).eval(), synthetic_processor(spec)


def _dataset(seed=0):
    """Rows as a user's dataset holds them: an id, a text column named as the input, an image column named
    otherwise (decoded to PIL by datasets' Image feature), a label; row 3 lacks its text."""
    rng = np.random.default_rng(seed)
    texts = [" ".join([f"a{rng.integers(3)}", *(f"w{rng.integers(4)}" for _ in range(i % 3)), f"b{rng.integers(3)}"])
             for i in range(N)]
    texts[3] = None
    pictures = [PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(N)]
    features = Features({"id": Value("string"), "text": Value("string"), "picture": Image(), "label": Value("int64")})
    return Dataset.from_dict(
        {"id": [f"s{i}" for i in range(N)], "text": texts, "picture": pictures, "label": [i % 3 for i in range(N)]},
        features=features,
    )


def _as_dicts(ds):
    return [{"text": row["text"], "image": row["picture"]} for row in ds]


@pytest.mark.parametrize("problem_type", [SINGLE_LABEL, MULTI_LABEL, REGRESSION])
def test_add_predictions_and_the_pipeline_agree_on_every_row(problem_type):
    model, processor = _model_and_processor(problem_type)
    ds = _dataset()
    out = add_predictions(ds, model, processor, columns={"image": "picture"}, batch_size=3)
    # The input columns, ids and labels stay, the new columns follow, in the rows' order.
    new = prediction_column_names(model.config)
    assert out.column_names == [*ds.column_names, *new]
    assert out["id"] == ds["id"] and out["label"] == ds["label"]
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)
    answers = pipe(_as_dicts(ds), top_k=None)
    for row, answer in zip(out, answers):
        scores = {entry["label"]: entry["score"] for entry in answer}
        if problem_type == SINGLE_LABEL:
            assert row["prediction"] == answer[0]["label"]
            assert row["score"] == pytest.approx(answer[0]["score"], abs=1e-6)
        elif problem_type == MULTI_LABEL:
            assert row["prediction"] == [name for name in NAMES.values() if scores[name] > 0.5]
            for name in NAMES.values():
                assert row[f"score_{name}"] == pytest.approx(scores[name], abs=1e-6)
        else:
            assert row["prediction"] == pytest.approx(scores["target"], rel=1e-5, abs=1e-6)
        for component, weight in answer[0]["interactions"].items():
            assert row[f"interaction_{component}"] == pytest.approx(weight, abs=1e-6)
        assert sum(row[f"interaction_{c}"] for c in model.config.interaction_components) == pytest.approx(1.0)
    # Row 3 lacks its text: its gate has no weight on the text's uniqueness.
    assert out[3]["interaction_uniqueness_text"] == pytest.approx(0.0, abs=1e-7)
    if problem_type == SINGLE_LABEL:
        assert len({row["prediction"] for row in out}) > 1 or len({round(s, 6) for s in out["score"]}) > 1


def test_the_pipeline_takes_a_dataset_and_streams_its_answers():
    model, processor = _model_and_processor(SINGLE_LABEL)
    ds = _dataset()
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)
    expected = pipe(_as_dicts(ds), top_k=2)
    # As transformers' pipelines take a dataset: an iterator over the rows' answers, in row order; the mapping names
    # the image column, `text` is found by its name, `id` and `label` are not read.
    answers = pipe(ds, columns={"vision": "picture"}, top_k=2, batch_size=4)
    assert not isinstance(answers, list)
    answers = list(answers)
    assert len(answers) == N
    for got, want in zip(answers, expected):
        assert [a["label"] for a in got] == [w["label"] for w in want]
        assert [a["score"] for a in got] == pytest.approx([w["score"] for w in want], abs=1e-6)
    # A streaming dataset too, lazily.
    streamed = list(pipe(ds.to_iterable_dataset(), columns={"image": "picture"}, top_k=2))
    assert [a[0]["label"] for a in streamed] == [w[0]["label"] for w in expected]
    lazy = add_predictions(ds.to_iterable_dataset(), model, processor, columns={"image": "picture"})
    assert [row["prediction"] for row in lazy] == [w[0]["label"] for w in expected]


def test_column_mapping_errors_name_what_is_wrong():
    model, processor = _model_and_processor(SINGLE_LABEL, paradigm="joint")
    ds = _dataset()
    pipe = MultimodalClassificationPipeline(model=model, processor=processor, task=TASK)
    with pytest.raises(ValueError, match=r"\['sound'\], which are not inputs of this model"):
        pipe(ds, columns={"sound": "picture"})
    with pytest.raises(ValueError, match=r"\['photo'\], which the dataset lacks"):
        add_predictions(ds, model, processor, columns={"image": "photo"})
    with pytest.raises(ValueError, match="none of the model's inputs as a column"):
        pipe(ds.select_columns(["id", "label"]))
    with pytest.raises(TypeError, match="columns= maps the columns of a datasets.Dataset"):
        pipe([{"text": "a1 b1"}], columns={"image": "picture"})
    # The joint baseline has no gate: no interaction columns; an existing column is never overwritten.
    assert prediction_column_names(model.config) == ["prediction", "score"]
    out = add_predictions(ds, model, processor, columns={"image": "picture"})
    with pytest.raises(ValueError, match=r"\['prediction', 'score'\] already; give a prefix="):
        add_predictions(out, model, processor, columns={"image": "picture"})
    again = add_predictions(out, model, processor, columns={"image": "picture"}, prefix="joint_")
    assert again["joint_prediction"] == out["prediction"]
