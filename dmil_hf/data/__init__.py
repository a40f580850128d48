"""Data for DMIL models: the synthetic interaction benchmark (`dmil_hf.data.synthetic`), a generator of samples in
native modalities with a known interaction type each (redundancy, uniqueness, synergy). It is the built-in default
dataset of `training/run.py`; see the module docstring of `dmil_hf.data.synthetic` for the encodings and knobs.

Example:

```python
>>> from dmil_hf.data import SyntheticInteractionSpec, make_interaction_splits
>>> splits = make_interaction_splits(8, 4, spec=SyntheticInteractionSpec(modalities=("text", "vision")))
>>> splits["train"].num_rows, splits["test"].num_rows
(8, 4)
```
"""

from .synthetic import (
    DEFAULT_NOISE,
    MIXTURES,
    MODEL_INPUT_COLUMNS,
    TASKS,
    SyntheticInteractionSpec,
    corrupt,
    decode_slots,
    interaction_types_for,
    make_interaction_dataset,
    make_interaction_splits,
    model_columns,
    regression_target,
    sample_latents,
    slot_columns,
    synthetic_processor,
    tiny_config_for,
)

from . import synthetic as _synthetic  # noqa: E402

__all__ = list(_synthetic.__all__)
