"""A property-based test over the modality table (issue 17): random tables of two to four rows of any kind (text,
image, video through an image backbone, video through VideoMAE, audio, features), random per-sample lengths,
padding and presence. For every table: the outputs are finite, padding never changes them (other values in the
padded positions, more padding), a missing modality never influences them (other values there; marked by
`modality_mask`, by a mask of zeros or by leaving the input out), and a save/reload gives identical logits.

Small and deterministic: tiny backbones, batches of three, a few derandomized examples, no deadline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tempfile

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmil_hf import DMILConfig, DMILForMultimodalClassification, Modality
from dmil_hf.models.dmil.modalities_dmil import input_names
from dmil_hf.testing_utils import (
    tiny_audio_config,
    tiny_feature_encoder_config,
    tiny_text_config,
    tiny_video_config,
    tiny_vision_config,
)

BATCH = 3
# Row variants: a kind, and for video the backbone that takes it (an image backbone per frame, or VideoMAE whole).
VARIANTS = ("text", "image", "video", "videomae", "audio", "features")
# Most real steps per sample (tokens, frames, 400-sample stretches of audio, feature steps), and the most padding
# added on top of the batch's longest. VideoMAE takes exactly 4 frames: its padding is what follows a short clip.
MAX_STEPS = {"text": 5, "video": 3, "videomae": 4, "audio": 3, "features": 4}
MAX_EXTRA = 2
AUDIO_UNIT = 400


def build_row(index: int, variant: str) -> Modality:
    name = f"m{index}"
    if variant == "videomae":
        return Modality(name, "video", tiny_video_config(num_frames=4))
    if variant == "features":
        return Modality(name, "features", tiny_feature_encoder_config(feature_dim=5, num_hidden_layers=1))
    backbone = {"text": tiny_text_config, "image": tiny_vision_config, "video": tiny_vision_config,
                "audio": tiny_audio_config}[variant]()
    return Modality(name, variant, backbone)


def row_inputs(variant, row, lengths, extra, seed, garbage_seed, redraw=()):
    """One row's inputs: each sample's first `lengths[i]` steps real (drawn from `seed`, the same whatever the
    padding), the rest up to the batch's longest plus `extra` steps padding (drawn from `garbage_seed`), with a
    mask. Samples in `redraw` get other real values (a missing modality's)."""
    real = torch.Generator().manual_seed(seed)
    junk = torch.Generator().manual_seed(garbage_seed)
    names = input_names(row)
    if variant == "image":
        values = torch.randn(BATCH, 3, 16, 16, generator=real)
        for i in redraw:
            values[i] = torch.randn(3, 16, 16, generator=junk)
        return {names.main: values}
    unit = AUDIO_UNIT if variant == "audio" else 1
    longest = (MAX_STEPS[variant] + MAX_EXTRA) * unit
    draw = {
        "text": lambda gen, n: torch.randint(3, 99, (BATCH, n), generator=gen),
        "video": lambda gen, n: torch.randn(BATCH, n, 3, 16, 16, generator=gen),
        "videomae": lambda gen, n: torch.randn(BATCH, n, 3, 16, 16, generator=gen),
        "audio": lambda gen, n: torch.randn(BATCH, n, generator=gen),
        "features": lambda gen, n: torch.randn(BATCH, n, 5, generator=gen),
    }[variant]
    full, other, padding = draw(real, longest), draw(junk, longest), draw(junk, longest)
    steps = 4 if variant == "videomae" else (max(lengths) + extra) * unit
    values = full[:, :steps].clone()
    mask = torch.zeros(BATCH, steps, dtype=torch.long)
    for i, length in enumerate(lengths):
        values[i, length * unit :] = padding[i, length * unit : steps]
        mask[i, : length * unit] = 1
        if i in redraw:
            values[i, : length * unit] = other[i, : length * unit]
    return {names.main: values, names.mask: mask}


@st.composite
def tables(draw):
    variants = draw(st.lists(st.sampled_from(VARIANTS), min_size=2, max_size=4))
    present = draw(st.lists(st.lists(st.booleans(), min_size=len(variants), max_size=len(variants)),
                            min_size=BATCH, max_size=BATCH))
    present = [row if any(row) else [True, *row[1:]] for row in present]  # every sample has a modality
    lengths = [draw(st.lists(st.integers(1, MAX_STEPS.get(v, 1)), min_size=BATCH, max_size=BATCH)) for v in variants]
    extra = draw(st.integers(1, MAX_EXTRA))
    seed = draw(st.integers(0, 2**16))
    return variants, present, lengths, extra, seed


def batch(variants, rows, lengths, extra, seed, garbage_seed, missing=None):
    """The model inputs of every row; with `missing` ((batch, K) bool), each missing sample gets other values, a mask
    of zeros (rows with a mask), and a row missing from every sample is left out."""
    inputs = {}
    for k, (variant, row) in enumerate(zip(variants, rows)):
        redraw = [] if missing is None else [i for i in range(BATCH) if missing[i][k]]
        if len(redraw) == BATCH:
            continue
        given = row_inputs(variant, row, lengths[k], extra, seed + k, garbage_seed + k, redraw)
        mask = input_names(row).mask
        for i in redraw:
            if mask is not None:
                given[mask][i] = 0
        inputs.update(given)
    return inputs


@settings(max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_any_table_is_finite_padding_free_missing_free_and_reloads_identically(table):
    variants, present, lengths, extra, seed = table
    rows = [build_row(k, v) for k, v in enumerate(variants)]
    torch.manual_seed(seed)
    config = DMILConfig(modality_table=rows, num_labels=3, latent_dim=8)
    model = DMILForMultimodalClassification(config).eval()
    modality_mask = torch.tensor(present)
    missing = [[not p for p in sample] for sample in present]

    with torch.no_grad():
        out = model(**batch(variants, rows, lengths, 0, seed, 1000), modality_mask=modality_mask)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.interaction_weights).all()
        # Padding: other values in the padded positions, and more of them.
        padded = model(**batch(variants, rows, lengths, extra, seed, 2000), modality_mask=modality_mask)
        torch.testing.assert_close(padded.logits, out.logits, rtol=0, atol=2e-5)
        # A missing modality: other values there, marked missing by a mask of zeros where the row has a mask (by
        # modality_mask only for images, which have none), and left out where no sample has it.
        by_masks = modality_mask | torch.tensor([[input_names(row).mask is not None for row in rows]] * BATCH)
        other = model(**batch(variants, rows, lengths, 0, seed, 3000, missing=missing), modality_mask=by_masks)
        torch.testing.assert_close(other.logits, out.logits, rtol=0, atol=2e-5)
        assert (out.interaction_weights[:, 1 : 1 + len(rows)][~modality_mask] == 0).all()

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = DMILForMultimodalClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        again = loaded(**batch(variants, rows, lengths, 0, seed, 1000), modality_mask=modality_mask)
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=0)
