"""The README's python blocks run as a new user would run them: in order, as one session, in an empty folder,
offline, on CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_readme_has_the_examples_a_user_needs():
    code = "\n".join(python_blocks())
    for needed in ("DMILTrainer(", "DMILProcessor.from_backbones_pretrained(", "pipeline(\"multimodal-classification\"",
                   "modality_table="):
        assert needed in code, needed
    assert "bf16=True" not in code.replace("add bf16=True", "")  # no CPU-breaking precision in runnable code


def test_readme_python_blocks_run_in_order_in_an_empty_folder(tmp_path):
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(python_blocks()))
    workdir = tmp_path / "empty"
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home")}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (workdir / "out" / "final" / "processor_config.json").is_file()
    # What a user sees: the stages' accuracies and the pipeline's answer with its interaction composition.
    assert "'uniqueness_flow': 0.0" in proc.stdout and "'interactions'" in proc.stdout
