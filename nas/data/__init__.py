"""Data: ``load_dataset`` (``digits``, ``npz:PATH``, ``folder:PATH``) into a ``Dataset`` of train / val / test
``Split`` s (``dataset``, ``splits``: in memory, read from an .npy row by row or decoded lazily), the npz cache, batch augmentation
on the device (``augment``), the task (data plus the space fitted to it) and mismatch warnings.
"""

from nas import lazy_exports

_EXPORTS = {
    "Dataset": "nas.data.dataset",
    "Split": "nas.data.splits",
    "TensorSplit": "nas.data.splits",
    "augment_batch": "nas.data.augment",
    "load_dataset": "nas.data.dataset",
    "load_search_task": "nas.data.task",
    "load_task": "nas.data.task",
    "mismatch_warnings": "nas.data.mismatch",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
