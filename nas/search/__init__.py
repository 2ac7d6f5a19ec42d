"""Searches: the ``Strategy`` protocol and registry (``strategy``), the one ``report.json`` schema and verdict
(``report``), training, exporting and measuring a winner (``finalize``), Gumbel relaxations (``gumbel``) and the
latency loss (``latency_loss``). The methods live in sub-packages: ``blackbox`` (the evaluation engine every
predictor-guided search shares: decisions, problems, history, Optuna study and workers, evolution, Pareto sets),
``predict`` (NARS, ChamNet, Optuna), ``dnas`` (DNAS, DMasking), ``quant`` (mixed precision) and ``capacity``
(dynamic capacity).
"""

from nas import lazy_exports

_EXPORTS = {
    "DRIFT_WARN_PCT": "nas.search.report",
    "STRATEGIES": "nas.search.strategy",
    "Strategy": "nas.search.strategy",
    "TemperatureSchedule": "nas.search.gumbel",
    "build_report": "nas.search.report",
    "detail_key": "nas.search.report",
    "get_strategy": "nas.search.strategy",
    "open_run": "nas.search.strategy",
    "register": "nas.search.strategy",
    "strategies": "nas.search.strategy",
    "train_export_measure": "nas.search.finalize",
    "write_report": "nas.search.report",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
