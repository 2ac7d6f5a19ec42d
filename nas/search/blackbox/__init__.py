"""The black-box evaluation engine every predictor-guided search shares.

Modules (one idea each):
- ``decisions``: ``Decision``, ``DecisionSpace``: populations as genome arrays; sampling, Sobol points, mutation,
  crossover and the one feature encoding every predictor sees.
- ``problem``: ``SearchProblem`` (``ModelProblem``, ``TableProblem``), latency ``Constraint`` s.
- ``history``: ``History``, the budgeted evaluation log (``history.csv``) that makes searches resumable.
- ``evolution``: vectorised predictor-driven evolutionary search for several constraints at once.
- ``study``: the Optuna study every search keeps its evaluations in: storage URLs and drivers, heartbeats,
  the fingerprint workers compare, ``study_status``.
- ``worker``: ``evaluate_trial`` / ``run_worker`` (``hwnas worker``), the budget claimed in the storage, and
  ``StudyEvaluations`` (a proposer's batches as enqueued trials).
- ``pareto``: non-dominated sets, the family of winners (``pareto.csv``) and plots.
"""

from nas import lazy_exports

_EXPORTS = {
    "BudgetExhausted": "nas.search.blackbox.history",
    "Constraint": "nas.search.blackbox.problem",
    "Decision": "nas.search.blackbox.decisions",
    "DecisionSpace": "nas.search.blackbox.decisions",
    "EvolutionResult": "nas.search.blackbox.evolution",
    "FINGERPRINT_ATTR": "nas.search.blackbox.study",
    "History": "nas.search.blackbox.history",
    "ModelProblem": "nas.search.blackbox.problem",
    "PROPOSER_DONE_ATTR": "nas.search.blackbox.study",
    "SETTINGS_ATTR": "nas.search.blackbox.study",
    "SearchProblem": "nas.search.blackbox.problem",
    "StudyEvaluations": "nas.search.blackbox.worker",
    "StudyJob": "nas.search.blackbox.worker",
    "TableProblem": "nas.search.blackbox.problem",
    "check_fingerprint": "nas.search.blackbox.study",
    "default_storage_url": "nas.search.blackbox.study",
    "evaluated_trials": "nas.search.blackbox.study",
    "evolve": "nas.search.blackbox.evolution",
    "family": "nas.search.blackbox.pareto",
    "fingerprint": "nas.search.blackbox.study",
    "load_study": "nas.search.blackbox.study",
    "masked_url": "nas.search.blackbox.study",
    "open_storage": "nas.search.blackbox.study",
    "open_study": "nas.search.blackbox.study",
    "pareto_mask": "nas.search.blackbox.pareto",
    "parse_constraint": "nas.search.blackbox.problem",
    "plot_pareto": "nas.search.blackbox.pareto",
    "plot_predictions": "nas.search.blackbox.pareto",
    "rank_all": "nas.search.blackbox.evolution",
    "run_worker": "nas.search.blackbox.worker",
    "study_status": "nas.search.blackbox.study",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
