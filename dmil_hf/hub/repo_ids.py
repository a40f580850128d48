"""Hub repo ids: the rule they follow, checked offline before the Hub is asked anything, and which repo a run
publishes to (`hub_model_id`, else its output folder's name, as transformers' Trainer names it)."""

from __future__ import annotations

import os
import re
from pathlib import Path


class InvalidRepoIdError(ValueError):
    """A repo id the Hub would refuse (`huggingface_hub.utils.validate_repo_id`), found offline before any call to
    the Hub; the message names where the id came from (the flag) and the rule."""


# What a Hub repo id may be, as huggingface_hub's validate_repo_id checks it, in words for the messages.
REPO_ID_RULE = ("a Hub repo id is NAME or NAMESPACE/NAME: letters, digits, '-', '_' and '.', at most 96 characters "
                "a part, neither starting nor ending with '-' or '.', without '--' or '..', not ending in '.git'")
# A Hugging Face access token (`hf_` and 30-odd letters and digits): a valid-looking repo name that must never reach
# a model card, a repo URL or a printed command.
_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")


def check_repo_id(repo_id: str, source: str = "repo_id") -> str:
    """`repo_id` checked offline with huggingface_hub's own rule (`validate_repo_id`), normalised: surrounding blanks
    and the Hub's URL (`https://huggingface.co/NAME`, as copied from a browser) taken off. Raises
    `InvalidRepoIdError` naming `source` (the flag or field it came from) and the rule: an invalid id used to reach
    the Hub and come back as "forbidden" or "unreachable". A local path and an access token are refused as such (a
    repo id is pasted into the model card's `from_pretrained(...)` snippet).

    Example:

    ```python
    >>> from dmil_hf.hub.publisher import check_repo_id
    >>> check_repo_id(" https://huggingface.co/someone/dmil-tiny ", "--hub_model_id")
    'someone/dmil-tiny'
    ```
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise InvalidRepoIdError(f"{source} must be a string, got {type(repo_id).__name__}; {REPO_ID_RULE}")
    normalised = repo_id.strip()
    for prefix in (f"{hub_endpoint().rstrip('/')}/", "https://huggingface.co/", "hf.co/", "huggingface.co/"):
        if normalised.startswith(prefix):
            normalised = normalised[len(prefix):].rstrip("/")
            break
    if _TOKEN.search(normalised):
        raise InvalidRepoIdError(
            f"{source} looks like a Hugging Face access token, not a repo id: give the token as the token "
            f"(--hub_token; --token of the push command; or `hf auth login`, HF_TOKEN) and the repo id here; "
            f"{REPO_ID_RULE}"
        )
    if os.path.isabs(normalised) or normalised.startswith(("./", "../", "~")):
        raise InvalidRepoIdError(
            f"{source} {repo_id!r} is a local path, not a Hub repo id (the model is saved in output_dir); "
            f"{REPO_ID_RULE}"
        )
    try:
        validate_repo_id(normalised)
    except HFValidationError as err:
        raise InvalidRepoIdError(f"{source} {repo_id!r} is not a valid Hub repo id ({err}); {REPO_ID_RULE}") from None
    return normalised


def hub_endpoint() -> str:
    """The Hub endpoint huggingface_hub talks to (`HF_ENDPOINT`, read when huggingface_hub is imported)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def run_name(output_dir: str | Path) -> str:
    """The name of a run's output folder, `.` and `..` resolved (transformers' Trainer names the repo of a run
    without `hub_model_id` so): `outputs/dmil-tiny` -> `dmil-tiny`, `.` -> the working directory's name."""
    return os.path.basename(os.path.abspath(output_dir))


def repo_id_and_source(hub_model_id: str | None, output_dir: str | Path) -> tuple[str, str]:
    """The repo a run publishes to, unchecked, and what to call it in a message: `hub_model_id` if set, else the name
    of the run's output folder (`run_name`)."""
    if hub_model_id:
        return hub_model_id, "hub_model_id (--hub_model_id)"
    return run_name(output_dir), (f"--hub_model_id is not set (set it to name the repo), so output_dir "
                                  f"{str(output_dir)!r} names the repo: its folder's name")


def resolve_repo_id(hub_model_id: str | None, output_dir: str | Path) -> str:
    """The repo a run publishes to, checked and normalised (`check_repo_id`): `hub_model_id` if set, else the name of
    the run's output folder (`run_name`)."""
    return check_repo_id(*repo_id_and_source(hub_model_id, output_dir))
