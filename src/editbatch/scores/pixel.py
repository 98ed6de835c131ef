"""Pixel metrics between two images: L1, L2 (mean squared error), PSNR on [0, 1]; SSIM from scikit-image.

The output is compared at the reference's size (resized bicubic when they
differ), as MagicBrush's evaluation does against its targets.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def as_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    image = image.convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float64) / 255.0


def pixel_scores(output: Image.Image, reference: Image.Image, names: set[str]) -> dict[str, float]:
    ref = as_array(reference)
    out = as_array(output, reference.size)
    diff = out - ref
    scores: dict[str, float] = {}
    if "l1" in names:
        scores["l1"] = float(np.abs(diff).mean())
    mse = float((diff**2).mean())
    if "l2" in names:
        scores["l2"] = mse
    if "psnr" in names:
        scores["psnr"] = float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
    if "ssim" in names:
        scores["ssim"] = ssim(out, ref)
    return scores


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    side = min(a.shape[0], a.shape[1])
    window = min(7, side if side % 2 else side - 1)  # scikit-image needs an odd window that fits the image
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0, win_size=max(window, 3)))
