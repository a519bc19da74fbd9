"""Pictures of what a run feeds the model (``patchwork inspect``): a contact sheet of the frames
the vision tower is shown, each labelled with its time, and the log-mel the audio encoder hears.

Figures are built without pyplot, as in :mod:`patchwork.analysis.plots`. They take the
:class:`~patchwork.engine.inspect.RunInputs` of :func:`patchwork.inspect_inputs`.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from patchwork.engine.inspect import RunInputs

#: Most frames in one row of the contact sheet.
SHEET_COLUMNS = 8


def frames_figure(inputs: RunInputs) -> Figure:
    """A contact sheet: every frame of every video, at its fitted size, titled with its time in
    its source clip (:meth:`~patchwork.engine.inspect.RunInputs.frame_labels`)."""
    cells = [
        (video, index, frame)
        for video, frames in enumerate(inputs.videos)
        for index, frame in enumerate(frames)
    ]
    if not cells:
        raise ValueError(f"run {inputs.run!r} of sample {inputs.sample_id} shows no frames")
    columns = min(SHEET_COLUMNS, len(cells))
    rows = math.ceil(len(cells) / columns)
    height, width = cells[0][2].shape[:2]
    cell_width = 2.0
    cell_height = cell_width * height / width + 0.35
    figure = Figure(
        figsize=(max(cell_width * columns, 5.0), cell_height * rows + 0.7), layout="constrained"
    )
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    several = len(inputs.videos) > 1
    labels = [inputs.frame_labels(video) for video in range(len(inputs.videos))]
    for axis, (video, index, frame) in zip(axes.flat, cells, strict=False):
        axis.imshow(frame, interpolation="nearest")
        label = labels[video][index]
        axis.set_title(f"video {video}: {label}" if several else label, fontsize=9)
    figure.suptitle(
        f"{inputs.study} · {inputs.sample_id} · {inputs.run}\n{len(cells)} frames of "
        f"{width}×{height} px as the model sees them",
        fontsize=10,
    )
    return figure


def audio_figure(inputs: RunInputs) -> Figure:
    """The log-mel of every audio clip, time in seconds on x, mel bin on y."""
    if not inputs.mels:
        raise ValueError(f"run {inputs.run!r} of sample {inputs.sample_id} has no audio features")
    figure = Figure(figsize=(8, 2.6 * len(inputs.mels)), layout="constrained")
    axes = figure.subplots(len(inputs.mels), 1, squeeze=False)[:, 0]
    for index, (axis, mel) in enumerate(zip(axes, inputs.mels, strict=True)):
        seconds = inputs.audio_seconds[index]
        image = axis.imshow(
            mel,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            extent=(0.0, seconds, 0.0, float(mel.shape[0])),
            cmap="magma",
        )
        axis.set_xlabel("time (s)")
        axis.set_ylabel("mel bin")
        axis.set_title(
            f"audio {index}: {seconds:.2f} s, {mel.shape[1]} frames × {mel.shape[0]} mel bins",
            fontsize=9,
        )
        figure.colorbar(image, ax=axis, label="log-mel")
    figure.suptitle(f"{inputs.study} · {inputs.sample_id} · {inputs.run}", fontsize=10)
    return figure


def write_inspection(inputs: RunInputs, out: str | Path) -> dict[str, Path]:
    """Write ``inputs.safetensors``, ``frames.png`` (when the run shows frames) and
    ``audio.png`` (when it has audio features) into ``out``; returns name → path written. A
    picture this run has none of is removed if an earlier inspection left it there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"inputs": inputs.save_tensors(out / "inputs.safetensors")}
    for name, has, draw in (
        ("frames", bool(inputs.videos), frames_figure),
        ("audio", bool(inputs.mels), audio_figure),
    ):
        path = out / f"{name}.png"
        if has:
            draw(inputs).savefig(path, dpi=120)
            written[name] = path
        else:
            path.unlink(missing_ok=True)
    return written
