"""Test set-up: offline before anything imports transformers, fixed seeds, tiny backbones."""

import os

# Must precede any transformers / huggingface_hub import: their constants are read at import time, and an online
# lookup would retry for ~45 s before failing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dmil_hf import DMILConfig  # noqa: E402
from dmil_hf.testing_utils import tiny_audio_config, tiny_text_config, tiny_vision_config  # noqa: E402

# The tests moved into area folders; until the helpers they import from one another move out of the test modules,
# every area folder is importable from any other (the next commit removes this).
for _area in ("benchmarks", "cli", "hub", "model", "pipeline", "processing", "training"):
    sys.path.insert(0, str(Path(__file__).resolve().parent / _area))

# One thread: tiny models gain nothing from two, and two threads slow to a crawl when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Put first in a subprocess script that must work from saved remote code alone: dmil_hf may be installed (editable) in
# this environment, so the script blocks the name on sys.meta_path and proves that the import fails.
BLOCK_DMIL_HF = """
import sys as _sys


class _BlockDmilHf:
    def find_spec(self, name, path=None, target=None):
        if name == "dmil_hf" or name.startswith("dmil_hf."):
            raise ImportError(f"{name} is blocked: this process must work from saved remote code alone")


_sys.meta_path.insert(0, _BlockDmilHf())
try:
    import dmil_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("dmil_hf is importable here: the test would prove nothing")
"""


def make_config(modalities=("text", "vision", "audio"), paradigm="dmil", num_labels=3, latent_dim=16, **kwargs):
    """A DMILConfig over tiny BERT / ViT / wav2vec2 backbones (override a family with text="roberta" etc.)."""
    families = {"text": kwargs.pop("text", "bert"), "vision": kwargs.pop("vision", "vit"), "audio": kwargs.pop("audio", "wav2vec2")}
    builders = {"text": tiny_text_config, "vision": tiny_vision_config, "audio": tiny_audio_config}
    sub = {f"{m}_config": builders[m](families[m]) for m in modalities}
    return DMILConfig(**sub, paradigm=paradigm, num_labels=num_labels, latent_dim=latent_dim, **kwargs)


@pytest.fixture
def config_factory():
    return make_config
