"""The architecture vocabulary, without torch: the op registry (``ops``: mobile-vision's ``PRIMITIVES``) and the
built-in op families (``builtin_ops``: everything but their torch builders, which are named by reference), op keys
(``opkey``: what a latency table measures), search spaces from YAML (``spec``: the schema and reading a file;
``space``: ``Space``, ``Arch``, ``load_space``), the block positions every cost walks (``positions``) and channel
rounding (``channels``).
"""

from nas import lazy_exports

_EXPORTS = {
    "Arch": "nas.arch.space",
    "BlockPosition": "nas.arch.positions",
    "BlockSpec": "nas.arch.positions",
    "Dim": "nas.arch.positions",
    "FAMILIES": "nas.arch.ops",
    "OPS": "nas.arch.ops",
    "OpKey": "nas.arch.opkey",
    "OpSpec": "nas.arch.ops",
    "Space": "nas.arch.space",
    "arch_document": "nas.arch.space",
    "builtin_spaces": "nas.arch.spec",
    "format_extra": "nas.arch.opkey",
    "load_arch": "nas.arch.space",
    "load_space": "nas.arch.space",
    "make_divisible": "nas.arch.channels",
    "mid_channels": "nas.arch.channels",
    "parse_op": "nas.arch.ops",
    "read_space_yaml": "nas.arch.spec",
    "register_op": "nas.arch.ops",
    "resolve_model_ref": "nas.arch.space",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
