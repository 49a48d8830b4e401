"""The images an inr zoo's SIRENs draw: the bundled 8x8 digits, upsampled and moved by random
small affine and elastic deformations, several *views* per digit.

A view is a function of ``(zoo seed, digit, view)`` only, so it is regenerated exactly wherever
it is needed (the SIREN fit, the editing targets, the tests) and never stored. Network ``i`` of a
zoo draws digit ``i mod 1797`` in view ``i div 1797`` (:func:`view_of`): every digit is used
before any gets a second view, and network ``i`` is the same in a zoo of any size.

Geometry. Coordinates are ``(row, col)`` in ``[-1, 1]``; the 8x8 source covers the square
``[-1, 1]^2`` with its pixel centres at ``-7/8, -5/8, ..., 7/8`` and is zero outside. An output
pixel ``p`` of the ``side x side`` grid (:func:`paramgraph.tasks.inr.grid`) takes the source's
cubic-spline interpolation at

.. math::  q = A^{-1}(p - t) + d(p),

with :math:`A = R(\\phi)\\,\\mathrm{diag}(s_r, s_c)\\,[[1, \\kappa], [0, 1]]` (rotation
:math:`\\phi`, per-axis scale :math:`s`, shear :math:`\\kappa`), shift :math:`t`, and
:math:`d` an elastic displacement field: white noise on the output grid smoothed by a Gaussian of
``side / 7`` pixels and scaled to a root-mean-square length of ``ELASTIC_RMS``
(Simard et al. 2003, in resolution-independent units). The result is clipped to ``[0, 1]``.
The ranges (:data:`RANGES`) keep every view a clearly readable digit of its class.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SOURCE = 8  # the bundled digits are 8x8
ELASTIC_RMS = 0.04  # in units of the half-width of the image: ~0.5 pixel at 28x28
ELASTIC_SIGMA = 1.0 / 7.0  # smoothing of the displacement noise, as a fraction of the side
RANGES = {
    "rotate": math.radians(12.0),  # +- radians
    "scale": 0.10,  # each axis' scale in 1 +- 0.10
    "shear": 0.15,  # +- shear factor
    "shift": 0.08,  # +- per axis, in half-widths (~1 pixel of 28)
}
VIEW_TAG = 0x1A5E  # separates the views' random streams from every other use of the zoo seed


def view_of(i: int, digits: int) -> tuple[int, int]:
    """``(digit, view)`` drawn by network ``i`` of a zoo over ``digits`` source digits."""
    return i % digits, i // digits


def view_params(seed: int, digit: int, view: int) -> dict:
    """The deformation of view ``view`` of digit ``digit`` in a zoo with seed ``seed``: the
    affine parameters and the seed of the elastic field (recorded in the zoo's metadata)."""
    rng = np.random.default_rng([int(seed), VIEW_TAG, int(digit), int(view)])
    r = RANGES
    return {"rotate": float(rng.uniform(-r["rotate"], r["rotate"])),
            "scale_r": float(1.0 + rng.uniform(-r["scale"], r["scale"])),
            "scale_c": float(1.0 + rng.uniform(-r["scale"], r["scale"])),
            "shear": float(rng.uniform(-r["shear"], r["shear"])),
            "shift_r": float(rng.uniform(-r["shift"], r["shift"])),
            "shift_c": float(rng.uniform(-r["shift"], r["shift"])),
            "elastic_seed": int(rng.integers(0, 2**31 - 1))}


def _affine(p: dict) -> np.ndarray:
    """The 2x2 matrix ``A`` of the module docstring."""
    c, s = math.cos(p["rotate"]), math.sin(p["rotate"])
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([p["scale_r"], p["scale_c"]]) @ np.array([[1.0, p["shear"]], [0.0, 1.0]])


@lru_cache(maxsize=8)
def _grid(side: int) -> np.ndarray:
    """``[2, side, side]`` output pixel coordinates (row, col) in ``[-1, 1]``."""
    axis = np.linspace(-1.0, 1.0, side)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"))


def elastic_field(seed: int, side: int) -> np.ndarray:
    """``[2, side, side]``: the smooth displacement field of the module docstring."""
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(2, side, side))
    field = np.stack([gaussian_filter(n, sigma=ELASTIC_SIGMA * side, mode="reflect")
                      for n in noise])
    rms = math.sqrt(float((field ** 2).sum(0).mean())) or 1.0
    return field * (ELASTIC_RMS / rms)


def deform(image: np.ndarray, params: dict | None, side: int) -> np.ndarray:
    """``[side, side]`` float32: the 8x8 ``image`` (values in [0, 1]) resampled on the output
    grid through the deformation ``params`` (``None``: upsampled only)."""
    from scipy.ndimage import map_coordinates

    p = _grid(side).reshape(2, -1)
    if params is not None:
        shift = np.array([[params["shift_r"]], [params["shift_c"]]])
        p = np.linalg.solve(_affine(params), p - shift)
        p = p + elastic_field(params["elastic_seed"], side).reshape(2, -1)
    # [-1, 1] -> source pixel index: centre k sits at -1 + (2k + 1) / SOURCE
    idx = (p + 1.0) * (SOURCE / 2.0) - 0.5
    src = np.asarray(image, dtype=np.float64).reshape(SOURCE, SOURCE)
    out = map_coordinates(src, idx, order=3, mode="constant", cval=0.0, prefilter=True)
    return np.clip(out, 0.0, 1.0).reshape(side, side).astype(np.float32)


def view_images(seed: int, pairs, side: int) -> np.ndarray:
    """``[n, side * side]`` float32: the views ``pairs`` (``(digit, view)`` each) of a zoo with
    seed ``seed``, row-major like :func:`paramgraph.tasks.inr.grid`."""
    from .digits import images

    x = images()[0].numpy()
    out = np.empty((len(pairs), side * side), dtype=np.float32)
    for k, (digit, view) in enumerate(pairs):
        out[k] = deform(x[digit], view_params(seed, digit, view), side).reshape(-1)
    return out
