"""Labelled clips for the ``pairs`` and ``inspect`` tests: mp4 files (H.264 picture, AAC sound) of
any size, frame rate and length, written with PyAV; each frame a flat colour with a bar that
crosses it over the clip, the sound a tone."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_mp4(
    path: Path,
    width: int,
    height: int,
    fps: float,
    seconds: float,
    pitch: float = 440.0,
    seed: int = 0,
    audio_rate: int | None = 44_100,
    channels: int = 2,
    faststart: bool = False,
) -> Path:
    """An mp4 clip; ``audio_rate=None``: no soundtrack; ``faststart``: its index (``moov``) ahead
    of the media, so that the clip cut short keeps a whole header. Returns ``path``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = np.random.default_rng(seed).integers(0, 256, 3).astype(np.uint8)
    layout = "stereo" if channels == 2 else "mono"
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=audio_rate, layout=layout) if audio_rate else None
        count = max(1, int(round(seconds * fps)))
        for index in range(count):
            picture = np.empty((height, width, 3), np.uint8)
            picture[:] = colour
            left = int(index / max(count - 1, 1) * (width - width // 8))
            picture[:, left : left + width // 8] = 255 - colour
            for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None and audio_rate:
            times = np.arange(int(seconds * audio_rate)) / audio_rate
            tone = (0.3 * np.sin(2 * np.pi * pitch * times)).astype(np.float32)
            sound = np.stack([tone] * channels)
            for start in range(0, sound.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(sound[:, start : start + 1024]),
                    format="fltp",
                    layout=layout,
                )
                frame.sample_rate, frame.pts = audio_rate, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)
    return path


#: (width, height, fps, seconds) of the twelve clips: three labels × four clips, no two alike
#: within a label; sizes, rates (29.97 among them) and lengths mixed.
MIXED = (
    (64, 48, 25.0, 2.4),
    (80, 48, 30000 / 1001, 1.8),
    (64, 48, 10.0, 3.0),
    (48, 64, 30.0, 2.0),
)


def labelled_folder(folder: Path, labels: tuple[str, ...] = ("dog", "cat", "bird")) -> Path:
    """``folder/<label>/<label><i>.mp4``: four clips per label, of :data:`MIXED` shapes."""
    for row, label in enumerate(labels):
        for index in range(4):
            width, height, fps, seconds = MIXED[(row + index) % len(MIXED)]
            write_mp4(
                folder / label / f"{label}{index}.mp4",
                width,
                height,
                fps,
                seconds,
                pitch=220.0 * (row + 1) + 40.0 * index,
                seed=10 * row + index,
                audio_rate=(44_100, 48_000, 16_000, 22_050)[index],
                channels=1 + index % 2,
            )
    return folder


def truncated_mp4(path: Path, fraction: float = 0.5, **clip: object) -> Path:
    """An mp4 clip (:func:`write_mp4`, 64×48, 8 fps, 3 s unless ``clip`` says otherwise) whose
    index comes first, cut to ``fraction`` of its bytes: its header still counts every frame."""
    options = {"width": 64, "height": 48, "fps": 8.0, "seconds": 3.0, **clip}
    write_mp4(path, faststart=True, **options)  # type: ignore[arg-type]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
