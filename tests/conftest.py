"""Test set-up: offline before anything imports transformers, fixed seeds, tiny backbones."""

import os

# Must precede any transformers / huggingface_hub import: their constants are read at import time, and an online
# lookup would retry for ~45 s before failing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from dmil_hf.testing_utils import tiny_dmil_config  # noqa: E402

TESTS = Path(__file__).resolve().parent

# The slow groups (`-m slow`): CI runs them on the newest stack only and the rest on both (.ci/run). Listed here in one
# place, by test file and test function ("*": the whole file), each with why it is slow; tests/README.md gives each
# area's time budget. An entry that no longer names a collected test is an error, so the list cannot go stale.
SLOW = {
    # long end-to-end CLI runs: the README's own-data recipe, trained once and evaluated / predicted from
    "cli/test_own_data.py": (
        "test_recipe_starts_from_the_own_data_job_and_beats_chance",
        "test_evaluate_only_scores_the_saved_model_and_changes_nothing",
        "test_predict_writes_each_rows_label_score_and_interaction_weights",
        "test_predict_with_labels_scores_the_test_split",
        "test_predict_without_a_test_split_is_refused_before_training",
    ),
    # two-process distributed runs (gloo on CPU through accelerate launch)
    "training/test_distributed_fsdp.py": ("*",),
    # DeepSpeed ZeRO-2/3 on CPU processes (skipped where deepspeed is not installed)
    "training/test_distributed_deepspeed.py": (
        "test_zero3_on_one_process_gives_the_plain_runs_stages_merged_model_and_adapter",
        "test_zero2_and_zero3_on_two_cpu_processes_give_the_ddp_runs_results",
        "test_zero3_without_whole_model_saves_is_refused_before_training",
    ),
    "cli/test_cli.py": ("test_two_cpu_processes_ddp",),
    "hub/test_hub_preflight.py": (
        "test_ddp_every_process_stops_at_a_failed_check",
        "test_ddp_uploads_failing_after_the_check_end_the_finished_run_with_the_command",
    ),
    # torch.compile (the same torch on both stacks)
    "model/test_speed_levers.py": (
        "test_compiled_model_gives_the_eager_loss_and_gradients_in_every_stage",
        "test_torch_compile_runs_every_stage_through_the_trainer_and_reports_compile_time",
    ),
    # fault matrices: a kill or a failure at each point of a run, then the resume
    "training/test_reliability.py": ("test_resume_inside_a_stage_that_trains_vit_matches_uninterrupted_run",),
    "training/test_trainer_args.py": ("test_a_failing_stage_gives_the_arguments_back_unchanged_and_the_run_resumes",),
    # building and installing a wheel (the same setuptools on both stacks)
    "hub/test_packaging.py": ("test_built_wheel_ships_the_template_and_an_install_reads_it",),
    # every GPU measurement's plumbing, dry-run on CPU
    "benchmarks/test_benchmark_scripts.py": ("test_gpu_check_dry_run",),
    # the real-signal benchmark trained twice at smoke size (with and without --save_models), three methods each
    "benchmarks/test_benchmark_real_signals.py": ("test_save_models_keeps_each_run_and_changes_no_number",),
}


@pytest.hookimpl(tryfirst=True)  # before -m / -k deselect anything
def pytest_collection_modifyitems(config, items):
    modules = {}
    for item in items:
        path = Path(item.path).resolve()
        if TESTS not in path.parents:
            continue
        file = path.relative_to(TESTS).as_posix()
        modules[file] = item.module
        names = SLOW.get(file, ())
        if "*" in names or item.originalname in names:
            item.add_marker(pytest.mark.slow)
    stale = [f"{file}::{name}" for file, module in modules.items() for name in SLOW.get(file, ())
             if name != "*" and not callable(getattr(module, name, None))]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {stale}")


# One thread: tiny models gain nothing from two, and two threads slow to a crawl when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def config_factory():
    """`tiny_dmil_config`: a DMILConfig over tiny backbones, built with the arguments a test passes."""
    return tiny_dmil_config
