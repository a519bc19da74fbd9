"""The testbed's synthetic audio-visual world: categories, their sounds and pictures, the words.

Each category has an object word (the answer to "what do you see"), a sound word (the answer to
"what do you hear"), a procedurally drawn picture (a coloured shape on a grey background, 32×32
RGB) and a procedurally synthesized sound (0.4 s of 16 kHz mono). Every draw takes its own
``numpy.random.Generator``, so a clip is a pure function of its seed.

Sounds are told apart by their spectro-temporal shape (steady tones at different pitches, rising
and falling chirps, click trains, noise bands, chords, tremolo, two-tone sirens); pictures by shape
and colour. Jitter (pitch, timing, loudness, position, size, colour, pixel noise) makes every clip
different.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SAMPLING_RATE = 16_000
CLIP_SAMPLES = 6_400  # 0.4 s -> 40 mel frames -> 10 audio tokens
FRAME_SIZE = 32  # pixels; patch 4, merge 2 -> 16 video tokens
BLANK_GREY = 128


@dataclass(frozen=True)
class Category:
    """One kind of thing in the world: what it is called, how it sounds, how it looks."""

    name: str  # object word, answer to "what do you see"
    sound: str  # sound word, answer to "what do you hear"
    timbre: str  # which synthesizer makes its sound
    shape: str  # which drawing makes its picture
    colour: tuple[int, int, int]


CATEGORIES: tuple[Category, ...] = (
    Category("cow", "moo", "low_tone", "square", (150, 90, 40)),
    Category("bird", "tweet", "high_tone", "triangle", (240, 200, 30)),
    Category("dog", "bark", "click_train", "circle", (200, 60, 40)),
    Category("snake", "hiss", "high_noise", "bar", (40, 170, 60)),
    Category("car", "honk", "chord", "wide_rect", (40, 80, 220)),
    Category("bell", "ding", "tremolo", "diamond", (230, 230, 230)),
    Category("drum", "boom", "low_noise", "ring", (120, 40, 160)),
    Category("siren", "wail", "two_tone", "cross", (240, 120, 200)),
    Category("whistle", "toot", "up_chirp", "tall_rect", (30, 200, 210)),
    Category("frog", "croak", "down_chirp", "dot_pair", (20, 100, 30)),
)
QUESTIONS = ("what do you hear", "what do you see")
NOTHING = "nothing"  # answer to "what do you see" for a blank picture, to both for neither


def category(name: str) -> Category:
    for candidate in CATEGORIES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


# --------------------------------------------------------------------------------------- sounds


def _band_noise(rng: np.random.Generator, low_hz: float, high_hz: float) -> np.ndarray:
    """White noise restricted to [low_hz, high_hz] in the Fourier domain, unit peak."""
    spectrum = np.fft.rfft(rng.standard_normal(CLIP_SAMPLES))
    freqs = np.fft.rfftfreq(CLIP_SAMPLES, 1 / SAMPLING_RATE)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    noise = np.fft.irfft(spectrum, CLIP_SAMPLES)
    return noise / (np.abs(noise).max() + 1e-9)


def _tone(freq_hz: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
    """A sine whose frequency may change per sample (phase-integrated), random start phase."""
    freq = np.broadcast_to(np.asarray(freq_hz, dtype=np.float64), (CLIP_SAMPLES,))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLING_RATE + rng.uniform(0, 2 * np.pi)
    return np.sin(phase)


def synthesize_sound(timbre: str, rng: np.random.Generator) -> np.ndarray:
    """0.4 s of a category's sound, float32 (6400,) in [-1, 1], with per-clip jitter."""
    t = np.arange(CLIP_SAMPLES) / SAMPLING_RATE
    jitter = rng.uniform(0.9, 1.1)
    wave: Any
    if timbre == "low_tone":
        wave = _tone(180 * jitter, rng) + 0.3 * _tone(360 * jitter, rng)
    elif timbre == "high_tone":
        wave = _tone(3200 * jitter, rng)
    elif timbre == "click_train":
        rate = 12 * jitter
        envelope = np.exp(-((t * rate) % 1.0) * 25)
        wave = envelope * _band_noise(rng, 200, 6000)
    elif timbre == "high_noise":
        wave = _band_noise(rng, 4000 * jitter, 7800)
    elif timbre == "chord":
        wave = sum(_tone(f * jitter, rng) for f in (440, 554, 659)) / 3
    elif timbre == "tremolo":
        wave = _tone(1200 * jitter, rng) * (0.55 + 0.45 * np.sin(2 * np.pi * 9 * jitter * t))
    elif timbre == "low_noise":
        wave = _band_noise(rng, 40, 500 * jitter)
    elif timbre == "two_tone":
        high = (t * 5 * jitter + rng.uniform()) % 1.0 < 0.5
        wave = _tone(np.where(high, 1700, 900) * jitter, rng)
    elif timbre == "up_chirp":
        wave = _tone(np.linspace(400, 3500, CLIP_SAMPLES) * jitter, rng)
    elif timbre == "down_chirp":
        wave = _tone(np.linspace(3500, 400, CLIP_SAMPLES) * jitter, rng)
    else:
        raise ValueError(f"unknown timbre {timbre!r}")
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms ramps, no clicks at the edges
    loudness = rng.uniform(0.3, 0.8)
    background = 0.01 * rng.standard_normal(CLIP_SAMPLES)
    wave = loudness * wave * fade / (np.abs(wave).max() + 1e-9) + background
    return np.clip(wave, -1, 1).astype(np.float32)


