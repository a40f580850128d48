"""The README's python blocks run as a new user would run them: in order, as one session, in an empty folder,
offline, on CPU. Each docs/ page's blocks run the same way, one session per page. The README stays a front door,
and no relative link of the README, docs/ or the benchmark report points nowhere."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
REPO = README.parent  # the repository's root, wherever the tests folder sits
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "benchmarks" / "README.md"]
MAX_README_LINES = 350


def python_blocks(page: Path = README) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", page.read_text(), flags=re.S | re.M)


def run_blocks(blocks: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """The blocks as one script, run in an empty folder, offline, with a fresh HF cache."""
    script = tmp_path / "session.py"
    script.write_text("\n\n".join(blocks))
    workdir = tmp_path / "empty"
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home")}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, workdir


def test_readme_has_the_examples_a_user_needs():
    code = "\n".join(python_blocks())
    for needed in ("DMILTrainer(", "DMILProcessor.from_backbones_pretrained(", "pipeline(\"multimodal-classification\""):
        assert needed in code, needed
    assert "modality_table=" in "\n".join(python_blocks(REPO / "docs" / "modalities.md"))
    for page in PAGES:  # no CPU-breaking precision in runnable code
        assert "bf16=True" not in "\n".join(python_blocks(page)).replace("add bf16=True", ""), page


def test_readme_python_blocks_run_in_order_in_an_empty_folder(tmp_path):
    proc, workdir = run_blocks(python_blocks(), tmp_path)
    assert (workdir / "out" / "final" / "processor_config.json").is_file()
    # What a user sees: the stages' accuracies and the pipeline's answer with its interaction composition.
    assert "'interactions'" in proc.stdout and "'uniqueness_audio'" in proc.stdout


# What each page's session prints that a reader is told it prints.
DOCS_OUTPUT = {"modalities.md": "'uniqueness_flow': 0.0", "problem_types.md": "regression torch.Size([8, 1])",
               "training.md": "(16, 5)", "inference.md": "torch.Size([3, 3]) torch.Size([3, 4])",
               "hub.md": "dmil_hf True"}


@pytest.mark.parametrize("page", [page for page in DOCS if python_blocks(page)], ids=lambda page: page.name)
def test_docs_python_blocks_run_in_order_in_an_empty_folder(page, tmp_path):
    proc, _ = run_blocks(python_blocks(page), tmp_path)
    assert DOCS_OUTPUT[page.name] in proc.stdout


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; the long form belongs in docs/"


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives `page`: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.S | re.M)  # no headings inside code
    slugs = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.S | re.M)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]  # not http:, mailto:, ...


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_point_to_files_that_exist(page):
    assert page.is_file(), page
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"
