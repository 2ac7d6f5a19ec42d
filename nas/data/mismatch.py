"""Warnings for a model that does not fit its data: an input resolution far from the data's, or other channels.

A 224-px, 3-channel arch trained on 8x8 grey digits upsamples every image 28x (minutes and gigabytes for nothing)
and has its stem rebuilt for one channel. The data's resolution is the size it loads at by default: the images'
own size, at least ``nas.data.dataset.MIN_DEFAULT_RESOLUTION`` pixels.
"""

from __future__ import annotations

from nas.arch.space import Space, load_arch
from nas.data.dataset import MIN_DEFAULT_RESOLUTION, Dataset

MAX_RESOLUTION_RATIO = 2.0


def mismatch_warnings(data: Dataset, space: Space, ref: str | None = None) -> list[str]:
    """One line per mismatch between ``space`` (built for the data) and ``data``; ``ref`` is the model reference
    the user gave: an arch JSON's declared input channels are checked against the data's."""
    warnings = []
    natural = max(MIN_DEFAULT_RESOLUTION, data.native_resolution)
    if space.resolution > MAX_RESOLUTION_RATIO * natural:
        warnings.append(f"the model's input is {space.resolution} px but the data's images are "
                        f"{data.native_resolution} px ({natural} px by default): upsampling them "
                        f"{space.resolution / data.native_resolution:.2g}x costs time and memory without adding "
                        f"detail; use --resolution {natural}, or an arch made at that resolution")
    elif space.resolution < data.native_resolution / MAX_RESOLUTION_RATIO:
        warnings.append(f"the model's input is {space.resolution} px but the data's images are "
                        f"{data.native_resolution} px: shrinking them {space.resolution / data.native_resolution:.2g}x "
                        f"loses detail; use --resolution {natural}, or an arch made at that resolution")
    declared = load_arch(ref)[1].get("in_channels") if ref and ref.endswith(".json") else None
    if declared is not None and declared != data.in_channels:
        warnings.append(f"{ref} was made for {declared}-channel input but the data has {data.in_channels} "
                        f"channel{'s' if data.in_channels > 1 else ''}: its stem is rebuilt for the data")
    return warnings
