"""Models: the registered blocks as torch modules (``blocks``, ``conv``), the builder of a (space, arch) into an
``nn.Module`` with MACs and params (``builder``), and ONNX export and inference (``onnx_io``).
"""

from nas import lazy_exports

_EXPORTS = {
    "ConvBNReLU": "nas.models.blocks",
    "OPSET": "nas.models.onnx_io",
    "PoolClassifier": "nas.models.blocks",
    "SpaceModel": "nas.models.builder",
    "build_block": "nas.models.builder",
    "build_model": "nas.models.builder",
    "conv2d": "nas.models.conv",
    "count_macs": "nas.models.builder",
    "count_params": "nas.models.builder",
    "cpu_session": "nas.models.onnx_io",
    "export_onnx": "nas.models.onnx_io",
    "make_block": "nas.models.blocks",
    "max_abs_diff": "nas.models.onnx_io",
    "run_onnx": "nas.models.onnx_io",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
