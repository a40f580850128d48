"""DMILTrainer trains each stage with its own copy of the arguments (DMILTrainingArguments.for_stage) and gives the
caller's object back as it was: same object, every field equal, also when a stage fails."""

import dataclasses
import json
import logging

import pytest
from accelerate.state import AcceleratorState, PartialState
from transformers import TrainerCallback

from dmil_hf import DMILTrainer
from dmil_hf.testing_utils import InterruptAt, TrainingInterrupted
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model
from dmil_hf.training.run_folder import STAGE_MARKER

STAGE_FIELDS = {"output_dir", "num_train_epochs", "max_steps", "learning_rate", "push_to_hub"}


class RecordStages(TrainerCallback):
    """What each stage's training saw: its arguments (and whether they were the trainer's `args` then), the learning
    rate of every logged step, and its steps."""

    def __init__(self, trainer_ref):
        self.trainer_ref, self.stages = trainer_ref, {}

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer_ref[0]
        self.stages[trainer.stage] = {"args": args, "trainer_args": args is trainer.args, "learning_rates": []}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.stages[logs["stage"]]["learning_rates"].append(logs["learning_rate"])

    def on_train_end(self, args, state, control, **kwargs):
        self.stages[self.trainer_ref[0].stage].update(
            global_step=state.global_step, max_steps=state.max_steps, epoch=state.epoch
        )


def staged_args(tmp_path, **kwargs):
    """8 examples in batches of 4 (2 steps an epoch), a constant learning rate (the logged rate is the peak one), and
    a schedule of its own for each stage: stage 1 by epochs, stage 2 by steps, stage 3 the shared values."""
    settings = dict(
        max_steps=-1, num_train_epochs=1, learning_rate=1e-3, lr_scheduler_type="constant", finetune_method="full",
        stage1_num_train_epochs=2, stage2_max_steps=3, stage2_learning_rate=2e-3, stage3_learning_rate=5e-4,
    )
    return make_args(tmp_path, **{**settings, **kwargs})


# (learning rate, optimizer steps, epochs) each stage must train with
EXPECTED = {1: (1e-3, 4, 2.0), 2: (2e-3, 3, 1.5), 3: (5e-4, 2, 1.0)}


def trainer_with_recorder(args):
    trainer = DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data(8))
    recorder = RecordStages([trainer])
    trainer.add_callback(recorder)
    return trainer, recorder


def assert_stage_trained_as_asked(recorder, run, args, stage):
    learning_rate, steps, epochs = EXPECTED[stage]
    seen = recorder.stages[stage]
    assert seen["trainer_args"] and seen["args"] is not args
    assert seen["learning_rates"] == [pytest.approx(learning_rate)] * steps
    assert seen["global_step"] == seen["max_steps"] == steps and seen["epoch"] == pytest.approx(epochs)
    staged = seen["args"]
    assert (staged.output_dir, staged.learning_rate, staged.push_to_hub) == (str(run / f"stage-{stage}"), learning_rate, False)
    # The stage's copy differs from the caller's arguments in the stage fields only.
    given, copied = dataclasses.asdict(args), dataclasses.asdict(staged)
    assert {name for name in given if given[name] != copied[name]} <= STAGE_FIELDS
    # The arguments saved with the stage's result are its own.
    assert (run / f"stage-{stage}" / STAGE_MARKER).is_file()
    saved = json.loads((run / f"stage-{stage}" / "training_args.json").read_text())
    assert (saved["learning_rate"], saved["output_dir"]) == (learning_rate, str(run / f"stage-{stage}"))
    assert not (run / f"stage-{stage}" / "training_args.bin").exists()  # no pickle in a published folder


def test_each_stage_trains_with_its_own_schedule_and_the_arguments_come_back_unchanged(tmp_path):
    args = staged_args(tmp_path)
    before = dataclasses.asdict(args)
    trainer, recorder = trainer_with_recorder(args)
    trainer.train()
    assert trainer.args is args and dataclasses.asdict(args) == before
    for stage in (1, 2, 3):
        assert_stage_trained_as_asked(recorder, tmp_path / "run", args, stage)
    # The unstaged values are what the caller (and the model card) read afterwards.
    assert (args.learning_rate, args.max_steps, args.num_train_epochs) == (1e-3, -1, 1)


