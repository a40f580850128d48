"""The trainer's console and timing callbacks: one progress bar per stage, one short line per log (`console_line`)
instead of the Trainer's whole dictionaries, and the durations of a stage's first steps (torch.compile's cost)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, PrinterCallback, ProgressCallback


class FirstStepTimes(TrainerCallback):
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
def without_nested_bars(active: bool = True) -> Iterator[None]:
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


def use_console_callbacks(callbacks: CallbackHandler) -> DMILProgressCallback | None:
    """Swap the Trainer's default progress and printer callbacks for DMIL's (a notebook's progress callback, or one
    the caller chose, is left alone); returns the progress callback, if there is one."""
    for default, ours in ((ProgressCallback, DMILProgressCallback), (PrinterCallback, DMILPrinterCallback)):
        for callback in [c for c in callbacks.callbacks if type(c) is default]:
            callbacks.remove_callback(callback)
            callbacks.add_callback(ours())
    return next((c for c in callbacks.callbacks if isinstance(c, DMILProgressCallback)), None)
