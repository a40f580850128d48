"""DMILTrainer: DMIL's three training stages on top of `transformers.Trainer`.

Stage 1 trains the backbones, projections and level 1 (intra-modal decomposition); stage 2 freezes all of that and
trains level 2, synergy, the component heads and the gate; stage 3 fine-tunes everything with every loss on, the
backbones through LoRA adapters (peft) by default or fully. Each stage has its own optimizer, schedule, epochs and
learning rate, writes its checkpoints under `output_dir/stage-k/checkpoint-*` and its result to `output_dir/stage-k`,
and starts from the previous stage's saved result. Devices, mixed precision and distribution are the Trainer's
(and so Accelerate's) business; nothing here is home-made.

Every paradigm's stages come from its stage table (`stages_dmil.PARADIGM_STAGES`): the joint and ensemble baselines
have a single stage (saved as `stage-1`) trained with the stage-1 settings; the two_stage baseline has two (unimodal
pretraining, then joint fine-tuning), saved, resumed and scheduled (`stage1_*`, `stage2_*`) like DMIL's.

Checkpoints are read back the way `from_pretrained` reads them (the Trainer's own raw `load_state_dict` misses the
keys that transformers renames on load, e.g. ViT's), and a missing or unexpected key is an error.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers.trainer as _trainer_module
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.processing_utils import ProcessorMixin
from transformers.trainer_pt_utils import AcceleratorConfig
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    is_sagemaker_mp_enabled,
)

from ..models.dmil.backbones_dmil import DIRECT_WEIGHT_READERS
from ..hub.publisher import (
    DMILHubPreflightError,
    DMILHubPublisher,
    DMILHubUploadError,
    _first_line,
    push_command,
    resolve_repo_id,
)
from ..models.dmil.modeling_dmil import DMILForMultimodalClassification
from ..models.dmil.stages_dmil import EVERYTHING, STAGES, stage_plans

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

STAGE_MARKER = "dmil_stage.json"
# The whole run's log (every stage's entries, at the run-wide step), at the top of output_dir.
RUN_LOG_NAME = "log_history.json"
# Names the Trainer gives to a checkpoint's files (transformers.trainer; spelled out here because they are a file
# format, while where transformers keeps the constants is not).
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAMES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_NAME = "scheduler.pt"
# The model weights of a checkpoint, in any of the forms save_pretrained writes (whole, sharded, or a peft adapter).
WEIGHT_NAMES = (
    SAFE_WEIGHTS_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME,
)
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
# The Trainer fields each stage sets from its own `stageK_*` field (`DMILTrainingArguments.stage_value`).
STAGE_SCHEDULE_FIELDS = ("num_train_epochs", "max_steps", "learning_rate")


def _align_special_tokens_if_tokenizer(model, processing_class) -> None:
    """transformers' `align_special_tokens`, skipped for a processor without a tokenizer.

    `Trainer.train` (5.17 to 5.24 at least) aligns the model config's special tokens with
    `processing_class.tokenizer` and fails with `'NoneType' object has no attribute 'eos_token_id'` when the processor
    has none, which is every DMIL model without text (video + audio, rgb + flow + audio). With no tokenizer there is
    nothing to align.
    """
    if isinstance(processing_class, ProcessorMixin) and getattr(processing_class, "tokenizer", None) is None:
        return
    _transformers_align_special_tokens(model, processing_class)


_transformers_align_special_tokens = _trainer_module.align_special_tokens
if getattr(_trainer_module.align_special_tokens, "__name__", "") != _align_special_tokens_if_tokenizer.__name__:
    _trainer_module.align_special_tokens = _align_special_tokens_if_tokenizer


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
        default=None, metadata={"help": "Jinja model-card template (default: the package's dmil_hf/templates/model_card.md)."}
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
        if not stages or any(s not in (1, 2, 3) for s in stages) or stages != sorted(set(stages)):
            raise ValueError(f"stages must be increasing stage numbers from 1, 2, 3 like '1,2,3', got {self.stages!r}")
        if self.label_names is None:
            self.label_names = ["labels"]

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


def _is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP (1 or 2) holds the model's parameters sharded across processes."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(module, (FSDPModule, FullyShardedDataParallel)) for module in model.modules())


def _own_class(model: torch.nn.Module) -> type:
    """The model's own class: FSDP2's `fully_shard` swaps it for a generated subclass (`FSDP<name>`), which
    save_pretrained would record in `auto_map` (with torch's FSDP modules copied as remote code)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def _unwrap(model: torch.nn.Module) -> DMILForMultimodalClassification:
    """The DMIL model under DDP / peft wrappers."""
    while not isinstance(model, DMILForMultimodalClassification):
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            raise TypeError(f"DMILTrainer needs a DMILForMultimodalClassification, got {type(model).__name__}")
    return model


def lora_target_regex(model: DMILForMultimodalClassification, leaf_names: list[str] | None = None) -> str:
    """A regex that peft full-matches against module names: each backbone's LoRA targets, scoped to that backbone."""
    parts = []
    for modality in model.modalities:
        names = leaf_names or model.specs[modality].lora_targets
        parts.append(rf"backbones\.{modality}\.(.*\.)?({'|'.join(map(re.escape, names))})")
    return rf"^({'|'.join(parts)})$"


def head_module_names(model: DMILForMultimodalClassification) -> list[str]:
    """Every parameterised leaf module outside the backbones: trained fully (peft `modules_to_save`) in stage 3.

    Leaves rather than the top-level containers because peft's wrapper cannot stand in for an indexed ModuleDict.
    """
    return [
        name
        for name, module in model.named_modules()
        if name
        and not name.startswith("backbones.")
        and not list(module.children())
        and any(True for _ in module.parameters(recurse=False))
    ]


def prepare_model_for_stage(
    model: DMILForMultimodalClassification,
    stage: int,
    finetune_method: str = "lora",
    lora_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """Set what trains in a stage; returns the model to train (peft-wrapped for a LoRA stage 3) and the frozen
    modules, which the caller must hold in eval mode.

    What trains is the paradigm's stage table (`stages_dmil.stage_plans(config.paradigm)[stage]`); in a fine-tuning
    stage (DMIL's stage 3, two_stage's stage 2) the backbones train through LoRA adapters when
    `finetune_method="lora"` (the heads then train fully as peft `modules_to_save`). The joint and ensemble baselines
    train everything in their single stage.
    """
    model.requires_grad_(True)
    frozen: list[torch.nn.Module] = []
    # The stage table says what trains; everything else is frozen and held in eval mode (dropout off).
    plan = stage_plans(model.config.paradigm)[stage]
    trained = plan.trained_modules(model.config)
    if EVERYTHING not in trained:
        for name, module in model.stage_modules().items():
            if name not in trained:
                module.requires_grad_(False)
                frozen.append(module)
    if plan.finetune and finetune_method == "lora":
        model = add_lora(model, **(lora_kwargs or {}))
    return model, frozen


def add_lora(model: DMILForMultimodalClassification, **lora_kwargs: Any) -> torch.nn.Module:
    """Wrap the model in peft LoRA: adapters on each backbone's table targets (unless `target_modules` is given),
    every head trained fully as `modules_to_save`. `lora_kwargs` go to `LoraConfig` (r, lora_alpha, ...)."""
    from peft import LoraConfig, get_peft_model

    lora_kwargs.setdefault("target_modules", lora_target_regex(model))
    lora = LoraConfig(modules_to_save=head_module_names(model), task_type=None, **lora_kwargs)
    _refuse_unreachable_targets(model, lora)
    _refuse_backbones_without_targets(model, lora)
    return get_peft_model(model, lora)


def _refuse_backbones_without_targets(model: torch.nn.Module, lora: Any) -> None:
    """Raise before wrapping when a backbone has no module the LoRA targets match: in a LoRA stage it would neither
    train nor say so (a family the table lacks whose attention has other leaf names, GPT-2's `c_attn`, or
    `lora_target_modules` naming one family's leaves only); peft itself complains only when no backbone matches."""
    from peft.tuners.tuners_utils import check_target_module_exists

    backbones = getattr(model, "backbones", None) or {}
    untargeted = [
        f"{modality} ({backbone.config.model_type})"
        for modality, backbone in backbones.items()
        if not any(
            check_target_module_exists(lora, f"backbones.{modality}.{name}")
            for name, _ in backbone.named_modules() if name
        )
    ]
    if untargeted:
        raise ValueError(
            f"LoRA target_modules {lora.target_modules!r} match no module of the backbone(s) {', '.join(untargeted)}, "
            "which would then not train in the LoRA stage; give leaf names that each backbone has "
            "(lora_target_modules, or the family's lora_targets in dmil_hf.models.dmil.backbones_dmil.BACKBONES)"
        )


def _refuse_unreachable_targets(model: torch.nn.Module, lora: Any) -> None:
    """Raise before wrapping when a LoRA target is a Linear whose parent reads its weight as a tensor instead of
    calling it (`backbones_dmil.DIRECT_WEIGHT_READERS`): its adapter would train and save but never run."""
    from peft.tuners.tuners_utils import check_target_module_exists

    unreachable = [
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        for child in DIRECT_WEIGHT_READERS.get(type(module).__name__, ())
        if hasattr(module, child) and check_target_module_exists(lora, f"{name}.{child}" if name else child)
    ]
    if unreachable:
        raise ValueError(
            f"LoRA target_modules match {unreachable[:3]}{' ...' if len(unreachable) > 3 else ''}: their parent "
            "module reads their weight directly, so an adapter there would never run; target other modules (the "
            "backbone table's defaults avoid these)"
        )


# -------------------------------------------------------------------- checkpoints


def checkpoint_is_complete(checkpoint: str) -> bool:
    """Whether a Trainer checkpoint was written to the end: model weights and a readable trainer state.

    `Trainer._save_checkpoint` writes the weights, then optimizer, scheduler and RNG state, and the trainer state last,
    so a checkpoint whose trainer state is there was not cut short by a kill.
    """
    if not any(os.path.isfile(os.path.join(checkpoint, name)) for name in WEIGHT_NAMES):
        return False
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest complete `checkpoint-N` in `folder` (None if there is none), warning about each newer incomplete
    one it passes over."""
    if not os.path.isdir(folder):
        return None
    steps = sorted(
        ((int(match.group(1)), name) for name in os.listdir(folder)
         if (match := _CHECKPOINT_NAME.fullmatch(name)) and os.path.isdir(os.path.join(folder, name))),
        reverse=True,
    )
    for _, name in steps:
        checkpoint = os.path.join(folder, name)
        if checkpoint_is_complete(checkpoint):
            return checkpoint
        logger.warning(
            "Skipping the incomplete checkpoint %s (no model weights or no readable %s: its write was interrupted); "
            "resuming from the last complete checkpoint before it, if any.", checkpoint, TRAINER_STATE_NAME,
        )
    return None


def missing_optimizer_files(checkpoint: str) -> list[str]:
    """The optimizer and scheduler state files a checkpoint lacks (empty when it can restore both)."""
    missing = []
    if not any(os.path.isfile(os.path.join(checkpoint, name)) for name in OPTIMIZER_NAMES):
        missing.append(OPTIMIZER_NAMES[0])
    if not os.path.isfile(os.path.join(checkpoint, SCHEDULER_NAME)):
        missing.append(SCHEDULER_NAME)
    return missing


def load_checkpoint_exactly(model: torch.nn.Module, checkpoint: str) -> None:
    """Load a checkpoint written by `save_pretrained` (a full model, or a peft adapter for a peft model) into `model`
    in place, every tensor of it, or raise `ValueError` naming the missing / unexpected keys."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        _load_adapter_exactly(model, checkpoint)
    elif isinstance(model, PreTrainedModel):
        _load_model_exactly(model, checkpoint)
    else:
        raise TypeError(f"cannot load {checkpoint} into a {type(model).__name__}: not a PreTrainedModel or peft model")


def _load_model_exactly(model: PreTrainedModel, checkpoint: str) -> None:
    # save_pretrained writes some backbones under their legacy key names (transformers 5.x ViT, DINOv2, AST: the
    # `revert_weight_conversion` of modeling_utils), and only from_pretrained maps them back to the modules' names. So
    # the checkpoint is read by from_pretrained into a model of the same class (float32 holds any float16/bfloat16/
    # float32 weight exactly), and copied from there into `model`, which keeps its device, dtype and optimizer. The
    # price is a second copy of the weights in CPU memory while this runs.
    # DMILPreTrainedModel.from_pretrained raises on missing or unexpected keys (transformers' own only logs them).
    loaded = type(model).from_pretrained(checkpoint, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)


def _load_adapter_exactly(model: PeftModel, checkpoint: str) -> None:
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    adapter = model.active_adapter
    result = set_peft_model_state_dict(model, load_peft_weights(checkpoint, device="cpu"), adapter_name=adapter)
    # An adapter file holds only the adapter's own tensors (LoRA factors, modules_to_save copies): every base weight
    # is "missing" by design, but none of the adapter's may be.
    missing = [key for key in result.missing_keys if f".{adapter}." in key]
    _raise_on_bad_keys(checkpoint, missing, result.unexpected_keys)


def _raise_on_bad_keys(checkpoint: str, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    problems = {kind: sorted(keys) for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys}
    if problems:
        details = "; ".join(f"{len(keys)} {kind} keys, e.g. {keys[:5]}" for kind, keys in problems.items())
        raise ValueError(
            f"checkpoint {checkpoint} does not match the model being trained ({details}); refusing to continue with "
            "part of the model left at other weights"
        )


class _TermMeans:
    """Running sums of the unweighted loss terms between two logs, kept on the device: one stacked tensor per step
    (two kernels, where an add per term was about thirty) and read on the host only when a log asks for the means."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._sums: dict[tuple[str, ...], torch.Tensor] = {}
        self.steps = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        names = tuple(terms)
        values = torch.stack([value.detach().float() for value in terms.values()])
        self._sums[names] = self._sums[names] + values if names in self._sums else values
        self.steps += 1

    def means(self) -> dict[str, float]:
        means: dict[str, float] = {}
        for names, sums in self._sums.items():
            means.update(zip(names, (sums / self.steps).tolist()))
        return means


class _FirstSteps(TrainerCallback):
    """The durations of a stage's first two optimizer steps; their difference is the compile time under torch.compile
    (the first step compiles the forward and backward graphs, the second runs them)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.durations: list[float] = []
        self._start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if len(self.durations) < 2:
            self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None and len(self.durations) < 2:
            self.durations.append(time.perf_counter() - self._start)
            self._start = None

    @property
    def compile_seconds(self) -> float | None:
        if len(self.durations) < 2:
            return self.durations[0] if self.durations else None
        return max(self.durations[0] - self.durations[1], 0.0)


# The figures a console line shows of an evaluation (its full entry, every per-type and per-component figure, goes to
# the log history and output_dir/log_history.json) and of a training log.
CONSOLE_EVAL_KEYS = ("loss", "ce_final", "accuracy", "f1_macro", "synergy_indicator")
CONSOLE_TRAIN_KEYS = ("loss", "learning_rate", "grad_norm")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def console_line(logs: dict[str, Any]) -> str:
    """One short line for a Trainer log entry: where it is (stage, step, epoch), then the headline figures. A training
    log shows its loss, learning rate and gradient norm; an evaluation (`eval_*`, `test_*`, `predict_*` keys) its
    loss, CE, accuracy, macro-F1 and synergy indicator, with a count of the figures left to the log history; a
    stage's end its mean training loss and runtime."""
    where = [f"{k} {_short(logs[k])}" for k in ("stage", "step", "epoch") if k in logs]
    prefix = next((p for p in ("eval", "test", "predict") if any(k.startswith(p + "_") for k in logs)), None)
    if prefix is not None:
        shown = [f"{k} {_short(logs[f'{prefix}_{k}'])}" for k in CONSOLE_EVAL_KEYS if f"{prefix}_{k}" in logs]
        hidden = sum(1 for k in logs if k.startswith(prefix + "_") and k[len(prefix) + 1:] not in CONSOLE_EVAL_KEYS)
        more = f" (+{hidden} more in the log history)" if hidden else ""
        return " | ".join([*where, f"{prefix}: " + ", ".join(shown) + more])
    if "train_runtime" in logs:
        done = [f"train_loss {_short(logs['train_loss'])}"] if "train_loss" in logs else []
        return " | ".join([*where, "done: " + ", ".join([*done, f"{logs['train_runtime']:.1f} s"])])
    shown = [f"{k} {_short(logs[k])}" for k in CONSOLE_TRAIN_KEYS if k in logs]
    return " | ".join([*where, ", ".join(shown)]) if shown else " | ".join(where + [str(logs)])


class DMILProgressCallback(ProgressCallback):
    """The Trainer's progress bar, one per stage (labelled `stage k`), without nested evaluation bars while a stage
    trains (in a log file or a non-terminal they leave stray cursor-up `[A` lines), and logs written as one short line
    each (`console_line`) instead of their whole dictionary. Every figure stays in the log history."""

    def __init__(self):
        super().__init__()
        self.stage: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None and self.stage is not None:
            self.training_bar.set_description(f"stage {self.stage}")

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.training_bar is None:  # a standalone evaluate() / predict() keeps its bar
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = console_line(logs)
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:
                print(line)


@contextlib.contextmanager
def _without_nested_bars(active: bool = True) -> Iterator[None]:
    """transformers' own progress bars (writing and loading weights, while a stage saves its checkpoints and loads the
    previous stage) off while a stage's training bar is on the console: nested inside it they print a second bar and
    stray cursor-up (`[A`) lines. Their setting is given back afterwards; the Trainer's bars are not these."""
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    if active and was_on:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if active and was_on:
            transformers_logging.enable_progress_bar()


class DMILPrinterCallback(TrainerCallback):
    """What `disable_tqdm=True` prints instead of the Trainer's whole log dictionaries: one line per log
    (`console_line`)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(console_line(logs))


class DMILTrainer(Trainer):
    """A `Trainer` that runs DMIL's decomposition pretraining (stages 1-2) and interaction fine-tuning (stage 3).

    `train()` runs the stages of `args.stages` that the model's paradigm has (`stages_dmil.stage_plans`: DMIL 1-3,
    two_stage 1-2, joint and ensemble 1) in order and, once the paradigm's last stage is done, writes
    `output_dir/final` (`save_final`); `train(stage=k)` runs one. Under `resume_from_checkpoint=True`
    finished stages are loaded from `output_dir/stage-k` and the interrupted one resumes from its last complete
    checkpoint (an incomplete one, left by a kill during its write, is skipped with a warning); a checkpoint path
    resumes inside the stage it belongs to. Without resuming, training into an `output_dir` that already holds a run
    (a folder of a stage to run or of a later one, or `final/`) is an error unless `args.overwrite_output_dir`, which
    deletes those folders first; the folders of stages before the first one run are the run's starting point and are
    kept (`train(stage=3)` continues from `stage-2`). After a LoRA stage 3, `output_dir/stage-3` holds the
    merged model (loads with `AutoModel.from_pretrained`) and `output_dir/stage-3/adapter` the adapter (loads with
    peft onto the stage-2 model). The unweighted loss terms are logged next to the loss. Each stage trains with its own
    copy of the arguments (`DMILTrainingArguments.for_stage`, which is `self.args` while the stage runs); the object
    passed as `args` is never changed.

    Hub uploads (`push_to_hub`) go through `hub_dmil.DMILHubPublisher`. `train()` checks the Hub first (token, endpoint,
    write access; `DMILHubPreflightError` before anything is trained), then uploads each finished stage and the final
    model. An upload that fails later does not stop the run: it is logged with where the result is saved, the
    remaining stages train, and `train()` ends with `DMILHubUploadError` naming the command that pushes the saved run
    (`python -m dmil_hf.hub.publisher push ...`).

    Example:

    ```python
    >>> import torch
    >>> from datasets import Dataset
    >>> from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainer, DMILTrainingArguments
    >>> from dmil_hf.testing_utils import tiny_text_config, tiny_vision_config
    >>> config = DMILConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config(), num_labels=2)
    >>> data = Dataset.from_dict({"input_ids": torch.randint(3, 99, (8, 6)).tolist(),
    ...                           "pixel_values": torch.randn(8, 3, 16, 16).tolist(), "labels": [0, 1] * 4})
    >>> args = DMILTrainingArguments(output_dir="/tmp/dmil-doc", max_steps=2, use_cpu=True, report_to=[],
    ...                              finetune_method="full", save_strategy="no", disable_tqdm=True)
    >>> trainer = DMILTrainer(model=DMILForMultimodalClassification(config), args=args, train_dataset=data)
    >>> sorted(trainer.train().metrics["stages"])
    ['1', '2', '3']
    ```
    """

    # The model returns a per-batch mean and ignores num_items_in_batch: the Trainer must divide by the
    # accumulation steps itself (transformers >= 5.19 reads this; older versions read model_accepts_loss_kwargs).
    loss_is_scaled_for_ga = False

    def __init__(self, model: DMILForMultimodalClassification | None = None, args: TrainingArguments | None = None, **kwargs):
        if args is not None and not isinstance(args, DMILTrainingArguments):
            raise TypeError("DMILTrainer needs DMILTrainingArguments (TrainingArguments plus the stage schedule)")
        super().__init__(model=model, args=args, **kwargs)
        self._check_distribution()
        from .data_collator import DMILDataCollator

        if isinstance(self.data_collator, DMILDataCollator) and self.model is not None:
            # String labels map through the model's own classes unless the collator was given a label2id.
            self.data_collator = self.data_collator.with_labels_of(_unwrap(self.model).config)
        self.model_accepts_loss_kwargs = False
        self.stage: int | None = None
        self.stage_results: dict[int, dict[str, float]] = {}
        self._base_output_dir = self.args.output_dir
        self._frozen_modules: list[torch.nn.Module] = []
        # The LoRA adapter of the last stage this trainer finished or loaded, if that stage trained through one:
        # save_final copies this one and no other (a folder can hold an adapter another run left there).
        self._adapter_dir: str | None = None
        self._term_means = _TermMeans()
        # Optimizer steps of the stages before the current one, so that logs carry one run-wide step (tensorboard's
        # curves of the three stages follow each other instead of restarting at step 1), and the whole run's log.
        self._step_offset = 0
        # Where save_final last wrote the complete model (None before it has), on every process.
        self.final_dir: str | None = None
        self._parameter_count: tuple[torch.nn.Module | None, int] = (None, 0)
        # Times each stage's first two steps: under torch_compile the first one compiles.
        self._first_steps = _FirstSteps()
        self.add_callback(self._first_steps)
        # The console: one bar per stage and one short line per log instead of the Trainer's whole dictionaries
        # (a notebook's progress callback, or one the caller chose, is left alone).
        self._progress: DMILProgressCallback | None = None
        for default, ours in ((ProgressCallback, DMILProgressCallback), (PrinterCallback, DMILPrinterCallback)):
            for callback in [c for c in self.callback_handler.callbacks if type(c) is default]:
                self.callback_handler.remove_callback(callback)
                self.add_callback(ours())
        self._progress = next((c for c in self.callback_handler.callbacks if isinstance(c, DMILProgressCallback)), None)
        self.run_log_history: list[dict[str, Any]] = []
        # Hub uploads of the running train() call that failed: (what, local folder, error), main process only.
        self._failed_uploads: list[tuple[str, str, str]] = []
        # The repo's full id (`user/name`) as the pre-flight check found it, for messages; on every process.
        self._checked_repo_id: str | None = None

    def _check_distribution(self) -> None:
        """Refuse a launch that Accelerate did not turn into one distributed run, and say when FSDP was asked for but
        not set up. `accelerate launch --num_processes 2` on a machine without GPUs, without `--use_cpu true` (or
        ACCELERATE_USE_CPU=1), starts independent single-process runs that all write output_dir as main process; and
        Accelerate (1.15) has no FSDP on CPU: a CPU run launched with `--use_fsdp` trains with DDP."""
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.accelerator.num_processes != launched:
            raise RuntimeError(
                f"launched as {launched} processes, but Accelerate set up {self.accelerator.num_processes} "
                f"({self.accelerator.distributed_type}): each process would train alone and overwrite the others' "
                "output. On CPU, pass --use_cpu true (or set ACCELERATE_USE_CPU=1) for DDP over gloo."
            )
        fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if fsdp_asked and not self.is_fsdp_enabled and self.is_world_process_zero():
            logger.warning(
                "FSDP was asked for (ACCELERATE_USE_FSDP) but Accelerate runs %s: it has no FSDP on CPU, so the model "
                "is replicated in each process (DDP), not sharded.", self.accelerator.distributed_type,
            )

    # ---------------------------------------------------------------- stage orchestration

    def stage_dir(self, stage: int) -> str:
        return os.path.join(self._base_output_dir, f"stage-{stage}")

    def stage_is_complete(self, stage: int) -> bool:
        return os.path.isfile(os.path.join(self.stage_dir(stage), STAGE_MARKER))

    def train(self, resume_from_checkpoint: str | bool | None = None, stage: int | None = None, **kwargs):
        """Run the stages of `args.stages` (or only `stage`) in order; see the class docstring for resuming."""
        paradigm = _unwrap(self.model).config.paradigm
        plans = stage_plans(paradigm)
        if stage is not None:
            if stage not in plans:
                raise ValueError(f"the {paradigm} paradigm has the stages {sorted(plans)}; got stage={stage!r}")
            stages = [stage]
        else:
            # args.stages (default "1,2,3") picks among the paradigm's own stages: a baseline runs its one, two_stage
            # its two.
            stages = [k for k in self.args.stage_list if k in plans]
            if not stages:
                raise ValueError(
                    f"the {paradigm} paradigm has the stages {sorted(plans)}; stages={self.args.stages!r} names none "
                    "of them"
                )
        resume_stage, resume_path = None, None
        if isinstance(resume_from_checkpoint, str):
            match = re.search(r"stage-(\d)", str(Path(resume_from_checkpoint).resolve().parent.name))
            if not match or int(match.group(1)) not in stages:
                raise ValueError(
                    f"resume_from_checkpoint={resume_from_checkpoint!r} must be a checkpoint inside "
                    f"{self._base_output_dir}/stage-k/ for one of the stages run ({stages})"
                )
            if not checkpoint_is_complete(resume_from_checkpoint):
                raise ValueError(
                    f"resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint (it needs model "
                    f"weights and {TRAINER_STATE_NAME}; its write may have been interrupted)"
                )
            resume_stage, resume_path = int(match.group(1)), resume_from_checkpoint
        if self.args.push_to_hub:
            # Before anything is trained, and before _claim_output_dir deletes an earlier run.
            self._check_hub()
        if not resume_from_checkpoint:
            self._claim_output_dir(stages)

        self._failed_uploads = []
        output = None
        for k in stages:
            resuming_later_stage = resume_stage is not None and k < resume_stage
            if resuming_later_stage or (resume_from_checkpoint is True and self.stage_is_complete(k)):
                self._load_finished_stage(k)
                logger.info("stage %d finished earlier: loaded from %s", k, self.stage_dir(k))
                continue
            checkpoint = resume_path if k == resume_stage else None
            if resume_from_checkpoint is True:
                checkpoint = last_complete_checkpoint(self.stage_dir(k))
            if checkpoint is not None:
                logger.info("resuming stage %d from %s", k, checkpoint)
            elif resume_from_checkpoint is True:
                logger.info("stage %d: no checkpoint of it to resume from; training it from its start", k)
            output = self._run_stage(k, checkpoint, **kwargs)
            if self.args.push_to_hub:
                self._upload_or_defer(f"stage-{k}", self.stage_dir(k), lambda k=k: self._push_stage(k))
        final_dir = None
        if stages[-1] == max(plans):
            # The finished model, ready for AutoModel and the pipeline: final/ (model, processor, adapter, card). A run
            # that stops earlier (stages="1,2") leaves its result in its last stage's folder, to be continued.
            final_dir = self.save_final()
        if self.args.push_to_hub:
            # What push_to_hub does, with the save outside the upload's error handling: a failed save is an error.
            final_dir = final_dir or self.save_final()
            self._upload_or_defer("the final model", final_dir,
                                  lambda: self._upload(final_dir, message="End of training"))
        if output is None:  # every stage was already finished and has been loaded
            output = TrainOutput(global_step=0, training_loss=0.0, metrics={})
        metrics = {**output.metrics, "stages": {str(k): v for k, v in self.stage_results.items()}}
        result = TrainOutput(output.global_step, output.training_loss, metrics)
        if self.args.push_to_hub:
            self._raise_on_failed_uploads(result)
        return result

    def _claim_output_dir(self, stages: list[int]) -> None:
        """Make sure a fresh (not resumed) run does not continue or mix with an earlier run's results: refuse a folder
        that holds them, or delete them under `overwrite_output_dir`."""
        stale = self._earlier_run_folders(stages)
        if not stale:
            return
        if not self.args.overwrite_output_dir:
            raise ValueError(
                f"output_dir {self._base_output_dir} already holds a run ({', '.join(map(os.path.basename, stale))}). "
                "Pass resume_from_checkpoint=True (--resume_from_checkpoint true) to continue it, or "
                "overwrite_output_dir=True (--overwrite_output_dir true) to delete those folders and start again."
            )
        # Every process must have looked before the main one deletes (or a late one would find nothing, skip the
        # barrier below and desynchronise), and the deletion must be over before any process writes.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            for folder in stale:
                logger.warning("overwrite_output_dir: deleting %s, left by an earlier run", folder)
                shutil.rmtree(folder)
            run_log = os.path.join(self._base_output_dir, RUN_LOG_NAME)
            if os.path.isfile(run_log) and min(stages) == 1:  # the earlier run's log, unless this run continues it
                os.remove(run_log)
        self.accelerator.wait_for_everyone()

    def _earlier_run_folders(self, stages: list[int]) -> list[str]:
        """The folders in output_dir that a run of `stages` would write or that would outlive it and be taken for its
        results: `stage-k` from the first stage run on, and `final/`."""
        names = [f"stage-{k}" for k in STAGES if k >= min(stages)] + ["final"]
        folders = [os.path.join(self._base_output_dir, name) for name in names]
        return [folder for folder in folders if os.path.exists(folder)]

    def _run_stage(self, stage: int, checkpoint: str | None, **kwargs):
        with _without_nested_bars(self._progress is not None):
            return self._run_stage_quietly(stage, checkpoint, **kwargs)

    def _run_stage_quietly(self, stage: int, checkpoint: str | None, **kwargs):
        model = self._model_for_stage(stage)
        self._install_model(model)
        self.stage = stage
        if self._progress is not None:
            self._progress.stage = stage
        # A fresh optimizer and schedule per stage: the parameters that train differ from stage to stage.
        self.optimizer, self.lr_scheduler = None, None
        self._term_means.reset()
        self._first_steps.reset()
        with self._stage_arguments(stage):
            output = super().train(resume_from_checkpoint=checkpoint, **kwargs)
            if self.args.torch_compile and self._first_steps.compile_seconds is not None:
                output.metrics["compile_seconds"] = self._first_steps.compile_seconds
                logger.info("stage %d: torch.compile took about %.1f s (first step over the second)",
                            stage, self._first_steps.compile_seconds)
            self._finish_stage(stage, output)  # its saved training_args.bin and evaluation are the stage's
        return output

    @contextlib.contextmanager
    def _stage_arguments(self, stage: int) -> Iterator[DMILTrainingArguments]:
        """Train with the stage's own copy of the arguments (`DMILTrainingArguments.for_stage`) as `self.args`, which
        the Trainer reads everywhere, and give the caller's object back afterwards, unchanged, also when the stage
        fails.

        What the Trainer derived from the arguments once, in `__init__`, stays valid for the copy, because only the
        output folder, the schedule (epochs, steps, learning rate) and the Hub push differ: the Accelerator (devices,
        distribution, FSDP plugin, mixed precision, gradient accumulation), `_train_batch_size`, the callbacks (which
        get the arguments with each event) and device placement. The optimizer, the learning-rate schedule and the
        TrainerState are built by each `Trainer.train` call from the copy.
        """
        given = self.args
        self.args = given.for_stage(stage, self.stage_dir(stage))
        try:
            yield self.args
        finally:
            self.args = given
            if getattr(given, "hf_deepspeed_config", None) is not None:
                # Under DeepSpeed the copy's __post_init__ registered its own config as transformers' global one (a
                # weak reference, read by is_deepspeed_zero3_enabled): the caller's takes its place again.
                from transformers.integrations.deepspeed import set_hf_deepspeed_config

                set_hf_deepspeed_config(given.hf_deepspeed_config)

    def _model_for_stage(self, stage: int) -> torch.nn.Module:
        """Load the previous stage's saved result (the start of this stage) and set what trains."""
        current = _unwrap(self.model)
        previous = self.stage_dir(stage - 1)
        if stage > 1 and os.path.isfile(os.path.join(previous, STAGE_MARKER)) and current.name_or_path != previous:
            # Loading from disk (not reusing the in-memory model) makes the stage start exactly from the saved result
            # and records the path as peft's base_model_name_or_path. A model already loaded from there (resuming:
            # _load_finished_stage) is not read twice.
            model = type(current).from_pretrained(previous, dtype=torch.float32)
        else:
            model = current
        model, self._frozen_modules = prepare_model_for_stage(
            model, stage, self.args.finetune_method, lora_kwargs=self._lora_kwargs(model)
        )
        return model

    def _lora_kwargs(self, model: DMILForMultimodalClassification) -> dict[str, Any]:
        return {
            "r": self.args.lora_r, "lora_alpha": self.args.lora_alpha, "lora_dropout": self.args.lora_dropout,
            "target_modules": lora_target_regex(model, self.args.lora_target_modules),
        }

    def _install_model(self, model: torch.nn.Module) -> None:
        self.model = self.model_wrapped = model
        if self.place_model_on_device:
            self._move_model_to_device(model, self.args.device)

    def _finish_stage(self, stage: int, output) -> None:
        """Save the stage's result (under LoRA: adapter and merged model), evaluate it, and mark the stage done."""
        stage_dir = self.stage_dir(stage)
        is_peft = hasattr(self.model, "merge_and_unload")
        self._adapter_dir = os.path.join(stage_dir, "adapter") if is_peft else None
        if self.is_fsdp_enabled and _is_sharded(self.model):
            # FSDP: the weights are sharded across processes (a peft model cannot be merged or saved like that), and
            # Trainer.save_model writes nothing under a SHARDED_STATE_DICT setting. The main process saves a gathered
            # copy; under LoRA every process then continues with the merged model read back.
            plain = self._gathered_model()
            if plain is not None:
                if is_peft:
                    plain.save_pretrained(self._adapter_dir)
                    plain = plain.merge_and_unload()
                self._save_unsharded(plain, stage_dir)
            self.accelerator.wait_for_everyone()
            if is_peft:
                model = _own_class(_unwrap(self.model)).from_pretrained(stage_dir, dtype=torch.float32)
                self._install_model(model)
        else:
            if is_peft:
                if self.is_world_process_zero():
                    self.model.save_pretrained(self._adapter_dir)
                self._install_model(self.model.merge_and_unload())
            self.save_model(stage_dir, _internal_call=True)
        self._frozen_modules = []
        metrics = {k: v for k, v in output.metrics.items() if isinstance(v, (int, float))}
        if self.eval_dataset is not None:
            metrics.update(self.evaluate(metric_key_prefix="eval"))
        self.stage_results[stage] = metrics
        stage_log = [entry for entry in self.state.log_history if entry.get("stage") == stage]
        self._record_stage_log(stage, self.state.global_step, stage_log)
        if self.is_world_process_zero():
            with open(os.path.join(stage_dir, STAGE_MARKER), "w") as f:
                # "adapter" records that this stage wrote stage-k/adapter, for a later resume to know it is this run's;
                # "global_step" and "log_history" let a resumed run continue the run-wide step and log.
                json.dump({"stage": stage, "metrics": metrics, "adapter": self._adapter_dir is not None,
                           "global_step": self.state.global_step, "log_history": stage_log}, f, indent=2, default=float)
        self.accelerator.wait_for_everyone()

    def _record_stage_log(self, stage: int, steps: int, stage_log: list[dict[str, Any]]) -> None:
        """Add a finished stage's log to the run's and write the run's log to `output_dir/log_history.json`."""
        self.run_log_history = [e for e in self.run_log_history if e.get("stage") != stage] + stage_log
        self._step_offset += steps
        if self.is_world_process_zero():
            os.makedirs(self._base_output_dir, exist_ok=True)
            with open(os.path.join(self._base_output_dir, RUN_LOG_NAME), "w") as f:
                json.dump(self.run_log_history, f, indent=1, default=float)

    def _load_finished_stage(self, stage: int) -> None:
        stage_dir = self.stage_dir(stage)
        if not self.stage_is_complete(stage):
            raise ValueError(f"cannot skip stage {stage}: {stage_dir} holds no finished stage ({STAGE_MARKER} missing)")
        with open(os.path.join(stage_dir, STAGE_MARKER)) as f:
            marker = json.load(f)
        self.stage_results[stage] = marker["metrics"]
        self._record_stage_log(stage, int(marker.get("global_step", 0)), list(marker.get("log_history", [])))
        # Markers written before the "adapter" entry existed count as adapter-less: copying an adapter of unknown
        # origin into the final model is the worse mistake.
        self._adapter_dir = os.path.join(stage_dir, "adapter") if marker.get("adapter") else None
        model = type(_unwrap(self.model)).from_pretrained(stage_dir, dtype=torch.float32)
        self._install_model(model)
        self.stage = stage

    # ---------------------------------------------------------------- loading checkpoints

    def _uses_native_checkpoint_format(self) -> bool:
        """DeepSpeed, FSDP and SageMaker MP checkpoints have formats of their own: the Trainer loads those."""
        return self.is_deepspeed_enabled or self.is_fsdp_enabled or is_sagemaker_mp_enabled()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        # Trainer's version loads the weights with load_state_dict(strict=False) and only logs the keys it missed:
        # a ViT checkpoint (legacy key names on disk) resumed with its vision encoder at the starting weights.
        if self._uses_native_checkpoint_format():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_exactly(self.model if model is None else model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        # Same as _load_from_checkpoint: Trainer's version left the last checkpoint's ViT in the "best" model.
        if self._uses_native_checkpoint_format():
            return super()._load_best_model()
        best = self.state.best_model_checkpoint
        logger.info("Loading the best model from %s (score: %s).", best, self.state.best_metric)
        load_checkpoint_exactly(self.model, best)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # Trainer restores the optimizer and the schedule together, and silently neither when a file is missing.
        if checkpoint is not None and not self._uses_native_checkpoint_format():
            missing = missing_optimizer_files(checkpoint)
            if missing:
                logger.warning(
                    "Checkpoint %s has no %s: resuming with a fresh optimizer and learning-rate schedule (the Trainer "
                    "restores both or neither), so the continued run will not match an uninterrupted one.",
                    checkpoint, " or ".join(missing),
                )
        super()._load_optimizer_and_scheduler(checkpoint)

    # ---------------------------------------------------------------- loss, prediction, logging

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The Trainer's count (6 x main-input elements x non-embedding parameters), with the parameter count read
        once per model: the Trainer walks every parameter tensor on every step for it, a fixed number while a stage
        trains (about 2% of a tiny model's CPU step)."""
        model = self.model
        main = getattr(model, "main_input_name", "input_ids")
        if main not in inputs or not hasattr(model, "num_parameters"):
            return 0
        if self._parameter_count[0] is not model:
            self._parameter_count = (model, model.num_parameters(exclude_embeddings=True))
        return 6 * inputs[main].numel() * self._parameter_count[1]

    def _for_collator(self, dataset: Any) -> Any:
        """`dataset` as a DMILDataCollator reads it: its `Audio()`/`Video()` columns undecoded
        (`prepare_media_columns`), as the collator decodes them itself and `datasets` would need torchcodec to."""
        from .data_collator import DMILDataCollator

        if isinstance(self.data_collator, DMILDataCollator):
            from ..models.dmil.media_dmil import prepare_media_columns

            return prepare_media_columns(dataset)
        return dataset

    def _get_dataloader(self, dataset, *args, **kwargs):
        # Every train, eval and test data loader is built here (transformers 5.17 to 5.24, the supported range).
        return super()._get_dataloader(self._for_collator(dataset), *args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        # The model's forward takes its modalities' inputs as **kwargs (their names come from the modality table), so
        # the Trainer's signature inspection would keep none of them and drop every input column.
        if self._signature_columns is None:
            model = _unwrap(self.model)
            names = [*model.input_names, "modality_mask", "label", "label_ids", *(self.label_names or ["labels"])]
            from .data_collator import DMILDataCollator

            if isinstance(self.data_collator, DMILDataCollator):
                # A DMILDataCollator reads raw columns (text, image, audio, each modality's name) and the clips'
                # sampling rate: keep those too, so the default remove_unused_columns=True does not drop them.
                collator = self.data_collator
                names += [collator.column_of(m) for m in model.modalities] + [collator.sampling_rate_key]
            self._signature_columns = names

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if model.training:
            # Trainer calls model.train() every step; frozen stage modules must stay in eval mode.
            for module in self._frozen_modules:
                module.eval()
        outputs = model(**inputs, stage=self.stage or 3)
        if model.training and outputs.loss_terms:
            self._term_means.add(outputs.loss_terms)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys: list[str] | None = None):
        """Predictions as a dict (`logits`, `interaction_weights`, `component_logits`, `modality_logits`), so that
        `compute_metrics` can find each output by name whatever the paradigm."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs, stage=self.stage or 3)
        loss = outputs.loss.detach().mean() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        skip = {"loss", "loss_terms", *(ignore_keys or [])}
        predictions = {k: v.detach() for k, v in outputs.items() if k not in skip and isinstance(v, torch.Tensor)}
        return loss, predictions, labels

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.stage is not None:
            logs = {**logs, "stage": self.stage}
        if "loss" in logs and self._term_means.steps:
            # Mean of each unweighted term over the steps since the last log, read once per log (no per-step sync).
            logs.update({name: round(value, 6) for name, value in self._term_means.means().items()})
            self._term_means.reset()
        if self.stage is not None:
            logs["stage_step"] = self.state.global_step
        # Logged at the run-wide step (the stages before this one plus this stage's own): the Trainer's log history
        # and every reporting integration read state.global_step while logging. The stage's own count is restored at
        # once, as training, checkpoints and schedules use it.
        offset = self._step_offset if self.stage is not None else 0
        self.state.global_step += offset
        try:
            super().log(logs, *args, **kwargs)
        finally:
            self.state.global_step -= offset

    # ---------------------------------------------------------------- saving and the Hub

    def save_final(self, path: str | None = None) -> str:
        """Save the trained model (with remote code and processor), the LoRA adapter if any, and a model card."""
        path = path or os.path.join(self._base_output_dir, "final")
        if self.is_fsdp_enabled:
            # Trainer.save_model writes nothing under a SHARDED_STATE_DICT setting; the main process saves the model
            # itself, gathered first if it is still sharded (a collective: every process takes part).
            model = self._gathered_model() if _is_sharded(self.model) else _unwrap(self.model)
            if self.is_world_process_zero():
                model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
                self._save_unsharded(model, path)
        else:
            model = _unwrap(self.model)
            self.save_model(path, _internal_call=True)
        if self.is_world_process_zero():
            from ..models.dmil.processing_dmil import DMILProcessor

            if isinstance(self.processing_class, DMILProcessor):
                # Adds the pipeline code and config.custom_pipelines, so that the saved folder or Hub repo runs in
                # pipeline(..., trust_remote_code=True) where dmil_hf is not installed.
                from ..models.dmil.pipeline_dmil import save_for_pipeline

                save_for_pipeline(model, self.processing_class, path)
            else:
                logger.warning(
                    "%s has no processor, so pipeline('multimodal-classification', model=...) cannot serve it: give "
                    "DMILTrainer processing_class=DMILProcessor.for_model(model.config, ...) (or "
                    "DMILProcessor.from_backbones_pretrained(...)), or save one there with processor.save_pretrained.",
                    path,
                )
            # final/adapter is this run's adapter or nothing, whatever an earlier save into this folder left.
            target = os.path.join(path, "adapter")
            if os.path.isdir(target):
                shutil.rmtree(target)
            if self._adapter_dir is not None:
                shutil.copytree(self._adapter_dir, target)
            try:
                self.save_plots(os.path.join(path, "plots"))
            except Exception as err:  # noqa: BLE001 - pictures must never cost the trained model its card or its save
                logger.warning("Could not draw the run's plots (%s: %s); the model is saved without them.",
                               type(err).__name__, err)
            self.write_model_card(path)
        self.final_dir = path
        return path

    def save_plots(self, folder: str) -> list[str]:
        """Save the run's pictures to `folder` (main process): training curves over the stages, accuracy per
        interaction type (when the evaluation data has types), and the distribution of the gate's interaction
        weights over the evaluation set (DMIL, when there is one; per type when known). Needs matplotlib; without
        it, nothing is drawn and the card has no plots section."""
        from ..evaluation import plots as plots_dmil
        from ..evaluation import per_type_summary

        try:
            import matplotlib  # noqa: F401
        except ImportError:
            logger.info("matplotlib is not installed: no plots saved (pip install matplotlib)")
            return []
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # a picture from an earlier save into this folder is not this model's
        saved = []
        if any("loss" in entry for entry in self.run_log_history):
            saved.append(os.path.join(folder, "training_curves.png"))
            plots_dmil.plot_training_curves(self.run_log_history, saved[-1])
        elif self.stage_results:
            logger.warning("No training loss was logged (logging_steps=%s is more steps than a stage ran): no "
                           "training curves drawn. A smaller logging_steps, or a fraction like 0.05, logs them.",
                           self.args.logging_steps)
        final_metrics = self.stage_results[max(self.stage_results)] if self.stage_results else {}
        per_type = {kind: accuracy for kind, accuracy, _ in per_type_summary(final_metrics, [])}
        model = _unwrap(self.model)
        if per_type:
            saved.append(os.path.join(folder, "accuracy_per_type.png"))
            plots_dmil.plot_accuracy_per_type({model.config.paradigm: per_type}, saved[-1])
        if model.config.paradigm == "dmil" and self.eval_dataset is not None and hasattr(self.eval_dataset, "__len__"):
            dataset = self._for_collator(self.eval_dataset)
            if self.args.remove_unused_columns and hasattr(dataset, "column_names"):
                self._set_signature_columns_if_needed()
                kept = set(self._signature_columns) | {"interaction_type"}
                dataset = dataset.remove_columns([c for c in dataset.column_names if c not in kept])
            gate = plots_dmil.interaction_weights(
                model, dataset, data_collator=self.data_collator, batch_size=self.args.per_device_eval_batch_size
            )
            saved.append(os.path.join(folder, "interaction_weights.png"))
            plots_dmil.plot_interaction_weights(gate, saved[-1])
        import matplotlib.pyplot as plt

        plt.close("all")
        return saved

    def _gathered_model(self) -> torch.nn.Module | None:
        """Under FSDP, an unsharded copy of the model being trained (peft-wrapped like it, if it is) on the main
        process, None on the others. Every process must call this: gathering the weights is a collective."""
        state_dict = self.accelerator.get_state_dict(self.model)  # FSDP1 and FSDP2: the full weights on rank 0 only
        if not self.is_world_process_zero():
            return None
        base = _unwrap(self.model)
        # Building the copy draws random initial weights: on rank 0 only, so outside the training RNG stream (which
        # would otherwise move on rank 0 alone and change the dropout of the stages that follow).
        with torch.random.fork_rng(devices=[]):
            model = _own_class(base)(base.config)
            if hasattr(self.model, "merge_and_unload"):
                model = add_lora(model, **self._lora_kwargs(model))
        model.load_state_dict(state_dict, strict=True)
        return model

    def _save_unsharded(self, model: PreTrainedModel, output_dir: str) -> None:
        """What Trainer._save writes (weights, config, processor, training arguments), for `model` in place of the
        trained one; on the main process."""
        trained, self.model = self.model, model
        try:
            self._save(output_dir)
        finally:
            self.model = trained

    def write_model_card(self, path: str) -> None:
        from ..hub.model_card import render_model_card

        folder = os.path.join(path, "plots")
        plots = sorted(f"plots/{name}" for name in os.listdir(folder) if name.endswith(".png")) if os.path.isdir(folder) else []
        card = render_model_card(
            _unwrap(self.model), self.args, self.stage_results, template=self.args.model_card_template, plots=plots
        )
        card.save(os.path.join(path, "README.md"))

    def hub_publisher(self) -> DMILHubPublisher:
        """Where this run publishes (`hub_dmil`): `args.hub_model_id`, else the name of `output_dir`, with the
        arguments' token, privacy and revision."""
        return DMILHubPublisher.from_args(self.args, output_dir=self._base_output_dir)

    def _repo_id(self) -> str:
        return resolve_repo_id(self.args.hub_model_id, self._base_output_dir)

    def _upload(self, folder: str, path_in_repo: str | None = None, message: str = "Upload DMIL model"):
        """Upload a folder of this run to its repo, from the main process (None on the others)."""
        if not self.is_world_process_zero():
            return None
        return self.hub_publisher().upload(folder, path_in_repo=path_in_repo, message=message)

    def _from_main_process(self, value: Any) -> Any:
        """`value` as the main process has it, on every process (a collective when there are several)."""
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def _hub_repo(self) -> str:
        """The repo uploads go to: its full id once the pre-flight check found it, else as the arguments name it."""
        return self._checked_repo_id or self._repo_id()

    def push_later_command(self) -> str:
        """The command that pushes this run's saved output_dir (final model and stages) to its repo later."""
        return push_command(self._base_output_dir, self._hub_repo(), stages=True, private=self.args.hub_private_repo,
                            revision=self.args.hub_revision)

    def _check_hub(self) -> None:
        """The pre-flight of push_to_hub (`DMILHubPublisher.check`): run by the main process, which alone uploads,
        and its verdict sent to every process, so that all of them stop before training or none does (a process
        that went on alone would wait forever for the others in its first collective). A failure raises
        `DMILHubPreflightError` saying what failed, that nothing was trained, and the train-now-push-later command."""
        error = failure = repo = None
        if self.is_world_process_zero():
            try:
                repo = self.hub_publisher().check()
            except DMILHubPreflightError as err:
                error, failure = err, (str(err), err.reason)
            except Exception as err:  # noqa: BLE001 - any failure must reach the other processes, not hang them
                error, failure = err, (f"{type(err).__name__}: {_first_line(err)}", "unexpected")
            else:
                logger.info("Hub pre-flight passed: each finished stage and the final model go to %s.", repo)
        failure, self._checked_repo_id = self._from_main_process((failure, repo))
        if failure is not None:
            message, reason = failure
            # Chained to what made the check fail (a network error), not to the check's error: its text is in this one.
            cause = error.__cause__ if isinstance(error, DMILHubPreflightError) else error
            raise DMILHubPreflightError(
                f"push_to_hub: the Hub pre-flight check failed, so nothing was trained: {message}.\n"
                "Fix that and start again, or train without push_to_hub (drop --push_to_hub) and push the finished "
                f"output_dir later in one command:\n    {self.push_later_command()}",
                reason=reason,
            ) from cause

    def _upload_or_defer(self, what: str, folder: str, upload) -> None:
        """Run one of training's uploads (a no-op off the main process). When it fails, the result stays saved in
        `folder`: log that and the command to push the run later, and let training go on (`train` ends with
        `DMILHubUploadError` once everything is saved)."""
        try:
            upload()
        except Exception as err:  # noqa: BLE001 - whatever failed, the trained result is on disk
            self._failed_uploads.append((what, folder, f"{type(err).__name__}: {_first_line(err)}"))
            logger.error(
                "Uploading %s to the Hub repo %s failed (%s: %s). It is saved in %s; the run carries on and ends with "
                "an error when it is done. Once it has finished, push it with:\n    %s",
                what, self._hub_repo(), type(err).__name__, _first_line(err), folder, self.push_later_command(),
            )

    def _raise_on_failed_uploads(self, result: TrainOutput) -> None:
        """End a run whose uploads failed with `DMILHubUploadError` on every process (it carries the `TrainOutput`
        as `train_output`)."""
        failed = self._from_main_process(self._failed_uploads)
        if not failed:
            return
        missing = ", ".join(f"{what} ({folder})" for what, folder, _ in failed)
        errors = "; ".join(dict.fromkeys(reason for _, _, reason in failed))  # each distinct error once
        error = DMILHubUploadError(
            f"push_to_hub: training finished and every result is saved in {self._base_output_dir}, but "
            f"{len(failed)} upload(s) to the Hub repo {self._hub_repo()} failed ({errors}). Not on the Hub: "
            f"{missing}.\nPush the saved run in one command:\n    {self.push_later_command()}"
        )
        error.train_output = result
        raise error

    def _push_stage(self, stage: int):
        """Upload a finished stage's folder to `stage-k/` of the repo, from the main process."""
        if not self.is_world_process_zero():
            return None
        return self.hub_publisher().upload_stage(self.stage_dir(stage), stage)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """Push the final model: weights, config, remote-code files, processor, LoRA adapter and the model card."""
        folder = self.save_final()
        return self._upload(folder, message=commit_message or "End of training")

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # The repo is created at the first push; creating it in __init__ would touch the Hub before any work is done.
        self.hub_model_id = self._repo_id() if hasattr(self, "_base_output_dir") else self.args.hub_model_id
