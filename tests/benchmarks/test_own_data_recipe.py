"""benchmarks/own_data_recipe.py at its smoke size: the README's own-data recipe (its python block, then its
training/run.py command, two steps a stage) runs end to end and the benchmark reports its figures; and the stand-in
backbones that recipe uses are shaped like the families they stand for."""

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoConfig, Wav2Vec2Model

from dmil_hf.testing_utils import save_tiny_backbones, standin_backbone_configs

REPO = Path(__file__).resolve().parents[2]


def test_the_stand_ins_are_shaped_like_bert_vit_and_wav2vec2_base(tmp_path):
    configs = standin_backbone_configs()
    # wav2vec2-base's feature encoder: stride 320, 400-sample receptive field, 49 frames for a second at 16 kHz.
    audio = configs["audio"]
    assert (audio.conv_stride, audio.conv_kernel) == ((5, 2, 2, 2, 2, 2, 2), (10, 3, 3, 3, 3, 2, 2))
    frames = Wav2Vec2Model(audio)._get_feat_extract_output_lengths
    assert [int(frames(n)) for n in (400, 1600, 16000)] == [1, 4, 49]
    assert (configs["vision"].image_size, configs["vision"].patch_size) == (224, 16)  # 196 patches
    assert configs["text"].max_position_embeddings == 512
    assert {c.hidden_size for c in configs.values()} == {32}  # the width stays tiny
    # What is saved is what the configs say, with processors to match.
    paths = save_tiny_backbones(str(tmp_path))
    assert tuple(AutoConfig.from_pretrained(paths["audio"]).conv_stride) == audio.conv_stride
    image_processor = json.loads(Path(paths["vision"], "preprocessor_config.json").read_text())
    assert image_processor["size"] == {"height": 224, "width": 224}
    tokenizer = json.loads(Path(paths["text"], "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 512


def test_the_benchmark_runs_the_readme_recipe_at_smoke_size(tmp_path):
    output = tmp_path / "own_data_recipe.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "own_data_recipe.py"), "--smoke", "--threads", "1",
         "--output", str(output), "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(output.read_text())
    step, recipe = row["step"], row["recipe"]
    assert step["batch_size"] == 8 and step["step_s"] > 0
    # The README's 0.1 s clips give wav2vec2-base's 4 frames, its images ViT's 196 patches and [CLS].
    assert step["backbone_output_length"]["audio"] == 4 and step["backbone_output_length"]["vision"] == 197
    assert 0 < recipe["first_eval_line_s"] < recipe["total_s"]
    assert recipe["first_eval_line"].startswith("stage 1 |")
    assert {stage: cost["steps"] for stage, cost in recipe["stages"].items()} == {"1": 2, "2": 2, "3": 2}
    assert "first eval line after" in proc.stdout
