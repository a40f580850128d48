#!/usr/bin/env python
"""The model cards of the checkpoints this project publishes, rendered by dmil_hf itself from real runs.

Each card lives in `model_cards/<name>/` (`<name>` is also the Hub repo's name): `README.md`, the card; `plots/`, the
pictures it links; and `render_inputs/`, what the card is rendered from: the model's `config.json`, the run's
`training_args.json` (its `DMILTrainingArguments`) and `stage_results.json` (each stage's metrics, the last stage's
with the final evaluation). The renderer is the library's (`DMILRunPublisher.write_card`, i.e.
`dmil_hf.hub.model_card.render_model_card`), so a card re-rendered from its inputs is what the trainer would write for
that run, published under `<namespace>/<name>`.

    python model_cards/cards.py render     # make model-cards: re-render every card from its kept inputs (seconds)
    python model_cards/cards.py check      # exit 1 naming each card that differs from what the code renders now
    python model_cards/cards.py runs       # make model-card-runs: train the checkpoints, keep their inputs, render
    python model_cards/cards.py collect    # keep the inputs of runs already trained (bench_out/model_cards), render
    python model_cards/cards.py publish    # make publish: push each checkpoint with its card (token: HF_TOKEN)

The checkpoints themselves are not committed: `runs` trains them into `bench_out/model_cards/` (`--runs DIR`), where
`publish` finds them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

CARDS_DIR = Path(__file__).resolve().parent
REPO = CARDS_DIR.parent
DEFAULT_RUNS = REPO / "bench_out" / "model_cards"
# The Hub namespace the committed cards name (`make publish HUB_NAMESPACE=...` publishes elsewhere, re-rendering the
# cards it uploads for that namespace).
DEFAULT_NAMESPACE = "dmil-hf"
INPUTS = "render_inputs"
CONFIG, ARGUMENTS, STAGE_RESULTS = "config.json", "training_args.json", "stage_results.json"
RENDER_TARGET, RUNS_TARGET = "make model-cards", "make model-card-runs"


@dataclass(frozen=True)
class Card:
    """One published checkpoint: its card's folder (and repo) name, its run folder under the runs folder, and the
    job (`JOBS`) that trains it."""

    name: str
    run: str
    job: str


# The real-signal checkpoints: the benchmark's quick settings (vision + audio, mixture "balanced", 3000 training
# samples, 800 optimizer steps per method), one seed; the ensemble trains beside them as the benchmark's unimodal
# reference and is not published.
REAL_SIGNALS = "real_signals"
CARDS = (
    Card("dmil-synthetic-tiny", "dmil-synthetic-tiny", "main_job"),
    Card("dmil-real-signals-quick", f"{REAL_SIGNALS}/balanced/seed0/dmil", REAL_SIGNALS),
    Card("i2m2-real-signals-quick", f"{REAL_SIGNALS}/balanced/seed0/i2m2", REAL_SIGNALS),
)


def job_commands(runs: Path) -> dict[str, list[str]]:
    """The command of each training job, writing under `runs`: the main job is `make train` (training/run.py with
    its defaults, the synthetic benchmark) with only the output folder changed; the real-signal models are
    `benchmarks/real_signals.py --quick` with one seed, keeping their runs (`--save_models`)."""
    return {
        "main_job": [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     str(REPO / "training" / "run.py"), "--output_dir", str(runs / "dmil-synthetic-tiny"),
                     "--overwrite_output_dir", "true"],
        REAL_SIGNALS: [sys.executable, str(REPO / "benchmarks" / "real_signals.py"), "--quick", "--seeds", "0",
                       "--methods", "ensemble,dmil,i2m2", "--save_models", str(runs / REAL_SIGNALS),
                       "--out", str(runs / f"{REAL_SIGNALS}.json")],
    }


# ---------------------------------------------------------------- the render inputs


def _plain(value: Any) -> Any:
    """`value` as JSON gives it back (tuples as lists, int keys as strings), for comparisons."""
    return json.loads(json.dumps(value, default=float))


def run_inputs(run_dir: Path) -> dict[str, Any]:
    """What a card is rendered from, read from a finished run folder (`training/run.py`'s, or the benchmark's under
    `--save_models`): `final/config.json`, the arguments `final/training_args.json` holds (tokens left out; a run
    saved before final/ held no pickle has them in `training_args.bin`) and the stages' results of
    `eval_results.json`."""
    final = run_dir / "final"
    config = json.loads((final / CONFIG).read_text())
    if (final / ARGUMENTS).is_file():
        saved = json.loads((final / ARGUMENTS).read_text())
    else:
        import torch

        saved = torch.load(final / "training_args.bin", weights_only=False).to_dict()  # this project's own run
    arguments = {k: v for k, v in saved.items() if not k.endswith("_token")}
    stages = json.loads((run_dir / "eval_results.json").read_text())["stages"]
    return {CONFIG: config, ARGUMENTS: _plain(arguments), STAGE_RESULTS: _plain(stages)}


def kept_inputs(name: str, cards_dir: Path = CARDS_DIR) -> dict[str, Any]:
    folder = cards_dir / name / INPUTS
    return {file: json.loads((folder / file).read_text()) for file in (CONFIG, ARGUMENTS, STAGE_RESULTS)}


def keep_inputs(card: Card, runs: Path, cards_dir: Path = CARDS_DIR) -> None:
    """Copy a finished run's render inputs and plots into `model_cards/<name>/`."""
    run_dir = runs / card.run
    folder = cards_dir / card.name
    (folder / INPUTS).mkdir(parents=True, exist_ok=True)
    for file, value in run_inputs(run_dir).items():
        (folder / INPUTS / file).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(folder / "plots", ignore_errors=True)
    if (run_dir / "final" / "plots").is_dir():
        shutil.copytree(run_dir / "final" / "plots", folder / "plots")


