"""DMILTrainer: DMIL's training stages on top of `transformers.Trainer`.

Each stage of the model's paradigm (`stages_dmil.PARADIGM_STAGES`: DMIL's three, two_stage's two, a baseline's one)
trains with its own optimizer, schedule, epochs and learning rate, writes its checkpoints under
`output_dir/stage-k/checkpoint-*` and its result to `output_dir/stage-k`, and starts from the previous stage's saved
result. Devices, mixed precision and distribution are the Trainer's (and so Accelerate's) business. Checkpoints are
read back the way `from_pretrained` reads them (the Trainer's own raw `load_state_dict` misses the keys that
transformers renames on load, e.g. ViT's), and a missing or unexpected key is an error.

The trainer's collaborators: its arguments (`training_args`), what trains in a stage (`stages`, `lora`), the run
folder (`run_folder`: stage folders, markers, checkpoints, final/, what resume reads), the console (`callbacks`), and
the publisher of the run (`dmil_hf.hub.run_publisher`: the model card and the Hub uploads), given to it or built when
it first needs one. Plots are drawn from a `Trainer.predict` pass by `dmil_hf.evaluation.plots`, not here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments, enable_full_determinism, set_seed
from transformers.processing_utils import ProcessorMixin
from transformers.trainer_utils import TrainOutput
from transformers.utils import is_sagemaker_mp_enabled

from ..models.dmil.modeling_dmil import DMILForMultimodalClassification
from ..models.dmil.stages_dmil import stage_plan, stage_plans
from .callbacks import FirstStepTimes, use_console_callbacks, without_nested_bars
from .lora import add_lora, load_adapter_exactly, lora_target_regex, name_adapter_base
from .run_folder import (
    ADAPTER_NAME, RunFolder, check_writable, config_identity, dataset_identity, file_fingerprint, is_checkpoint_folder,
    missing_optimizer_files, write_training_arguments, writing,
)
from .stages import prepare_model_for_stage
from .training_args import STAGE_SCHEDULE_FIELDS, DMILTrainingArguments

if TYPE_CHECKING:
    from ..hub.run_publisher import DMILRunPublisher

logger = logging.getLogger(__name__)


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


def load_checkpoint_exactly(model: torch.nn.Module, checkpoint: str) -> None:
    """Load a checkpoint written by `save_pretrained` (a full model, or a peft adapter for a peft model) into `model`
    in place, every tensor of it, or raise `ValueError` naming the missing / unexpected keys."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        load_adapter_exactly(model, checkpoint)
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




def split_parameter_groups(optimizer: torch.optim.Optimizer, rates: dict[int, float]) -> None:
    """Move the parameters named in `rates` (`id(parameter)` -> learning rate) out of the optimizer's groups into
    groups of their own, one per (group, rate), each with its group's other settings (weight decay) and its rate.
    Before the first step only: the optimizer holds no state yet."""
    for group in list(optimizer.param_groups):
        by_rate: dict[float, list[torch.nn.Parameter]] = {}
        kept = []
        for p in group["params"]:
            rate = rates.get(id(p))
            if rate is None or rate == group["lr"]:
                kept.append(p)
            else:
                by_rate.setdefault(rate, []).append(p)
        group["params"] = kept
        for rate, params in by_rate.items():
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": params,
                                       "lr": rate})


class DMILDivergenceError(ArithmeticError):
    """Training diverged: the loss (or one of its terms) became NaN or infinite. Nothing of the stage is saved."""


