"""A capacity task: the dataset at the space's input size, and the space (or a checkpoint's model) fitted to it."""

from __future__ import annotations

from nas.data.dataset import Dataset, load_dataset
from nas.search.capacity.checkpoint import load_dynamic_vit, read_sidecar
from nas.search.capacity.space import CapacitySpace, load_capacity_space
from nas.search.capacity.vit import DynamicViT


def load_capacity_data(space_ref: str, dataset: str, seed: int = 0) -> tuple[Dataset, CapacitySpace]:
    """Load ``dataset`` resized to the space's resolution, and the space with the data's channels and classes."""
    resolution = load_capacity_space(space_ref).resolution
    data = load_dataset(dataset, resolution=resolution, seed=seed)
    return data, load_capacity_space(space_ref, in_channels=data.in_channels, classes=data.classes)


def load_capacity_model(space_ref: str, dataset: str, checkpoint: str, seed: int | None = None
                        ) -> tuple[Dataset, DynamicViT, dict]:
    """The data and the trained model; the checkpoint must come from this space and data shape.

    ``seed`` None splits the data as the checkpoint's training did (when it was trained on ``dataset``), so
    that validation images were not training images. ``meta["data_seed"]`` is the seed used.
    """
    meta = read_sidecar(checkpoint)
    if seed is None:
        seed = int(meta.get("seed", 0)) if meta.get("dataset") == dataset else 0
    data, space = load_capacity_data(space_ref, dataset, seed)
    model, meta = load_dynamic_vit(checkpoint, space_ref, in_channels=space.in_channels, classes=space.classes)
    return data, model, {**meta, "data_seed": seed}