# ---------------------------------------------------------------- rendering


def write_card(name: str, folder: Path, namespace: str = DEFAULT_NAMESPACE, cards_dir: Path = CARDS_DIR) -> Path:
    """Render card `name` from its kept inputs into `folder/README.md` with the library's renderer
    (`DMILRunPublisher.write_card`, which links the pictures of `folder/plots`), as published to
    `<namespace>/<name>`. The model is built from its config on the meta device: the card reads its config only, and
    nothing is allocated or trained."""
    import torch

    from dmil_hf import DMILConfig, DMILForMultimodalClassification, DMILTrainingArguments
    from dmil_hf.hub.publisher import DMILHubPublisher
    from dmil_hf.hub.run_publisher import DMILRunPublisher

    inputs = cards_dir / name / INPUTS
    config = DMILConfig.from_pretrained(inputs)
    with torch.device("meta"):
        model = DMILForMultimodalClassification(config)
    # The fields this transformers has (the kept ones were written by the stack that trained); the Hub repo the card
    # is published to.
    known = {f.name for f in fields(DMILTrainingArguments) if f.init}
    arguments = {k: v for k, v in json.loads((inputs / ARGUMENTS).read_text()).items() if k in known}
    repo_id = f"{namespace}/{name}"
    args = DMILTrainingArguments(**{**arguments, "hub_model_id": repo_id, "push_to_hub": False})
    stage_results = {int(k): v for k, v in json.loads((inputs / STAGE_RESULTS).read_text()).items()}
    publisher = DMILRunPublisher(DMILHubPublisher(repo_id), args.output_dir)
    publisher.write_card(os.fspath(folder), model, args, stage_results)
    return folder / "README.md"


def render_to_text(name: str, namespace: str = DEFAULT_NAMESPACE, cards_dir: Path = CARDS_DIR) -> str:
    """The card as the current code renders it from its kept inputs (in a scratch folder; nothing committed moves)."""
    with tempfile.TemporaryDirectory() as tmp:
        plots = cards_dir / name / "plots"
        if plots.is_dir():
            shutil.copytree(plots, Path(tmp, "plots"))
        return write_card(name, Path(tmp), namespace, cards_dir).read_text(encoding="utf-8")


def stale_cards(cards_dir: Path = CARDS_DIR) -> list[str]:
    """One line per card that is missing or differs from what the current code renders from its kept inputs."""
    problems = []
    for card in CARDS:
        readme = cards_dir / card.name / "README.md"
        if not (cards_dir / card.name / INPUTS).is_dir():
            problems.append(f"model_cards/{card.name} has no {INPUTS}/: train it and keep them with `{RUNS_TARGET}`")
        elif not readme.is_file() or readme.read_text(encoding="utf-8") != render_to_text(card.name, cards_dir=cards_dir):
            problems.append(
                f"model_cards/{card.name}/README.md is stale: the current code renders another card from "
                f"model_cards/{card.name}/{INPUTS}; run `{RENDER_TARGET}` (re-renders from the kept inputs, no "
                "training) and commit the result"
            )
    return problems


def render_all(cards_dir: Path = CARDS_DIR) -> None:
    for card in CARDS:
        print(f"rendered {write_card(card.name, cards_dir / card.name, cards_dir=cards_dir)}")


# ---------------------------------------------------------------- publishing


class PublishRefused(Exception):
    """`publish` stopped before its first upload; the message is one line."""


class PublishStopped(Exception):
    """An upload of `publish` failed; the message says which and what went up before it."""


