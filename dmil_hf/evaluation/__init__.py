"""What a `Trainer.predict` pass of a DMIL model says: metrics, predictions.csv and plots, each reading predictions
through the problem-type registry (`dmil_hf.models.dmil.problem_types_dmil.PROBLEM_TYPES`).

* Loading (`metric_modules.py`): each metric is a folder ``dmil_hf/evaluation/<name>/<name>.py`` holding an
  `evaluate.Metric` subclass, the layout `evaluate.load` expects of a local path. `load_metric(name)` resolves the
  folder inside the installed package, so it works with ``HF_HUB_OFFLINE=1`` and without a network. The metric
  scripts import nothing from dmil_hf: evaluate copies and imports them on their own.
* `compute_metrics` (`metrics.py`): `make_compute_metrics(config, ...)` builds the function
  `Trainer(compute_metrics=...)` takes, computed by the ``interaction_metrics`` module; `split_predictions` names the
  model outputs in an `EvalPrediction` by key; `per_type_summary` reads the per-type figures back out of a metrics
  dict.
* predictions.csv (`predictions.py`): `write_predictions(prediction_output, config, path, ids=None)`.
* Plots (`plots.py`): `save_plots(prediction_output, config, folder, log_history=None, interaction_types=None)`,
  and `interaction_weights` / `plot_interaction_weights` for any model and dataset outside a run.

Example:

```python
>>> from dmil_hf.evaluation import load_metric
>>> load_metric("interaction_metrics").compute(predictions=[0, 1], references=[0, 0])["accuracy"]
0.5
```
"""

from .metrics import PREDICTION_KEYS, make_compute_metrics, per_type_summary, split_predictions
from .metric_modules import METRICS_DIR, available_metrics, load_metric, metric_path
from .plots import save_plots
from .predictions import prediction_columns, write_predictions

__all__ = [
    "METRICS_DIR",
    "PREDICTION_KEYS",
    "available_metrics",
    "load_metric",
    "make_compute_metrics",
    "metric_path",
    "per_type_summary",
    "prediction_columns",
    "save_plots",
    "split_predictions",
    "write_predictions",
]
