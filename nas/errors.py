"""User-facing errors. The CLI turns each into one red line and exit code 2."""


class HwnasError(Exception):
    """Base class for every failure a user can cause (bad input, missing file, impossible target)."""


class SpaceError(HwnasError):
    """A search space YAML is missing, malformed or invalid."""


class ArchError(HwnasError):
    """An architecture does not fit its space, or names an unknown op."""


class DataError(HwnasError):
    """A dataset spec cannot be loaded or is too small."""


class RecipeError(HwnasError):
    """A training recipe is invalid."""


class LatencyTableError(HwnasError):
    """A latency table or device is missing, corrupt, or cannot answer a query."""


class SearchError(HwnasError):
    """A search cannot run as configured (impossible target, inconsistent resume, ...)."""


class TrainingError(HwnasError):
    """Training cannot go on (the loss became NaN or infinite)."""


class OutputError(HwnasError):
    """An output path (``--out``, a report, a table folder) cannot be written."""


class AcceleratorError(HwnasError):
    """The accelerator, precision, thread count or world size asked for cannot be used here."""
