"""Loading the evaluate metric modules shipped in ``dmil_hf/evaluation/<name>/<name>.py`` from their local folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).resolve().parent


def available_metrics() -> list[str]:
    """Names of the metric modules shipped with the package."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def metric_path(name: str) -> str:
    """The local folder of a shipped metric, as `evaluate.load` takes it."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"no metric {name!r} in dmil_hf.evaluation; available: {available_metrics()}")
    return str(path)


def load_metric(name: str, **kwargs: Any):
    """`evaluate.load` of a shipped metric from its local path (kwargs go to `evaluate.load`)."""
    import evaluate  # imported here: evaluate takes seconds to import and most users of the package never need it

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS_DIR", "available_metrics", "load_metric", "metric_path"]