@pytest.mark.parametrize("where", ["training", "saving"])
def test_a_failing_stage_gives_the_arguments_back_unchanged_and_the_run_resumes(tmp_path, monkeypatch, where):
    args = staged_args(tmp_path, save_strategy="steps", save_steps=1)
    before = dataclasses.asdict(args)
    trainer, recorder = trainer_with_recorder(args)
    if where == "training":  # stage 2 stops at the end of its second step, before that step's checkpoint
        interrupt = InterruptAt([trainer], 2, 2)
        trainer.add_callback(interrupt)
    else:  # stage 2 trains to the end, then saving its result fails
        finish = DMILTrainer._finish_stage

        def failing_finish(self, stage, output):
            if stage == 2:
                raise TrainingInterrupted
            return finish(self, stage, output)

        monkeypatch.setattr(DMILTrainer, "_finish_stage", failing_finish)
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    assert trainer.args is args and dataclasses.asdict(args) == before
    assert recorder.stages[2]["trainer_args"] and recorder.stages[2]["args"] is not args
    assert not (tmp_path / "run" / "stage-2" / STAGE_MARKER).exists()

    # The same trainer resumes the run: stage 1 is loaded, stage 2 goes on from its last checkpoint (step 1 or 3),
    # stage 3 runs, each with its own schedule again.
    if where == "training":
        trainer.remove_callback(interrupt)
    else:
        monkeypatch.setattr(DMILTrainer, "_finish_stage", finish)
    recorder.stages.clear()
    trainer.train(resume_from_checkpoint=True)
    assert trainer.args is args and dataclasses.asdict(args) == before
    assert sorted(recorder.stages) == [2, 3]
    if where == "training":
        assert recorder.stages[2]["learning_rates"] == [pytest.approx(2e-3)] * 2
        assert recorder.stages[2]["global_step"] == 3
    # (Resumed from the checkpoint of its last step, the Trainer trains one step more when that step ends mid-epoch,
    # with or without DMIL's stages; only the learning rate is checked there.)
    learning_rates = recorder.stages[2]["learning_rates"]
    assert learning_rates and all(rate == pytest.approx(2e-3) for rate in learning_rates)
    assert_stage_trained_as_asked(recorder, tmp_path / "run", args, 3)


def test_a_stage_copy_changes_only_the_stage_fields_and_keeps_the_running_accelerator(tmp_path):
    # Fields that __post_init__ normalises (strings into lists, enums and dicts, None into defaults) and containers.
    args = make_args(
        tmp_path, report_to="none", lr_scheduler_kwargs='{"min_lr": 1e-5}', lr_scheduler_type="cosine_with_min_lr",
        include_num_input_tokens_seen=True, accelerator_config={"split_batches": False}, eval_strategy="steps",
        eval_steps=None, save_strategy="steps", save_steps=4, load_best_model_at_end=True, logging_steps=2,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=None,
        stage2_learning_rate=3e-3, stage2_max_steps=5, stage2_num_train_epochs=4, push_to_hub=True,
        hub_model_id="someone/dmil", lora_target_modules=["query", "value"],
    )
    trainer = DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data(8), eval_dataset=make_data(4))
    before = dataclasses.asdict(args)
    accelerate_state = dict(AcceleratorState._shared_state), dict(PartialState._shared_state)
    logger_level = logging.getLogger("transformers.training_args").level

    staged = args.for_stage(2, str(tmp_path / "run" / "stage-2"))

    assert dataclasses.asdict(args) == before
    copied = dataclasses.asdict(staged)
    assert {name: copied[name] for name in before if before[name] != copied[name]} == {
        "output_dir": str(tmp_path / "run" / "stage-2"), "learning_rate": 3e-3, "max_steps": 5,
        "num_train_epochs": 4, "push_to_hub": False,
    }
    # Containers are the copy's own: changing them leaves the caller's arguments alone.
    staged.label_names.append("other")
    staged.lr_scheduler_kwargs["min_lr"] = 0.0
    staged.lora_target_modules.clear()
    assert dataclasses.asdict(args) == before
    # Copying did not set Accelerate up again under the trainer's running Accelerator.
    for shared, saved in zip((AcceleratorState._shared_state, PartialState._shared_state), accelerate_state):
        assert shared.keys() == saved.keys() and all(shared[k] is saved[k] for k in saved)
    assert trainer.accelerator.distributed_type == PartialState().distributed_type
    assert (staged.device, staged.n_gpu, staged.world_size) == (args.device, args.n_gpu, args.world_size)
    assert logging.getLogger("transformers.training_args").level == logger_level
