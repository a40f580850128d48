"""Fixtures of the processing tests."""

import pytest

from dmil_hf.testing_utils import tiny_tokenizer

WORDS = ("a", "cat", "dog", "sits", "barks", "on", "the", "mat", "loud", "quiet", "hello", "world")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece tokenizer over a dozen words, built once per module."""
    tok = tiny_tokenizer(tmp_path_factory.mktemp("vocab"), WORDS)
    assert tok.tokenize("the cat") == ["the", "cat"]
    return tok
