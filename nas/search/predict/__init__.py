"""Predictor-guided architecture x training-recipe search: FBNetV3 NARS, ChamNet GP-BO, Optuna, on the black-box
engine (``nas.search.blackbox``).

Modules (one idea each):
- ``recipe_space``: the ``recipe_space:`` section of a space YAML (ranges of ``nas.train.recipe.Recipe`` fields).
- ``joint_space``: ``JointSpace`` (arch decisions of a ``Space`` x recipe decisions) and ``Candidate``.
- ``block_costs``: ``BlockCostTable``, vectorised additive per-block costs (MACs, params, latency) of populations.
- ``model_costs``: ``ModelSpaceCosts``, free proxies of a joint space (MACs, params, predicted latency per device).
- ``table_space``: ``TableSpace`` / ``TableEvaluator``, a user's CSV as a space (``--space table:PATH.csv``).
- ``evaluators``: ``TrainEvaluator`` (train-and-test; the ``Evaluator`` protocol is in ``blackbox.problem``).
- ``predictors``: ``ArchRecipePredictor`` (FBNetV3 MLP ensemble with proxy pretraining, ``predict_mean_std``),
  ``kendall_tau``.
- ``gp``: ``GPPredictor`` (ChamNet exact GP with gpytorch; a kernel over categorical decisions, ``predict_std``),
  ``expected_improvement``.
- ``acquisition``: a round's candidates (neighbours of the incumbents, the predictor's best of the pool), Thompson
  sampling of the MLP ensemble with a calibrated spread, EI with the constant liar, the objective transform.
- ``nars``: ``run_nars``: NARS (MLP) and GP-BO (GP + EI) constrained iterative optimisation.
- ``convergence``: what a search spent: best so far, evaluations to the final best, random search's expectation
  (exact on a table), ``progress.png``.
- ``optuna_search``: opening or joining a search's study (workers rebuild the problem from its settings), local
  worker processes, multi-objective Optuna (NSGA-II / TPE).
- ``search_setup``: ``PredictorSearchSettings`` -> problem and constraints; ``runner``: ``PredictorStrategy``
  (``nas.search.strategy``; the run directory behind ``hwnas search nars|chamnet|optuna``) and ``optuna_history``.
"""

from nas import lazy_exports

_EXPORTS = {
    "ArchRecipePredictor": "nas.search.predict.predictors",
    "JointSpace": "nas.search.predict.joint_space",
    "LocalWorkers": "nas.search.predict.optuna_search",
    "ModelSpaceCosts": "nas.search.predict.model_costs",
    "NarsConfig": "nas.search.predict.nars",
    "OptunaConfig": "nas.search.predict.optuna_search",
    "PredictorSearchSettings": "nas.search.predict.search_setup",
    "PredictorStrategy": "nas.search.predict.runner",
    "PreparedPredictorSearch": "nas.search.predict.runner",
    "TableEvaluator": "nas.search.predict.table_space",
    "TableSpace": "nas.search.predict.table_space",
    "TrainEvaluator": "nas.search.predict.evaluators",
    "build_constraints": "nas.search.predict.search_setup",
    "build_problem": "nas.search.predict.search_setup",
    "kendall_tau": "nas.search.predict.predictors",
    "load_latency_models": "nas.search.predict.model_costs",
    "open_job": "nas.search.predict.optuna_search",
    "optuna_history": "nas.search.predict.runner",
    "run_nars": "nas.search.predict.nars",
    "run_optuna": "nas.search.predict.optuna_search",
    "work": "nas.search.predict.optuna_search",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
