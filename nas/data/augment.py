"""Batch augmentation on the device (kornia), driven by a seeded generator so that it is reproducible.

``none``: nothing. ``light``: a random-resized crop of 70-100% of the image at nearly its own aspect ratio (suits
digits and other centred, orientation-bound images). ``standard``: the ImageNet recipe's random-resized crop
(8-100%, aspect 3/4-4/3) and a horizontal flip, for natural images. Evaluation sees the deterministic resize and
centre crop of ``nas.data.splits`` only.
"""

from __future__ import annotations

import math

import torch
from kornia.geometry.transform import crop_and_resize, hflip

AUGMENTATIONS = ("none", "light", "standard")
CROP_SETTINGS = {"light": ((0.7, 1.0), (0.9, 1.1), False), "standard": ((0.08, 1.0), (3 / 4, 4 / 3), True)}


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator) -> torch.Tensor:
    """n random crop boxes (n x 4 corners, kornia's order: top-left, top-right, bottom-right, bottom-left) of
    area ``scale`` of the image and aspect ``ratio`` (log-uniform), clipped to the image."""
    area = torch.empty(n).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(1, width)
    h = torch.sqrt(area / aspect).clamp(1, height)
    x0 = torch.rand(n, generator=generator) * (width - w)
    y0 = torch.rand(n, generator=generator) * (height - h)
    x1, y1 = x0 + w - 1, y0 + h - 1
    return torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1), torch.stack([x1, y1], 1),
                        torch.stack([x0, y1], 1)], 1)


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """``x`` (N x C x H x W, any device) augmented as the recipe's ``augment`` says; the random parameters are
    drawn on the CPU from ``generator``, so the result depends on its seed alone."""
    if augment == "none":
        return x
    scale, ratio, flip = CROP_SETTINGS[augment]
    n, _, height, width = x.shape
    boxes = crop_boxes(n, height, width, scale, ratio, generator).to(x.device, x.dtype)
    out = crop_and_resize(x.contiguous(), boxes, (height, width), align_corners=True)
    if flip:
        flipped = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(flipped.view(-1, 1, 1, 1), hflip(out), out)
    return out.contiguous(memory_format=torch.channels_last)
