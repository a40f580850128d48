"""Test set-up: offline before anything imports transformers, fixed seeds, tiny backbones."""

import os

# Must precede any transformers / huggingface_hub import: their constants are read at import time, and an online
# lookup would retry for ~45 s before failing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from dmil_hf.testing_utils import tiny_dmil_config  # noqa: E402

# One thread: tiny models gain nothing from two, and two threads slow to a crawl when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def config_factory():
    """`tiny_dmil_config`: a DMILConfig over tiny backbones, built with the arguments a test passes."""
    return tiny_dmil_config
