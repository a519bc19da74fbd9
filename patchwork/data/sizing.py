"""Frame sizes as the Qwen-VL processors fit them: sides a multiple of patch · merge, the pixel
count within a budget, the aspect ratio kept (``smart_resize``); and the resize itself, Pillow's
bicubic (the image processor's pictures) or torch's antialiased bicubic (torchvision's video)."""

from __future__ import annotations

import math

import numpy as np

from patchwork.data import media
from patchwork.errors import DataError


def fitted_size(
    height: int, width: int, unit: int, max_pixels: float | None, min_pixels: float
) -> tuple[int, int]:
    """(H, W) a frame is resized to: multiples of ``unit`` nearest the frame, scaled down (up)
    keeping the aspect ratio when that exceeds ``max_pixels`` (falls short of ``min_pixels``) —
    the rule of Qwen-VL's ``smart_resize``."""
    if max(height, width) > 200 * min(height, width):
        raise DataError(f"frames of {height}x{width} pixels: the aspect ratio must be below 200")
    fitted_h = max(unit, round(height / unit) * unit)
    fitted_w = max(unit, round(width / unit) * unit)
    if max_pixels and fitted_h * fitted_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        fitted_h = max(unit, math.floor(height / beta / unit) * unit)
        fitted_w = max(unit, math.floor(width / beta / unit) * unit)
    elif min_pixels and fitted_h * fitted_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        fitted_h = math.ceil(height * beta / unit) * unit
        fitted_w = math.ceil(width * beta / unit) * unit
    return fitted_h, fitted_w


def fit_frames(
    frames: np.ndarray,
    unit: int,
    max_pixels: float | None = None,
    min_pixels: int = 0,
    resize: str = "pillow",
) -> np.ndarray:
    """Frames (n, H, W, 3) resized (bicubic) to :func:`fitted_size`; returned unchanged when they
    already fit. ``resize``: ``"pillow"`` as the image processor resizes pictures, else a mode of
    :func:`patchwork.data.media.resize_frames` (torchvision's video resizes)."""
    height, width = frames.shape[1:3]
    fitted = fitted_size(height, width, unit, max_pixels, min_pixels)
    if fitted == (height, width):
        return frames
    if resize != "pillow":
        return media.resize_frames(frames, *fitted, mode=resize)
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.fromarray(frame).resize(fitted[::-1], Image.Resampling.BICUBIC))
            for frame in frames
        ]
    )
