"""`DMILTrainingArguments`: `TrainingArguments` plus DMIL's stage schedule (`stageK_*`), the stages to run and the LoRA
settings, and `for_stage`, the copy of them that one stage trains with."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_pt_utils import AcceleratorConfig

from ..models.dmil.stages_dmil import STAGES

# The Trainer fields each stage sets from its own `stageK_*` field (`DMILTrainingArguments.stage_value`).
STAGE_SCHEDULE_FIELDS = ("num_train_epochs", "max_steps", "learning_rate")


@dataclass
class DMILTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus DMIL's stage schedule and LoRA settings.

    Every `stageK_*` field left unset falls back to the plain Trainer field (`num_train_epochs`, `max_steps`,
    `learning_rate`). The reference implementation trains stage 1 at a high learning rate, stage 2 (fresh heads
    only) at a high one too, and stage 3 gently; see `training/configs/` for ready schedules.

    Example:

    ```python
    >>> from dmil_hf import DMILTrainingArguments
    >>> args = DMILTrainingArguments(output_dir="out", stage1_num_train_epochs=2, stage2_learning_rate=1e-3,
    ...                              finetune_method="lora", lora_r=8, use_cpu=True, report_to=[])
    >>> args.stage_list, args.stage_value("learning_rate", 2)
    ([1, 2, 3], 0.001)
    ```
    """

    output_dir: str = field(default="outputs/dmil", metadata={"help": "Where stages, checkpoints and results go."})
    stages: str = field(default="1,2,3", metadata={"help": "Comma-separated DMIL stages to run, e.g. '1,2,3' or '3'."})
    stage1_num_train_epochs: float | None = field(default=None, metadata={"help": "Epochs of stage 1."})
    stage2_num_train_epochs: float | None = field(default=None, metadata={"help": "Epochs of stage 2."})
    stage3_num_train_epochs: float | None = field(default=None, metadata={"help": "Epochs of stage 3."})
    stage1_max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps of stage 1 (overrides epochs)."})
    stage2_max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps of stage 2 (overrides epochs)."})
    stage3_max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps of stage 3 (overrides epochs)."})
    stage1_learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate of stage 1."})
    stage2_learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate of stage 2."})
    stage3_learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate of stage 3."})
    # "full" by default: on the real-signal benchmark (README, "Method") LoRA stage 3 scored below full fine-tuning on
    # every seed; LoRA is for backbones too large to fine-tune fully.
    finetune_method: str = field(
        default="full", metadata={"help": "How the fine-tuning stage (DMIL's 3, two_stage's 2) trains the backbones: 'full' (default) or 'lora' (peft adapters)."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Leaf module names that get LoRA in every backbone, overriding the backbone table."},
    )
    model_card_template: str | None = field(
        default=None, metadata={"help": "Jinja model-card template (default: the package's dmil_hf/hub/templates/model_card.md)."}
    )
    # transformers 5 removed this field from TrainingArguments; DMILTrainer needs it to tell a fresh start into a used
    # folder (an error unless this is set) from a resume.
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the stage folders and final/ an earlier run left in output_dir before training. Without "
            "it (or resume_from_checkpoint), training into a folder that holds a run is an error."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            # Pinned memory serves host-to-accelerator copies; without an accelerator torch only warns about it on
            # every dataloader it builds (each stage, each evaluation).
            self.dataloader_pin_memory = False
        if self.finetune_method not in ("lora", "full"):
            raise ValueError(f"finetune_method must be 'lora' or 'full', got {self.finetune_method!r}")
        try:
            stages = [int(s) for s in str(self.stages).split(",") if s.strip()]
        except ValueError:
            stages = []
        if not stages or any(s not in STAGES for s in stages) or stages != sorted(set(stages)):
            raise ValueError(f"stages must be increasing stage numbers from 1, 2, 3 like '1,2,3', got {self.stages!r}")
        if self.label_names is None:
            self.label_names = ["labels"]
        if self.hub_model_id is not None:
            # Checked offline now, not by the Hub after training (nor pasted as given into the model card).
            from ..hub.repo_ids import check_repo_id

            self.hub_model_id = check_repo_id(self.hub_model_id, "hub_model_id (--hub_model_id)")

    @property
    def stage_list(self) -> list[int]:
        return [int(s) for s in str(self.stages).split(",") if s.strip()]

    def stage_value(self, name: str, stage: int) -> Any:
        """The stage's own value of `num_train_epochs`, `max_steps` or `learning_rate`, else the shared one."""
        value = getattr(self, f"stage{stage}_{name}")
        return getattr(self, name) if value is None else value

    def for_stage(self, stage: int, output_dir: str) -> DMILTrainingArguments:
        """A copy of these arguments that trains `stage`: its own `num_train_epochs`, `max_steps` and `learning_rate`
        (`stage_value`), `output_dir`, and `push_to_hub=False` (DMILTrainer publishes finished stages itself; the
        Trainer would push each stage's checkpoints to the repo root). Every other field keeps its value, and these
        arguments are not changed.

        The copy is made by `dataclasses.replace`, which runs `__post_init__` again on it. That leaves every field's
        value as it is (they are normalised already: enums, lists, parsed dicts), but would also
        - set up devices again, which resets Accelerate's global state (`AcceleratorState`) under the running
          `Accelerator` of a Trainer; the copy reuses the configured state instead (`AcceleratorConfig
          (use_configured_state=True)`, which its `__post_init__` consumes, so the field reads as before);
        - repeat the warnings these arguments gave when they were made (FSDP1's deprecation, FSDP with activation
          checkpointing, torch.compile without a GPU): silenced while the copy is made.
        Fields holding lists, dicts or the accelerator config are deep-copied: nothing done to the copy's reaches
        these arguments. (Other objects, e.g. a `parallelism_config`, are shared, as `dataclasses.replace` does.)
        """
        changes = {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.init and isinstance(getattr(self, f.name), (dict, list, set, AcceleratorConfig))
        }
        if _accelerate_is_set_up() and isinstance(changes.get("accelerator_config"), AcceleratorConfig):
            changes["accelerator_config"].use_configured_state = True
        changes.update({name: self.stage_value(name, stage) for name in STAGE_SCHEDULE_FIELDS})
        with _quiet_training_args():
            staged = dataclasses.replace(self, **changes, output_dir=output_dir, push_to_hub=False)
        if "_n_gpu" in vars(self):
            # The Trainer pins n_gpu to 1 on the arguments it was given when the model is spread over devices
            # (model parallel); the copy computed its own from the visible GPUs.
            staged._n_gpu = self._n_gpu
        return staged


class SavedTrainingArguments(SimpleNamespace):
    """The arguments of a finished run as its `training_args.json` records them (`run_folder.write_training_arguments`),
    read back without building a `TrainingArguments` (which would set up devices, and refuse bf16 on a machine
    without a GPU): every field as an attribute, and the stage schedule's `stage_list` and `stage_value`.

    Example:

    ```python
    >>> from dmil_hf.training.training_args import SavedTrainingArguments
    >>> args = SavedTrainingArguments(stages="1,2,3", learning_rate=5e-5, stage3_learning_rate=1e-5)
    >>> args.stage_list, args.stage_value("learning_rate", 3), args.stage_value("learning_rate", 1)
    ([1, 2, 3], 1e-05, 5e-05)
    ```
    """

    stage_list = DMILTrainingArguments.stage_list
    stage_value = DMILTrainingArguments.stage_value

    def __getattr__(self, name: str) -> Any:
        # A field the file lacks (written by an older release, or a stage field left unset): None, as unset.
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _accelerate_is_set_up() -> bool:
    """Whether Accelerate's process state exists (made by any TrainingArguments' device setup): a copy of the arguments
    can then use it instead of resetting it. (`PartialState()` would create it; transformers checks the same dict.)"""
    from accelerate.state import PartialState

    return PartialState._shared_state != {}


@contextlib.contextmanager
def _quiet_training_args() -> Iterator[None]:
    """Silence the warnings `TrainingArguments.__post_init__` gives (its logger's and `warnings.warn`'s)."""
    training_args_logger = logging.getLogger("transformers.training_args")
    level = training_args_logger.level
    training_args_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        training_args_logger.setLevel(level)
