"""Frames back from Qwen-VL video patches: what the vision tower is shown, as pictures.

The inverse of :func:`patchwork.data.media.video_patches` (the layout of the Qwen2-VL, Qwen2.5-
and Qwen3-Omni processors): patches (t·h·w, 3·temporal·patch·patch), each ``merge × merge``
block of neighbours contiguous, normalized with ``mean``/``std``, become uint8 RGB frames
(t·temporal, H, W, 3). Used by ``patchwork inspect`` to draw the frames a run feeds the model —
after every resize, crop and frame choice the input conventions made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from patchwork.errors import DataError


def frames_from_patches(
    pixel_values: np.ndarray,
    grid_thw: Sequence[Sequence[int]],
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> list[np.ndarray]:
    """One uint8 array (t·temporal, H, W, 3) per video row of ``grid_thw`` = [[t, h, w], …]
    (in patches), from the videos' concatenated ``pixel_values`` (patches, 3·temporal·patch²).

    Pixel values are un-normalized and rounded to the nearest uint8 level, so frames that went
    in as uint8 come back equal (tested).
    """
    pixel_values = np.asarray(pixel_values, dtype=np.float32)
    patch_dim = 3 * temporal_patch_size * patch_size**2
    if pixel_values.ndim != 2 or pixel_values.shape[1] != patch_dim:
        raise DataError(
            f"video patches must be (patches, {patch_dim}), got shape {pixel_values.shape}"
        )
    videos, start = [], 0
    for grid_t, grid_h, grid_w in (tuple(int(v) for v in row) for row in grid_thw):
        count = grid_t * grid_h * grid_w
        if grid_h % merge_size or grid_w % merge_size or start + count > len(pixel_values):
            raise DataError(
                f"video grid {[grid_t, grid_h, grid_w]} does not fit {len(pixel_values)} patches "
                f"merged {merge_size}×{merge_size}"
            )
        blocks = pixel_values[start : start + count].reshape(
            grid_t,
            grid_h // merge_size,
            grid_w // merge_size,
            merge_size,
            merge_size,
            3,
            temporal_patch_size,
            patch_size,
            patch_size,
        )
        # (t, block_row, block_col, row_in_block, col_in_block, channel, time, py, px)
        # -> (t, time, channel, block_row, row_in_block, py, block_col, col_in_block, px)
        pixels = blocks.transpose(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(
            grid_t * temporal_patch_size, 3, grid_h * patch_size, grid_w * patch_size
        )
        scaled = pixels.transpose(0, 2, 3, 1) * np.array(std, np.float32) + np.array(
            mean, np.float32
        )
        videos.append(np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8))
        start += count
    if start != len(pixel_values):
        raise DataError(
            f"video grids {list(grid_thw)} cover {start} of {len(pixel_values)} patches"
        )
    return videos
