"""The unit of data every intervention consumes: one sample, several runs of it.

A *run* is the keyword arguments of one forward of the model (``input_ids``, ``attention_mask``,
``input_features``, ``pixel_values_videos`` …), batch dimension of one. All runs of a sample share
one token layout (the same ``input_ids``); only media content differs, e.g. the *clean* run has the
sample's own sound and a blank picture, the *conflict* run the same sound and a contradicting
picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from patchwork.data.conventions import VideoSampling

ModelInputs = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Sample:
    """One sample: its runs and the two answers the metrics compare.

    ``audio_answer`` is the answer consistent with the sound, ``visual_answer`` the one consistent
    with the picture; ``*_answer_id`` are their (single) token ids in the model's vocabulary.
    """

    sample_id: str
    runs: Mapping[str, ModelInputs]
    audio_answer: str
    visual_answer: str
    audio_answer_id: int
    visual_answer_id: int
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunMedia:
    """Decoded media of one run, before any model-specific feature extraction.

    ``waveform``: mono float32 (n_samples,) at the adapter's ``sampling_rate``; ``frames``: uint8
    RGB (n_frames, H, W, 3) sampled at ``fps``; ``image_features``: precomputed vision-tower
    outputs (n_images, tokens, hidden) for families whose vision tower cannot run here.
    """

    waveform: np.ndarray | None = None
    frames: np.ndarray | None = None
    fps: float = 2.0
    image_features: torch.Tensor | None = None
    #: The soundtrack belongs to the video and is interleaved with its frames in time chunks.
    audio_in_video: bool = False
    #: The question as text (for adapters whose processor tokenizes the prompt itself).
    question: str = ""
    #: The video convention the frames were taken by; it also sets their pixel budget. None:
    #: frames made in code (the adapter's own budget).
    sampling: VideoSampling | None = None
    #: Source time (s) of each frame, for showing what the model sees.
    frame_times: tuple[float, ...] = ()