class _TermMeans:
    """Running sums of the loss and its unweighted terms between two logs, kept on the device: one stacked tensor per
    step (two kernels, where an add per term was about thirty) and read on the host only when a log (or a save) asks
    for them. The loss is summed unfiltered: the Trainer's logged loss hides a NaN step (`logging_nan_inf_filter`)."""

    LOSS = "loss"

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._sums: dict[tuple[str, ...], torch.Tensor] = {}
        self.steps = 0

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], vector: tuple[tuple[str, ...], torch.Tensor] |
            None = None) -> None:
        """Add one step: the loss, its terms (scalars), and optionally `vector`, names and a 1-d tensor of as many
        values (the gate's mean weight per component), appended in one kernel."""
        names = (self.LOSS, *terms)
        values = torch.stack([loss.detach().float().mean(), *(value.detach().float() for value in terms.values())])
        if vector is not None:
            names += vector[0]
            values = torch.cat([values, vector[1].detach().float()])
        self._sums[names] = self._sums[names] + values if names in self._sums else values
        self.steps += 1

    def read(self) -> tuple[dict[str, float], list[str]]:
        """The mean of each unweighted term since the last reset, and the names (the loss's included) whose sum is
        not finite: one transfer to the host."""
        means: dict[str, float] = {}
        nonfinite: list[str] = []
        for names, sums in self._sums.items():
            for name, total in zip(names, sums.tolist()):
                if not math.isfinite(total):
                    nonfinite.append(name)
                if name != self.LOSS:
                    means[name] = total / self.steps
        return means, list(dict.fromkeys(nonfinite))


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
    peft onto the stage-2 model). The unweighted loss terms are logged next to the loss, with the gate's mean weight
    per component (`gate_<component>`) where the model has a gate; every log is at the run-wide step, and under
    report_to="tensorboard" the event files go to `output_dir/runs`. Each stage trains with its own
    copy of the arguments (`DMILTrainingArguments.for_stage`, which is `self.args` while the stage runs); the object
    passed as `args` is never changed.

    A run folder belongs to one run: `train()` writes the run's identity (`run_identity`: model config, training data
    (`data_files` by content, else the dataset), the arguments that change the weights) to `output_dir/dmil_run.json`
    and into each checkpoint, and every resume, of the folder or of a checkpoint path wherever it lies, is refused
    (`run_folder.RunMismatchError`, naming the items that differ) when it is another run's. Each stage starts from its
    own seed (`args.seed + stage - 1`), so a stage started after a resume trains as in an uninterrupted run. A loss
    that is not finite stops training with `DMILDivergenceError` (checked at each log and before each save, where the
    loss is read on the host anyway): no checkpoint after it, no stage marker, final model, card or upload. The output
    folder is checked for writing before anything trains, and a failed save (a full disk) is an
    `run_folder.OutputFolderError` naming the folder and its free space.

    The run folder (`output_dir`: stage folders, markers, checkpoints, `final/`) is `self.run_folder`
    (`run_folder.RunFolder`). The model card and Hub uploads are the publisher's (`publisher`, a
    `dmil_hf.hub.run_publisher.DMILRunPublisher`; by default one built from the arguments). With `push_to_hub`,
    `train()` checks the Hub first (token, endpoint, write access; `DMILHubPreflightError` before anything is trained),
    then uploads each finished stage and the final model. An upload that fails later does not stop the run: it is
    logged with where the result is saved, the remaining stages train, and `train()` ends with `DMILHubUploadError`
    naming the command that pushes the saved run (`python -m dmil_hf.hub.publisher push ...`).

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

    def __init__(
        self,
        model: DMILForMultimodalClassification | None = None,
        args: TrainingArguments | None = None,
        publisher: DMILRunPublisher | None = None,
        data_files: dict[str, str] | None = None,
        **kwargs,
    ):
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
        self.run_folder = RunFolder(self.args.output_dir)
        self._publisher = publisher
        # The files the training data was read from (split -> path): the run identity records them by content.
        self.data_files = dict(data_files or {})
        # The stage step up to which the loss has been checked for NaN / inf (`_check_finite_loss`).
        self._checked_step = 0
        self._identity: dict[str, Any] | None = None
        self._frozen_modules: list[torch.nn.Module] = []
        # Module -> peak learning rate, for the modules that keep an earlier stage's rate in the running stage.
        self._kept_rates: dict[str, float] = {}
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
        self._first_steps = FirstStepTimes()
        self.add_callback(self._first_steps)
        # The console: one bar per stage and one short line per log instead of the Trainer's whole dictionaries.
        self._progress = use_console_callbacks(self.callback_handler)
        self.run_log_history: list[dict[str, Any]] = []
        self._place_tensorboard_logs()
        # A processor the Trainer must not see while Trainer.train sets up (see _processor_out_of_token_alignment).
        self._hidden_processor: ProcessorMixin | None = None
        # The model card's arguments given to create_model_card / push_to_hub (language, license, datasets, ...).
        self._card_kwargs: dict[str, Any] = {}
        # Whether the running train() pushes its checkpoints (push_to_hub; what and where: args.hub_strategy).
        self._pushes_checkpoints = False

    def _place_tensorboard_logs(self) -> None:
        """Under report_to="tensorboard", write the whole run's event files to `output_dir/runs/<date>_<host>`
        (`RunFolder.tensorboard_dir`) unless TENSORBOARD_LOGGING_DIR names a folder: transformers' callback takes its
        folder from the output_dir of the first `train()`, which is stage 1's. Every stage writes there, at the
        run-wide step (`log`), so the stages' curves follow each other on one time axis."""
        from transformers.integrations import TensorBoardCallback
        from transformers.integrations.integration_utils import default_logdir

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.run_folder.tensorboard_dir,
                                                    os.path.basename(default_logdir()))

    @property
    def publisher(self) -> DMILRunPublisher:
        """The run's publisher: the model card of final/ and the Hub uploads. The one given to the trainer, else one
        built from the arguments (`DMILRunPublisher.from_args`) the first time it is needed."""
        if self._publisher is None:
            # Imported here: the Hub layer sits above training (it reads the run folder), so training reaches it only
            # at run time, when a card or an upload is due.
            from ..hub.run_publisher import DMILRunPublisher

            self._publisher = DMILRunPublisher.from_args(self.args, output_dir=self.run_folder.path)
        return self._publisher

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
        deepspeed_asked = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        if deepspeed_asked and not self.is_deepspeed_enabled and self.is_world_process_zero():
            # accelerate/state.py AcceleratorState.__init__: DeepSpeed only `and not cpu`, and ACCELERATE_USE_CPU=1
            # (the launcher's --cpu / --use_cpu) makes every process cpu. --use_cpu true of the training arguments
            # keeps DeepSpeed (docs/distributed.md).
            logger.warning(
                "DeepSpeed was asked for (ACCELERATE_USE_DEEPSPEED) but Accelerate runs %s: on CPU, launch without "
                "the launcher's --cpu / ACCELERATE_USE_CPU=1 and pass --use_cpu true to the training script instead.",
                self.accelerator.distributed_type,
            )
        if self.is_deepspeed_enabled:
            zero = self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
            if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
                # Each stage starts from the previous one's saved model, and a LoRA stage merges gathered weights:
                # without whole-model saves a ZeRO-3 stage leaves only DeepSpeed's sharded checkpoint behind.
                raise ValueError(
                    "DeepSpeed ZeRO-3 needs whole-model saves for DMIL's stages: set zero3_save_16bit_model: true in "
                    "the accelerate config (stage3_gather_16bit_weights_on_model_save: true in a DeepSpeed JSON), as "
                    "training/configs/accelerate/deepspeed_zero3.yaml does."
                )

    # ---------------------------------------------------------------- stage orchestration


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
        run = self.run_folder
        if self.args.should_save:
            # A folder the run cannot write fails now, not when the first stage has trained and saves.
            check_writable(run.path)
        # The identity of the run as it started: taken once, from the model this trainer was given (training sets
        # entries of its config, e.g. problem_type, and the same trainer may resume its own run).
        if self._identity is None:
            self._identity = self.run_identity()
        identity = self._identity
        resume_stage, resume_path = None, None
        if isinstance(resume_from_checkpoint, str) and not os.path.isdir(resume_from_checkpoint):
            # A checkpoint on the Hub (hub_strategy): fetched into output_dir with the finished stages before it
            # (dmil_hf.hub.checkpoints), then resumed from under the same rule as any other.
            repo = self.publisher.repo_id if self.args.push_to_hub or self.args.hub_model_id else None
            resume_from_checkpoint = self.publisher.fetch_checkpoint(resume_from_checkpoint, repo, self.accelerator) \
                or resume_from_checkpoint
        if isinstance(resume_from_checkpoint, str):
            # One rule wherever the checkpoint lies (in output_dir, another folder, a download): it continues this
            # run when the identity of the run that wrote it is this run's.
            resume_stage, recorded = run.checkpoint_stage(resume_from_checkpoint, stages)
            resume_path = resume_from_checkpoint
            if recorded is None:
                logger.warning("The checkpoint %s records no run identity (written before dmil_hf recorded one): "
                               "nothing says it belongs to this run.", resume_path)
            else:
                run.check_identity(identity, recorded, what=f"the checkpoint {resume_path}")
        if resume_from_checkpoint:
            # Every resume: the folder's finished stages and checkpoints are taken only from this run.
            if run.read_identity() is None and run.stage_folders():
                logger.warning("%s records no run identity (written before dmil_hf recorded one): nothing says its "
                               "stages belong to this run.", run.path)
            run.check_identity(identity)
        self._pushes_checkpoints = bool(self.args.push_to_hub)
        if self.args.push_to_hub:
            # Before anything is trained, and before _claim_output_dir deletes an earlier run.
            self.publisher.check(self.accelerator)
        if not resume_from_checkpoint:
            self._claim_output_dir(stages, identity)
        if self.args.should_save:
            run.write_identity(identity)
        self.accelerator.wait_for_everyone()

        output = None
        for k in stages:
            resuming_later_stage = resume_stage is not None and k < resume_stage
            if resuming_later_stage or (resume_from_checkpoint is True and run.stage_is_complete(k)):
                self._load_finished_stage(k)
                logger.info("stage %d finished earlier: loaded from %s", k, run.stage_dir(k))
                continue
            checkpoint = resume_path if k == resume_stage else None
            if resume_from_checkpoint is True:
                checkpoint = run.last_complete_checkpoint(k)
            if checkpoint is not None:
                logger.info("resuming stage %d from %s", k, checkpoint)
            elif resume_from_checkpoint is True:
                logger.info("stage %d: no checkpoint of it to resume from; training it from its start", k)
            output = self._run_stage(k, checkpoint, **kwargs)
            if self.args.push_to_hub:
                self.publisher.upload_stage(k, self.accelerator)
        final_dir = None
        if stages[-1] == max(plans):
            # The finished model, ready for AutoModel and the pipeline: final/ (model, processor, adapter, card). A run
            # that stops earlier (stages="1,2") leaves its result in its last stage's folder, to be continued.
            final_dir = self.save_final()
        if self.args.push_to_hub:
            # What push_to_hub does, with the save outside the upload's error handling: a failed save is an error.
            final_dir = final_dir or self.save_final()
            self.publisher.upload_final(final_dir, self.accelerator)
        if output is None:  # every stage was already finished and has been loaded
            output = TrainOutput(global_step=0, training_loss=0.0, metrics={})
        metrics = {**output.metrics, "stages": {str(k): v for k, v in self.stage_results.items()}}
        result = TrainOutput(output.global_step, output.training_loss, metrics)
        if self.args.push_to_hub:
            self.publisher.raise_on_failed_uploads(result, self.accelerator)
        return result

    def run_identity(self) -> dict[str, Any]:
        """What makes this run this run (`output_dir/dmil_run.json`, checked by every resume): the model's config,
        the training data (its files by content, or the dataset's size, columns and a hash of a few rows) and the
        arguments that change the trained weights (each stage's schedule, seed, batch, optimizer settings, how the
        fine-tuning stage trains and its LoRA settings)."""
        config = _unwrap(self.model).config
        args = self.args
        plans = stage_plans(config.paradigm)
        arguments: dict[str, Any] = {
            "seed": args.seed, "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "weight_decay": args.weight_decay,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "warmup_steps": args.warmup_steps, "max_grad_norm": args.max_grad_norm,
            "optim": str(getattr(args.optim, "value", args.optim)), "finetune_method": args.finetune_method,
        }
        for k in plans:
            arguments.update({f"stage{k}_{name}": args.stage_value(name, k) for name in STAGE_SCHEDULE_FIELDS})
        if args.finetune_method == "lora" and any(plan.finetune for plan in plans.values()):
            arguments.update(lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                             lora_target_modules=args.lora_target_modules)
        if self.data_files:
            data = {split: file_fingerprint(path) for split, path in sorted(self.data_files.items())}
        else:
            data = {"train": dataset_identity(self.train_dataset)}
        about = {"output_dir": os.path.abspath(self.run_folder.path),
                 "data_files": {split: os.path.abspath(path) for split, path in self.data_files.items()}}
        return {"config": config_identity(config), "data": data, "arguments": arguments, "about": about}

    def _claim_output_dir(self, stages: list[int], identity: dict[str, Any]) -> None:
        """Make sure a fresh (not resumed) run does not continue or mix with an earlier run's results: refuse a folder
        that holds them, or delete them under `overwrite_output_dir` (`RunFolder.refuse_earlier_run`). A run that
        starts from the folder's earlier stages (`stages=[3]` from `stage-2`) must be of the same model and data."""
        if min(stages) > 1 and self.run_folder.finished_stages():
            self.run_folder.check_identity(identity, ignore=("arguments.",))
        stale = self.run_folder.refuse_earlier_run(stages, overwrite=self.args.overwrite_output_dir)
        if not stale:
            return
        # Every process must have looked before the main one deletes (or a late one would find nothing, skip the
        # barrier below and desynchronise), and the deletion must be over before any process writes.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.run_folder.delete(stale, stages)
        self.accelerator.wait_for_everyone()

    def _run_stage(self, stage: int, checkpoint: str | None, **kwargs):
        with without_nested_bars(self._progress is not None):
            return self._run_stage_quietly(stage, checkpoint, **kwargs)

    def _run_stage_quietly(self, stage: int, checkpoint: str | None, **kwargs):
        model = self._model_for_stage(stage)  # seeds the stage's random numbers
        self._install_model(model)
        self.stage = stage
        if self._progress is not None:
            self._progress.stage = stage
        # A fresh optimizer and schedule per stage: the parameters that train differ from stage to stage.
        self.optimizer, self.lr_scheduler = None, None
        # Read from the caller's arguments: the stage's copy holds only its own stage's rate.
        config = _unwrap(self.model).config
        self._kept_rates = {
            module: self.args.stage_value("learning_rate", earlier)
            for module, earlier in stage_plan(config, stage).kept_learning_rates(config).items()
        }
        self._term_means.reset()
        self._checked_step = 0
        self._first_steps.reset()
        with self._stage_arguments(stage):
            with self._processor_out_of_token_alignment():
                output = super().train(resume_from_checkpoint=checkpoint, **kwargs)
            self._check_finite_loss()  # the steps after the last log: nothing non-finite is saved as the stage
            if self.args.torch_compile and self._first_steps.compile_seconds is not None:
                output.metrics["compile_seconds"] = self._first_steps.compile_seconds
                logger.info("stage %d: torch.compile took about %.1f s (first step over the second)",
                            stage, self._first_steps.compile_seconds)
            self._finish_stage(stage, output)  # its saved training_args.json and evaluation are the stage's
            if self._adapter_dir is not None and self.is_world_process_zero():
                self._describe_adapter(self._adapter_dir, f"stage-{stage}/{ADAPTER_NAME}")
        return output

    @contextlib.contextmanager
    def _processor_out_of_token_alignment(self) -> Iterator[None]:
        """Keep a processor without a tokenizer out of `Trainer.train`'s set-up.

        `Trainer.train` (5.17 to 5.25 at least) begins by aligning the model config's special tokens with
        `processing_class.tokenizer` (`align_special_tokens`), and fails with `'NoneType' object has no attribute
        'eos_token_id'` on a processor that has none: every DMIL model without text (video + audio, rgb + flow +
        audio). With no tokenizer there is nothing to align, so for that set-up the Trainer sees no processing class;
        `_inner_training_loop`, where the training proper starts (and checkpoints save the processor), gives it back.
        Only this trainer is affected: transformers itself is left as it is.
        """
        processor = self.processing_class
        if not isinstance(processor, ProcessorMixin) or getattr(processor, "tokenizer", None) is not None:
            yield
            return
        self._hidden_processor, self.processing_class = processor, None
        try:
            yield
        finally:
            self.processing_class, self._hidden_processor = processor, None

    def _inner_training_loop(self, *args, **kwargs):
        if self._hidden_processor is not None:
            self.processing_class, self._hidden_processor = self._hidden_processor, None
        return super()._inner_training_loop(*args, **kwargs)

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
        self.args = given.for_stage(stage, self.run_folder.stage_dir(stage))
        try:
            yield self.args
        finally:
            self.args = given
            if self._deepspeed_config() is not None:
                # Under DeepSpeed the copy's __post_init__ registered its own config as transformers' global one (a
                # weak reference, read by is_deepspeed_zero3_enabled, which would die with the copy): the Trainer's
                # takes its place again.
                from transformers.integrations.deepspeed import set_hf_deepspeed_config

                set_hf_deepspeed_config(self._deepspeed_config())

    def _model_for_stage(self, stage: int) -> torch.nn.Module:
        """Load the previous stage's saved result (the start of this stage) and set what trains."""
        current = _unwrap(self.model)
        previous = self.run_folder.stage_dir(stage - 1)
        if stage > 1 and self.run_folder.stage_is_complete(stage - 1) and current.name_or_path != previous:
            # Loading from disk (not reusing the in-memory model) makes the stage start exactly from the saved result
            # and records the path as peft's base_model_name_or_path. A model already loaded from there (resuming:
            # _load_finished_stage) is not read twice.
            model = type(current).from_pretrained(previous, dtype=torch.float32)
        else:
            model = current
        # Each stage starts from its own seed, whatever ran before it in this process: a stage started after a resume
        # (the previous stages loaded from disk) draws its LoRA init, data order and dropout as it would have in an
        # uninterrupted run. (Resuming inside a stage restores the checkpoint's RNG state over this.) Seeded once the
        # stage's start is loaded, so that those draws do not depend on how it was loaded either: a load inside
        # DeepSpeed ZeRO-3's zero.Init draws random numbers, a plain one none.
        seed = self.args.seed + stage - 1
        enable_full_determinism(seed) if self.args.full_determinism else set_seed(seed)
        model, self._frozen_modules = prepare_model_for_stage(
            model, stage, self.args.finetune_method, lora_kwargs=self._lora_kwargs(model)
        )
        return model

    def create_optimizer(self, *args, **kwargs) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the modules that keep an earlier stage's learning rate in this stage
        (`StagePlan.kept_learning_rates`: DMIL's encoders in stage 2 under `stage2_modality_weight`) in their own
        parameter groups at that rate. The schedule then scales every group alike (warm-up and decay)."""
        building = self.optimizer is None
        # transformers 5.25 passes the model to build for; 5.17 passes nothing.
        optimizer = super().create_optimizer(*args, **kwargs)
        if building and self._kept_rates:
            modules = _unwrap(self.model).stage_modules()
            rates = {id(p): rate for name, rate in self._kept_rates.items() for p in modules[name].parameters()}
            split_parameter_groups(optimizer, rates)
        return optimizer

    def _describe_adapter(self, adapter_dir: str, subfolder: str = ADAPTER_NAME) -> None:
        """Make a saved LoRA adapter name what it applies to: the run's repo (whose stage folder before the fine-tuning
        stage is the base, docs/hub.md; the output folder's name for a run that names none, until the push command
        names the real one) at the branch the run pushes to, in its adapter_config.json (`lora.name_adapter_base`),
        and its card (`subfolder`: where it lies in the repo). Main process."""
        if name_adapter_base(adapter_dir, self.publisher.repo_id, self.args.hub_revision):
            self.publisher.describe_adapter(adapter_dir, _unwrap(self.model).config, adapter_subfolder=subfolder)

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
        stage_dir = self.run_folder.stage_dir(stage)
        is_peft = hasattr(self.model, "merge_and_unload")
        self._adapter_dir = self.run_folder.stage_adapter_dir(stage) if is_peft else None
        if (self.is_fsdp_enabled and _is_sharded(self.model)) or (self.is_deepspeed_enabled and is_peft):
            # FSDP: the weights are sharded across processes (a peft model cannot be merged or saved like that), and
            # Trainer.save_model writes nothing under a SHARDED_STATE_DICT setting. DeepSpeed: under ZeRO-3 each
            # parameter holds only its partition (merge_and_unload would merge into empty tensors), and under any
            # stage Trainer.save_model saves through the engine, which keeps the unmerged peft model. The main
            # process saves a gathered copy; under LoRA every process then continues with the merged model read back.
            plain = self._gathered_model()
            if plain is not None:
                if is_peft:
                    plain.save_pretrained(self._adapter_dir)
                    plain = plain.merge_and_unload()
                self._save_unsharded(plain, stage_dir)
            self.accelerator.wait_for_everyone()
            if is_peft:
                with self._whole_models():  # (ZeRO-3) no engine will hold it: evaluated and saved as it is
                    model = _own_class(_unwrap(self.model)).from_pretrained(stage_dir, dtype=torch.float32)
                self._install_model(model)
        else:
            with writing(stage_dir, f"stage {stage}'s result"):
                if is_peft:
                    if self.is_world_process_zero():
                        self.model.save_pretrained(self._adapter_dir)
                    self._install_model(self.model.merge_and_unload())
                self.save_model(stage_dir, _internal_call=True)
        self._frozen_modules = []
        metrics = {k: v for k, v in output.metrics.items() if isinstance(v, (int, float))}
        if self.eval_dataset is not None:
            metrics.update(self._evaluation_of_finished_stage(stage))
        self.stage_results[stage] = metrics
        stage_log = [entry for entry in self.state.log_history if entry.get("stage") == stage]
        self._record_stage_log(stage, self.state.global_step, stage_log)
        if self.is_world_process_zero():
            self.run_folder.mark_stage_finished(stage, metrics, adapter=self._adapter_dir is not None,
                                                global_step=self.state.global_step, log_history=stage_log)
        self.accelerator.wait_for_everyone()

    def _evaluation_of_finished_stage(self, stage: int) -> dict[str, float]:
        """The stage's result on the evaluation set: the evaluation the Trainer logged at the stage's last step when
        there is one (the weights it saw are the ones just saved, unless the best checkpoint was restored), else one
        more evaluation. The evaluation set is not run twice over the same weights."""
        if not self.args.load_best_model_at_end:
            for entry in reversed(self.state.log_history):
                if entry.get("stage") != stage or entry.get("stage_step") != self.state.global_step:
                    break
                if "eval_loss" in entry:
                    return {k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        return self.evaluate(metric_key_prefix="eval")

    def _record_stage_log(self, stage: int, steps: int, stage_log: list[dict[str, Any]]) -> None:
        """Add a finished stage's log to the run's and write the run's log to `output_dir/log_history.json`."""
        self.run_log_history = [e for e in self.run_log_history if e.get("stage") != stage] + stage_log
        self._step_offset += steps
        if self.is_world_process_zero():
            self.run_folder.write_run_log(self.run_log_history)

    def _load_finished_stage(self, stage: int) -> None:
        finished = self.run_folder.read_stage(stage)
        self.stage_results[stage] = finished.metrics
        self._record_stage_log(stage, finished.global_step, finished.log_history)
        self._adapter_dir = finished.adapter_dir
        # Whole under ZeRO-3 too: no engine holds it unless a later stage trains it (its engine partitions it then);
        # saved as final/ as it is otherwise.
        with self._whole_models():
            model = type(_unwrap(self.model)).from_pretrained(self.run_folder.stage_dir(stage), dtype=torch.float32)
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
        """`dataset` as a DMILDataCollator reads it: its media columns undecoded (`prepare_media_columns`), as the
        collator decodes them itself (`datasets` would need torchcodec to) and names the row of a file it cannot
        read, which `with_row_numbers` gives it however the rows are shuffled."""
        from .data_collator import DMILDataCollator, with_row_numbers

        if isinstance(self.data_collator, DMILDataCollator):
            from ..models.dmil.media_dmil import prepare_media_columns

            return with_row_numbers(prepare_media_columns(dataset), self.data_collator.row_key)
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
                names += [collator.column_of(m) for m in model.modalities] + [collator.sampling_rate_key,
                                                                              collator.row_key]
            self._signature_columns = names

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if model.training:
            # Trainer calls model.train() every step; frozen stage modules must stay in eval mode.
            for module in self._frozen_modules:
                module.eval()
        outputs = model(**inputs, stage=self.stage or 3)
        if model.training and outputs.loss is not None:
            self._term_means.add(outputs.loss, outputs.loss_terms or {}, self._gate_means(outputs))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _gate_means(self, outputs) -> tuple[tuple[str, ...], torch.Tensor] | None:
        """The batch's mean gate weight per interaction component (`gate_<component>`, logged beside the loss terms
        and averaged over the steps since the last log, as `eval_gate_<component>` is over the evaluation set); None
        for a paradigm without a gate."""
        weights = getattr(outputs, "interaction_weights", None)
        if weights is None:
            return None
        names = tuple(f"gate_{c}" for c in _unwrap(self.model).config.interaction_components)
        return names, weights.detach().float().mean(0)

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
            # Mean of each unweighted term over the steps since the last log, read once per log (no per-step sync);
            # the same read says whether the loss stayed finite.
            means, nonfinite = self._term_means.read()
            self._raise_if_diverged(nonfinite)
            logs.update({name: round(value, 6) for name, value in means.items()})
            self._term_means.reset()
            self._checked_step = self.state.global_step
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

    def _check_finite_loss(self) -> None:
        """Raise `DMILDivergenceError` if the loss of a step since the last log was not finite (one read of the
        device's sums: at saves and at the end of a stage, which logging has not covered)."""
        if self._term_means.steps:
            self._raise_if_diverged(self._term_means.read()[1])
            self._checked_step = self.state.global_step  # the sums since the last log are finite up to here

    def _raise_if_diverged(self, nonfinite: list[str]) -> None:
        if self.accelerator.num_processes > 1:
            # Each process sums its own batches' losses: all of them must stop together (one that went on would wait
            # forever in its next collective). One small all-reduce per log and per save.
            flag = torch.tensor([1.0 if nonfinite else 0.0], device=self.accelerator.device)
            if self.accelerator.reduce(flag, reduction="sum").item() > 0 and not nonfinite:
                nonfinite = ["loss (on another process)"]
        if not nonfinite:
            return
        stage, args = self.stage, self.args
        checkpoint = self.run_folder.last_complete_checkpoint(stage) if stage is not None else None
        kept = (f"the last good checkpoint, {checkpoint}, is kept" if checkpoint else
                "no checkpoint of this stage was saved before it")
        raise DMILDivergenceError(
            f"training diverged in stage {stage}: a non-finite (NaN or infinite) loss between steps "
            f"{self._checked_step + 1} and {self.state.global_step} of the stage (run-wide steps up to "
            f"{self._step_offset + self.state.global_step}); non-finite: {', '.join(nonfinite)}. Nothing of the stage "
            f"was saved as finished, no final model, card or upload; {kept}. Lower the learning rate "
            f"(--stage{stage}_learning_rate, now {args.learning_rate:g}) or clip the gradients (--max_grad_norm, now "
            f"{args.max_grad_norm}), then start the run again with --overwrite_output_dir true."
        )

    def _save_checkpoint(self, model, trial) -> None:
        # A checkpoint is saved only from finite training (checked here too: a save step need not be a log step), and
        # carries the run's identity, so that it says whose it is wherever it is copied.
        self._check_finite_loss()
        run_dir = self._get_output_dir(trial=trial)
        with writing(run_dir, f"the checkpoint of step {self.state.global_step}"):
            super()._save_checkpoint(model, trial)
        checkpoint = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save and self.stage is not None:
            self.run_folder.write_checkpoint_identity(checkpoint, self.stage)
            if self._pushes_checkpoints:
                # hub_strategy, as the Trainer would push it (the stage's own arguments leave push_to_hub off).
                self.publisher.push_checkpoint(checkpoint, self.stage, self.state.global_step, self.args,
                                               self.accelerator)

    # ---------------------------------------------------------------- saving and the Hub

    def save_final(self, path: str | None = None) -> str:
        """Save the trained model (with remote code and processor), the LoRA adapter if any, and a model card."""
        path = path or self.run_folder.final_dir
        if self.is_fsdp_enabled:
            # Trainer.save_model writes nothing under a SHARDED_STATE_DICT setting; the main process saves the model
            # itself, gathered first if it is still sharded (a collective: every process takes part).
            model = self._gathered_model() if _is_sharded(self.model) else _unwrap(self.model)
            if self.is_world_process_zero():
                model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
                self._save_unsharded(model, path)
        elif self.is_deepspeed_enabled and self.model_wrapped is not self.deepspeed:
            # A model installed after the last DeepSpeed engine was built (a LoRA stage's merged model, read back
            # whole): Trainer.save_model would save through that engine, which holds the stage's peft model.
            model = _unwrap(self.model)
            with writing(path, "the final model"):
                self._save(path)
        else:
            model = _unwrap(self.model)
            with writing(path, "the final model"):
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
            target = os.path.join(path, ADAPTER_NAME)
            if os.path.isdir(target):
                shutil.rmtree(target)
            if self._adapter_dir is not None:
                shutil.copytree(self._adapter_dir, target)
                # (one loaded from an earlier run's stage folder may still name that machine's folder)
                name_adapter_base(target, self.publisher.repo_id, self.args.hub_revision)
            self.write_model_card(path)  # the model's card and the adapter's
        self.final_dir = path
        return path

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        if not is_checkpoint_folder(output_dir):
            # A stage's result and final/ are published: their arguments as JSON, not the Trainer's pickle (a
            # checkpoint keeps training_args.bin, as transformers writes it, beside its optimizer and RNG pickles).
            write_training_arguments(output_dir, self.args)
        elif self.stage is not None:
            # A LoRA stage's checkpoint is its adapter: it names the run's repo, not this machine's stage folder.
            name_adapter_base(output_dir, self.publisher.repo_id, self.args.hub_revision)

    def _gathered_model(self) -> torch.nn.Module | None:
        """Under FSDP or DeepSpeed, an unsharded copy of the model being trained (peft-wrapped like it, if it is) on
        the main process, None on the others. Every process must call this: gathering the weights is a collective."""
        # FSDP1 and FSDP2: the full weights on rank 0 only. DeepSpeed: accelerate asks the engine (ZeRO-3: its
        # consolidated 16-bit state dict, which needs zero3_save_16bit_model, on rank 0 only; ZeRO-1/2: the module's).
        state_dict = self.accelerator.get_state_dict(self.deepspeed if self.is_deepspeed_enabled else self.model)
        if not self.is_world_process_zero():
            return None
        base = _unwrap(self.model)
        # Building the copy draws random initial weights: on rank 0 only, so outside the training RNG stream (which
        # would otherwise move on rank 0 alone and change the dropout of the stages that follow); and whole, as
        # zero.Init's partitioning would wait for the other processes.
        with torch.random.fork_rng(devices=[]), self._whole_models():
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

    @contextlib.contextmanager
    def _whole_models(self) -> Iterator[None]:
        """Build or load models whole (not partitioned) inside this block, also under DeepSpeed ZeRO-3.

        While a ZeRO-3 config is registered with transformers (`is_deepspeed_zero3_enabled`: the training arguments
        and the Trainer register it), every `from_pretrained` and `from_config` builds the model inside
        `deepspeed.zero.Init`, which partitions each parameter across the processes as it is created. That suits a
        model an engine will train, not one copy built on the main process alone (the partitioning is a collective, so
        it would wait forever) nor the merged model of a finished LoRA stage, which no engine holds. transformers' own
        switch is that registration: removed here, and the Trainer's DeepSpeed config registered afterwards.
        """
        config = self._deepspeed_config()
        if config is None or not config.is_zero3():
            yield
            return
        from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            set_hf_deepspeed_config(config)

    def _deepspeed_config(self) -> Any:
        """The Trainer's DeepSpeed config (the `HfDeepSpeedConfig` of the Accelerator's DeepSpeed plugin, with the
        training arguments' values in place of "auto"), None without DeepSpeed. It lives as long as the Trainer, where
        the one a copy of the training arguments registers with transformers goes with the copy."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None) if self.is_deepspeed_enabled else None
        return getattr(plugin, "hf_ds_config", None)

    def write_model_card(self, path: str) -> None:
        """Write the model card of the model saved in `path` (`path/README.md`, linking `path/plots/*.png` if there
        are any): the publisher's `write_card`. Main process."""
        self.publisher.write_card(path, _unwrap(self.model), self.args, self.stage_results,
                                  eval_dataset=self.eval_dataset, **self._card_kwargs)

    @staticmethod
    def _card_arguments(language: str | None = None, license: str | None = None, tags: str | list[str] | None = None,
                        model_name: str | None = None, finetuned_from: str | None = None,
                        tasks: str | list[str] | None = None, dataset_tags: str | list[str] | None = None,
                        dataset: str | list[str] | None = None, dataset_args: str | list[str] | None = None,
                        ) -> dict[str, Any]:
        # transformers' Trainer.create_model_card arguments, the ones given.
        given = dict(language=language, license=license, tags=tags, model_name=model_name,
                     finetuned_from=finetuned_from, tasks=tasks, dataset_tags=dataset_tags, dataset=dataset,
                     dataset_args=dataset_args)
        return {name: value for name, value in given.items() if value is not None}

    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: str | list[str] | None = None, dataset: str | list[str] | None = None,
                          dataset_args: str | list[str] | None = None) -> None:
        """transformers' `Trainer.create_model_card`, for the card of the final model (`final/README.md`, the repo
        root's): the arguments are kept for every card this trainer writes, and a saved final model's card is written
        again with them. What they fill (metadata, model-index) is `dmil_hf.hub.model_card.render_model_card`'s."""
        self._card_kwargs.update(self._card_arguments(
            language=language, license=license, tags=tags, model_name=model_name, finetuned_from=finetuned_from,
            tasks=tasks, dataset_tags=dataset_tags, dataset=dataset, dataset_args=dataset_args,
        ))
        if self.final_dir is not None and self.is_world_process_zero():
            self.write_model_card(self.final_dir)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None, **kwargs):
        """transformers' `Trainer.push_to_hub` for a DMIL run: save the final model (`save_final`: weights, config,
        remote code, processor, LoRA adapter, card) and upload the run, the finished stages not uploaded yet to
        `stage-k/` and the final model to the repo root (`DMILRunPublisher.push`). `token`, `revision` and `private`
        override `hub_token`, `hub_revision` and `hub_private_repo` for this push; `blocking=False` returns a
        `Future` of the final upload; `kwargs` are the model card's (`create_model_card`'s arguments: language,
        license, tags, model_name, finetuned_from, tasks, dataset_tags, dataset, dataset_args). Returns the final
        upload's `CommitInfo` on the main process, None on the others."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self._card_kwargs.update(self._card_arguments(**kwargs))
        folder = self.save_final()
        return self.publisher.push(folder, message=commit_message or "End of training", accelerator=self.accelerator,
                                   token=token, revision=revision, private=private, blocking=blocking)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # The repo is created at the first push; creating it in __init__ would touch the Hub before any work is done.
        # (Trainer.__init__ calls this before run_folder exists.)
        self.hub_model_id = self.publisher.repo_id if hasattr(self, "run_folder") else self.args.hub_model_id
