"""Training: the one engine (``engine``: accelerator, precision, the loop of every trainer, checkpoints, data
parallelism under torchrun), the accelerator (``accelerator``), the process group (``distributed``), batch norm and dropout over the
whole global batch (``sync_layers``), the DataLoader (``loader``), recipes (``recipe``), training a plain model
(``training``), evaluation and ONNX parity over a streamed split (``evaluation``) and the learning-curve plot.
"""

from nas import lazy_exports

_EXPORTS = {
    "Accelerator": "nas.train.accelerator",
    "Engine": "nas.train.engine",
    "EpochCallback": "nas.train.engine",
    "EpochTask": "nas.train.engine",
    "FollowerDone": "nas.train.distributed",
    "OptimizerStep": "nas.train.engine",
    "Recipe": "nas.train.recipe",
    "engine_for": "nas.train.engine",
    "fit_input": "nas.train.evaluation",
    "leave_process_group": "nas.train.distributed",
    "load_recipe": "nas.train.recipe",
    "lr_factor": "nas.train.training",
    "make_optimizer": "nas.train.training",
    "parse_recipe": "nas.train.recipe",
    "plot_learning_curve": "nas.train.learning_curve",
    "resolve_accelerator": "nas.train.accelerator",
    "split_accuracy": "nas.train.evaluation",
    "split_parity": "nas.train.evaluation",
    "train_model": "nas.train.training",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
