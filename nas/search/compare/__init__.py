"""Comparing searches with what a user would do instead (``hwnas compare``).

Modules:
- ``runs``: a finished search's run directory read back (winner, data split, recipe, device, measured latency).
- ``scaling``: width-scaling a fixed model to a measured latency (latency model first, then interleaved timing).
- ``contenders``: the models compared, their trainings over seeds (one resumable run directory each), the one
  interleaved measurement pass, and the mean / standard deviation over seeds.
- ``plot``: test accuracy against measured latency, with the Pareto front.
- ``job``: the comparison end to end: ``prepare_compare`` (checks, writes nothing) and ``run_compare``.
"""

from nas import lazy_exports

_EXPORTS = {
    "CompareJob": "nas.search.compare.job",
    "Contender": "nas.search.compare.contenders",
    "SearchedRun": "nas.search.compare.runs",
    "WidthChoice": "nas.search.compare.scaling",
    "prepare_compare": "nas.search.compare.job",
    "read_run": "nas.search.compare.runs",
    "run_compare": "nas.search.compare.job",
    "scale_to_latency": "nas.search.compare.scaling",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
