"""Metrics for DMIL models: the evaluate metric modules shipped with dmil_hf, and `compute_metrics` for the Trainer.

* Loading (`dmil_hf/evaluation/loading.py`): each metric is a folder ``dmil_hf/evaluation/<name>/<name>.py`` holding an
  `evaluate.Metric` subclass, the layout `evaluate.load` expects of a local path. `load_metric(name)` resolves the
  folder inside the installed package, so it works with ``HF_HUB_OFFLINE=1`` and without a network. The metric
  scripts import nothing from dmil_hf: evaluate copies and imports them on their own.
* `compute_metrics` (`dmil_hf/evaluation/compute.py`): `make_compute_metrics(config, ...)` builds the function
  `Trainer(compute_metrics=...)` takes, computed by the ``interaction_metrics`` module; `split_predictions` names the
  model outputs in an `EvalPrediction`; `per_type_summary` reads the per-type figures back out of a metrics dict.

Example:

```python
>>> from dmil_hf.evaluation import load_metric
>>> load_metric("interaction_metrics").compute(predictions=[0, 1], references=[0, 0])["accuracy"]
0.5
```
"""

from .metrics import PREDICTION_KEYS, make_compute_metrics, per_type_summary, split_predictions
from .metric_modules import METRICS_DIR, available_metrics, load_metric, metric_path

__all__ = [
    "METRICS_DIR",
    "PREDICTION_KEYS",
    "available_metrics",
    "load_metric",
    "make_compute_metrics",
    "metric_path",
    "per_type_summary",
    "split_predictions",
]