def silence() -> np.ndarray:
    """0.4 s of digital silence, float32 (6400,)."""
    return np.zeros(CLIP_SAMPLES, dtype=np.float32)


def as_pcm16(waveform: np.ndarray) -> np.ndarray:
    """The waveform as a 16-bit wav file stores it, so in-memory clips match written ones."""
    return (np.round(np.clip(waveform, -1, 1) * 32767) / 32767).astype(np.float32)


# ------------------------------------------------------------------------------------- pictures


def _shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[str, list]]:
    """Drawing primitives (kind, coordinates) of a shape of radius ``r`` centred at (cx, cy)."""
    if shape == "square":
        return [("rect", [cx - r, cy - r, cx + r, cy + r])]
    if shape == "circle":
        return [("ellipse", [cx - r, cy - r, cx + r, cy + r])]
    if shape == "triangle":
        return [("polygon", [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)])]
    if shape == "diamond":
        return [("polygon", [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)])]
    if shape == "bar":
        return [("rect", [cx - r, cy - r / 4, cx + r, cy + r / 4])]
    if shape == "wide_rect":
        return [("rect", [cx - r, cy - r / 2, cx + r, cy + r / 2])]
    if shape == "tall_rect":
        return [("rect", [cx - r / 2, cy - r, cx + r / 2, cy + r])]
    if shape == "cross":
        return [
            ("rect", [cx - r, cy - r / 4, cx + r, cy + r / 4]),
            ("rect", [cx - r / 4, cy - r, cx + r / 4, cy + r]),
        ]
    if shape == "ring":
        return [("ring", [cx - r, cy - r, cx + r, cy + r])]
    if shape == "dot_pair":
        d = r / 2
        return [
            ("ellipse", [cx - r, cy - d, cx, cy + d]),
            ("ellipse", [cx, cy - d, cx + r, cy + d]),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def draw_picture(kind: Category | None, rng: np.random.Generator) -> np.ndarray:
    """A 32×32 uint8 RGB frame (32, 32, 3): the category's shape, or a blank grey frame if None."""
    base = rng.integers(110, 146)
    image = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), (int(base),) * 3)
    if kind is not None:
        draw = ImageDraw.Draw(image)
        r = rng.uniform(7, 11)
        cx, cy = rng.uniform(r + 1, FRAME_SIZE - r - 1, size=2)
        colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in kind.colour)
        for primitive, coords in _shape_outline(kind.shape, cx, cy, r):
            if primitive == "rect":
                draw.rectangle(coords, fill=colour)
            elif primitive == "ellipse":
                draw.ellipse(coords, fill=colour)
            elif primitive == "polygon":
                draw.polygon(coords, fill=colour)
            else:
                draw.ellipse(coords, outline=colour, width=3)
    noise = rng.integers(-8, 9, size=(FRAME_SIZE, FRAME_SIZE, 3))
    pixels = np.asarray(image, dtype=np.int16) + noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def blank_picture() -> np.ndarray:
    """The neutral picture: uniform grey (32, 32, 3) uint8, no category in it."""
    return np.full((FRAME_SIZE, FRAME_SIZE, 3), BLANK_GREY, dtype=np.uint8)
