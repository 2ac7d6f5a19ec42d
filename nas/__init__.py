"""hwnas: hardware-aware neural architecture search (library; no printing, no CLI parsing).

The library is layered; a module imports only its own layer and those below it (``tests/test_layers.py`` checks):

- foundation: ``errors``, ``files``, ``run`` (run directories), ``progress``;
- ``arch``: the op registry, op keys, search spaces and archs (no torch);
- ``models``: torch blocks, the model builder, ONNX export and inference;
- ``data``: datasets, splits, augmentation, the task (data + the space fitted to it);
- ``latency``: devices, latency tables, profiling, the latency model and its calibration;
- ``train``: the training engine (accelerators, precision, data parallelism), recipes, evaluation;
- ``search``: the strategies and what they share (report, finalize), the black-box engine (``search.blackbox``),
  predictor-guided search (``search.predict``), DNAS (``search.dnas``), mixed precision (``search.quant``) and
  dynamic capacity (``search.capacity``).

Each package re-exports its public names (``from nas.latency import LatencyModel``), imported on first use so
that ``hwnas --help`` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Callable

__version__ = "0.1.0"


def import_reference(reference: str) -> object:
    """The object a ``"package.module:name"`` reference names, its module imported now (plug-in registries name
    their code this way, so that registering imports nothing)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each public name from its module on first
    use: ``exports`` maps names to the modules that define them."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
