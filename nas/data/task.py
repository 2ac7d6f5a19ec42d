"""A task: a dataset and a space shaped for it (resolution, channels and classes taken from the data)."""

from __future__ import annotations

from nas.arch.space import Arch, Space, load_arch, load_space, resolve_model_ref
from nas.data.dataset import Dataset, load_dataset


def load_task(dataset: str, space_ref: str, *, resolution: int | None = None, width: float | None = None,
              seed: int = 0, skip_bad_images: bool = False) -> tuple[Dataset, Space, Arch]:
    """Load the data, then the space or model ``space_ref`` (name, YAML or arch JSON) fitted to it.

    Returns the dataset, the space and its arch (the model's own arch, the arch in the JSON, or the largest).
    """
    if space_ref.endswith(".json") and resolution is None:
        resolution = load_arch(space_ref)[1].get("resolution")  # the resolution the arch was searched at
    data = load_dataset(dataset, resolution=resolution, seed=seed, skip_bad_images=skip_bad_images)
    space, arch = resolve_model_ref(space_ref, resolution=data.resolution, width_multiplier=width,
                                    classes=data.classes, in_channels=data.in_channels)
    return data, space, arch


def load_search_task(dataset: str, space_name: str, *, resolution: int | None = None, width: float | None = None,
                     seed: int = 0, skip_bad_images: bool = False) -> tuple[Dataset, Space]:
    data = load_dataset(dataset, resolution=resolution, seed=seed, skip_bad_images=skip_bad_images)
    space = load_space(space_name, resolution=data.resolution, width_multiplier=width, classes=data.classes,
                       in_channels=data.in_channels)
    return data, space
