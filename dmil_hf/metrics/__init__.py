"""evaluate metric modules shipped with dmil_hf, loaded from their local folders (no Hub access needed).

Each metric is a folder ``dmil_hf/metrics/<name>/<name>.py`` holding an `evaluate.Metric` subclass, the layout
`evaluate.load` expects of a local path. `load_metric(name)` resolves the folder inside the installed package, so it
works with ``HF_HUB_OFFLINE=1`` and without a network.

Example:

```python
>>> from dmil_hf.metrics import load_metric
>>> load_metric("interaction_metrics").compute(predictions=[0, 1], references=[0, 0])["accuracy"]
0.5
```
"""

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
        raise ValueError(f"no metric {name!r} in dmil_hf.metrics; available: {available_metrics()}")
    return str(path)


def load_metric(name: str, **kwargs: Any):
    """`evaluate.load` of a shipped metric from its local path (kwargs go to `evaluate.load`)."""
    import evaluate  # imported here: evaluate takes seconds to import and most users of the package never need it

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS_DIR", "available_metrics", "load_metric", "metric_path"]
