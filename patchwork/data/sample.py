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

import torch

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