def _checkpoint(card: Card, runs: Path, cards_dir: Path) -> Path:
    """The run folder of a card's checkpoint, checked to be the run its card was rendered from (same model config,
    same stage results: a retrained checkpoint beside an older card would be published under the wrong card)."""
    from dmil_hf.hub.publisher import NoFinishedModelError, locate_finished_run

    run_dir = runs / card.run
    try:
        locate_finished_run(run_dir)
        found = run_inputs(run_dir)
    except (NoFinishedModelError, OSError, KeyError, ValueError):
        raise PublishRefused(f"no finished checkpoint of {card.name} in {run_dir}: train the checkpoints with "
                             f"`{RUNS_TARGET}` (or give their folder with --runs)") from None
    kept = kept_inputs(card.name, cards_dir)
    if any(found[file] != kept[file] for file in (CONFIG, STAGE_RESULTS)):
        raise PublishRefused(f"the checkpoint in {run_dir} is not the run model_cards/{card.name} was rendered from "
                             f"(its config or results differ): `{RUNS_TARGET}` retrains and re-renders both")
    return run_dir


def publish(namespace: str = DEFAULT_NAMESPACE, runs: Path = DEFAULT_RUNS, cards_dir: Path = CARDS_DIR) -> list:
    """Push every checkpoint with its card to `<namespace>/<name>`: its stage folders to `stage-k/` and its final
    model, carrying the card, to the repo root (`python -m dmil_hf.hub.publisher push ... --stages`). Everything is
    checked before the first upload: each checkpoint is there and is its card's run, each card is current, and the
    Hub pre-flight (`DMILHubPublisher.check`: not offline, a token, a Hub that answers, write access) passes for every
    repo. Raises `PublishRefused` (one line) when something is not so, `PublishStopped` when an upload fails. The
    token is the environment's (HF_TOKEN) or the stored one. Returns the repo ids published."""
    from dmil_hf.hub.publisher import DMILHubPreflightError, DMILHubPublisher
    from dmil_hf.hub.publisher import main as publisher_main

    checkpoints = {card.name: _checkpoint(card, runs, cards_dir) for card in CARDS}
    stale = stale_cards(cards_dir)
    if stale:
        raise PublishRefused(stale[0])
    for card in CARDS:
        try:
            DMILHubPublisher(repo_id=f"{namespace}/{card.name}").check()
        except DMILHubPreflightError as err:
            raise PublishRefused(str(err)) from None
    pushed = []
    for card in CARDS:
        final = checkpoints[card.name] / "final"
        # The card committed in model_cards/ with the pictures it links, or the same inputs rendered for the namespace
        # published to.
        shutil.rmtree(final / "plots", ignore_errors=True)
        if (cards_dir / card.name / "plots").is_dir():
            shutil.copytree(cards_dir / card.name / "plots", final / "plots")
        if namespace == DEFAULT_NAMESPACE:
            shutil.copyfile(cards_dir / card.name / "README.md", final / "README.md")
        else:
            write_card(card.name, final, namespace, cards_dir)
        repo_id = f"{namespace}/{card.name}"
        if publisher_main(["push", os.fspath(checkpoints[card.name]), "--repo_id", repo_id, "--stages"]) != 0:
            raise PublishStopped(f"uploading {card.name} to {repo_id} failed (see above); published before it: "
                                 f"{', '.join(pushed) or 'nothing'}")
        pushed.append(repo_id)
    return pushed


# ---------------------------------------------------------------- the command line


def run_jobs(runs: Path) -> None:
    """Train every job's checkpoints into `runs` (the main job takes about 2 minutes, the real-signal
    quick run about as long: 5 minutes in all on 2 CPU cores)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    runs.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(runs / REAL_SIGNALS, ignore_errors=True)  # --save_models refuses a folder holding runs
    for job, command in job_commands(runs).items():
        print(f"training {job}: {' '.join(command)}", flush=True)
        subprocess.run(command, cwd=REPO, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model_cards/cards.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("render", help="re-render every card from its kept inputs")
    commands.add_parser("check", help="exit 1 when a card differs from what the code renders")
    for name, text in (("runs", "train the checkpoints, keep their render inputs, render"),
                       ("collect", "keep the render inputs of runs already trained, render"),
                       ("publish", "push each checkpoint with its card to the Hub")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="the checkpoints' folder")
        if name == "publish":
            command.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="the Hub user or organisation")
    args = parser.parse_args(argv)
    if args.command == "render":
        render_all()
    elif args.command == "check":
        stale = stale_cards()
        for line in stale:
            print(line, file=sys.stderr)
        return 1 if stale else 0
    elif args.command in ("runs", "collect"):
        if args.command == "runs":
            run_jobs(args.runs)
        for card in CARDS:
            keep_inputs(card, args.runs)
        render_all()
    else:
        from dmil_hf.hub.publisher import hub_endpoint

        try:
            for repo_id in publish(args.namespace, args.runs):
                print(f"published {hub_endpoint().rstrip('/')}/{repo_id}")
        except PublishRefused as err:
            print(f"publish: nothing uploaded: {err}", file=sys.stderr)
            return 1
        except PublishStopped as err:
            print(f"publish: stopped: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
