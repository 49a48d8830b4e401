"""What ``--task inr-edit`` teaches a weight head to do to a SIREN's image, and the images it
starts from.

:data:`EDITS` maps an edit's name (``--task inr-edit --target NAME``) to a function of
``[n, side * side]`` images in ``[0, 1]`` returning the edited images, same shape:

``dilate``     grey-scale dilation with a cross of ``side / 16`` pixels
               (:func:`paramgraph.tasks.inr.dilate`): strokes grow thicker.
``translate``  the image moved down and right by ``side / 8`` pixels (:func:`translate`),
               zeros coming in. On a SIREN an exact translation is a change of its first-layer
               biases only, :math:`b' = b - W\\delta`, linear in the weights; the zero strip
               that comes in is the one part that is not.

:func:`zoo_images` gives the images a zoo's SIRENs were fitted to, regenerated from the zoo's
seed and each network's digit and view (:mod:`paramgraph.tasks.inr_images`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .inr import dilate, side_of


def translation_pixels(side: int) -> int:
    """How far :func:`translate` moves the image: one pixel per 8 (at least one)."""
    return max(1, round(side / 8))


def translate(images: np.ndarray | Tensor) -> Tensor:
    """``[n, side*side]`` images moved down and right by :func:`translation_pixels` ``(side)``,
    zeros filling the top rows and left columns. Returns float32."""
    arr = np.asarray(images, dtype=np.float32)
    side = side_of(arr.shape[1]) if arr.ndim == 2 else arr.shape[-1]
    arr = arr.reshape(-1, side, side)
    k = translation_pixels(side)
    out = np.zeros_like(arr)
    out[:, k:, k:] = arr[:, : side - k, : side - k]
    return torch.from_numpy(out.reshape(-1, side * side))


EDITS = {"dilate": dilate, "translate": translate}


def zoo_side(zoo) -> int:
    """The resolution of an inr zoo's images (8 for a zoo made before views existed)."""
    return int(zoo.manifest.get("inr_side", 8))


def zoo_images(zoo) -> Tensor:
    """``[n, side * side]`` float32: the image each SIREN of ``zoo`` was fitted to, in id order.
    A zoo made before views existed drew the raw 8x8 digits (``image_index``)."""
    from .digits import images
    from .inr_images import view_images

    rows = zoo.rows
    if all("view" in r for r in rows):
        pairs = [(int(r["image_index"]), int(r["view"])) for r in rows]
        return torch.from_numpy(view_images(int(zoo.manifest["seed"]), pairs, zoo_side(zoo)))
    x, _ = images()
    return x[[int(r["image_index"]) for r in rows]]
