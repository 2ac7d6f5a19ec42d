"""Predictor-guided architecture x training-recipe search: FBNetV3 NARS, ChamNet GP-BO, Optuna.

Modules (one idea each):
- ``decisions``: ``Decision``, ``DecisionSpace``: populations as genome arrays; sampling, Sobol points, mutation,
  crossover and the one feature encoding every predictor sees.
- ``recipe_space``: the ``recipe_space:`` section of a space YAML (ranges of ``nas.recipe.Recipe`` fields).
- ``joint_space``: ``JointSpace`` (arch decisions of a ``Space`` x recipe decisions) and ``Candidate``.
- ``block_costs``: ``BlockCostTable``, vectorised additive per-block costs (MACs, params, latency) of populations.
- ``model_costs``: ``ModelSpaceCosts``, free proxies of a joint space (MACs, params, predicted latency per device).
- ``table_space``: ``TableSpace`` / ``TableEvaluator``, a user's CSV as a space (``--space table:PATH.csv``).
- ``evaluators``: ``TrainEvaluator`` (train-and-test; the ``Evaluator`` protocol is in ``problem``).
- ``predictors``: ``ArchRecipePredictor`` (FBNetV3 MLP ensemble with proxy pretraining, ``predict_mean_std``),
  ``kendall_tau``.
- ``gp``: ``GPPredictor`` (ChamNet exact GP with gpytorch; a kernel over categorical decisions, ``predict_std``),
  ``expected_improvement``.
- ``problem``: ``SearchProblem`` (``ModelProblem``, ``TableProblem``), latency ``Constraint`` s.
- ``history``: ``History``, the budgeted evaluation log (``history.csv``) that makes searches resumable.
- ``evolution``: vectorised predictor-driven evolutionary search for several constraints at once.
- ``acquisition``: a round's candidates (neighbours of the incumbents, the predictor's best of the pool), Thompson
  sampling of the MLP ensemble with a calibrated spread, EI with the constant liar, the objective transform.
- ``nars``: ``run_nars``: NARS (MLP) and GP-BO (GP + EI) constrained iterative optimisation.
- ``progress``: what a search spent: best so far, evaluations to the final best, random search's expectation
  (exact on a table), ``progress.png``.
- ``study``: the Optuna study every search keeps its evaluations in: storage URLs and drivers, heartbeats,
  the fingerprint workers compare, ``study_status``.
- ``worker``: ``evaluate_trial`` / ``run_worker`` (``hwnas worker``), the budget claimed in the storage, and
  ``StudyEvaluations`` (a proposer's batches as enqueued trials).
- ``optuna_search``: opening or joining a search's study, local worker processes, multi-objective Optuna
  (NSGA-II / TPE).
- ``pareto``: non-dominated sets, the family of winners (``pareto.csv``) and plots.
- ``search_setup``: ``SearchSettings`` -> problem and constraints; ``runner``: ``PredictorStrategy``
  (``nas.strategy``; the run directory behind ``hwnas search nars|chamnet|optuna``) and ``optuna_history``.
"""
