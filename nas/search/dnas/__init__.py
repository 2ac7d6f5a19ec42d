"""Differentiable architecture search: FBNet DNAS (Wu et al. 2019) and FBNetV2 DMaskingNAS (Wan et al. 2020).

Modules:
- ``distribution``: ``ArchDistribution``, the architecture logits (op per layer, channels per stage, resolution).
- ``latency_terms``: the space's expected latency, a view of the LatencyModel's cost table of its block positions.
- ``decode``: exact min / max latency of a space, and the most probable arch inside a latency band (DP over
  channels, the trunk's memory layout and latency bins).
- ``mixed_op``: a layer's candidate blocks, run all at once (DNAS) or only the sampled path(s).
- ``dnas_supernet``: the FBNet supernet (one block per candidate per layer).
- ``masks``: FBNetV2 channel masks on one max-width conv, resolution masks (sub-sample, compute, interleave into
  the largest map) and position-weighted batch norm.
- ``masked_blocks``: a layer's candidates as one shared-weight block (kernel, expansion and group masks), plus skip.
- ``dmasking_supernet``: the DMaskingNAS supernet; ``child(arch)`` is exactly ``build_model(space, arch)``.
- ``resolution_loss``: each resolution's running validation loss, the resolution decision's accuracy signal when
  one resolution runs per step.
- ``search``: the alternating weight / architecture optimisation, resumable per epoch.
- ``plots``: PNG plots of the search trajectory.
- ``strategy``: ``SupernetStrategy`` (``nas.search.strategy``): latency table, search, retrain + export + measure,
  report.
"""

from nas import lazy_exports

_EXPORTS = {
    "ArchDistribution": "nas.search.dnas.distribution",
    "DMaskingSupernet": "nas.search.dnas.dmasking_supernet",
    "DNASSupernet": "nas.search.dnas.dnas_supernet",
    "PreparedSupernetSearch": "nas.search.dnas.strategy",
    "SearchJob": "nas.search.dnas.strategy",
    "SupernetSearch": "nas.search.dnas.search",
    "SupernetSearchSettings": "nas.search.dnas.search",
    "SupernetStrategy": "nas.search.dnas.strategy",
    "build_supernet": "nas.search.dnas.strategy",
    "most_probable_in_band": "nas.search.dnas.decode",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
