"""Where samples come from, read lazily: metadata of all samples up front, data one block at a time.

The store's coordinates (sample ids, answer words) need every sample's metadata before the sweep
starts; the media tensors are only needed for the block (unit) being computed. A source keeps
memory flat however many samples a study has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from patchwork.data.sample import Sample


@dataclass(frozen=True)
class SampleInfo:
    """What the store records about a sample before it is computed, and what is known of its
    token layouts (run → digest of its ``input_ids``; None where the source does not say)."""

    sample_id: str
    audio_answer: str
    visual_answer: str
    layouts: Mapping[str, str] | None = None


def layout_digests(sample: Sample) -> dict[str, str]:
    """Run → digest of its ``input_ids`` (shape and values): equal digests, equal token layout."""
    digests = {}
    for run, inputs in sample.runs.items():
        ids = inputs["input_ids"]
        data = repr(tuple(ids.shape)).encode() + ids.cpu().numpy().tobytes()
        digests[run] = hashlib.sha256(data).hexdigest()[:16]
    return digests


class SampleSource:
    """Samples by index: ``infos`` for all, ``load(start, stop)`` for a block."""

    def __init__(self, infos: Sequence[SampleInfo], load: Callable[[int, int], list[Sample]]):
        self.infos = list(infos)
        self._load = load

    def __len__(self) -> int:
        return len(self.infos)

    def load(self, start: int, stop: int) -> list[Sample]:
        """Samples ``start … stop-1``, built now."""
        return self._load(start, stop)

    @classmethod
    def from_list(cls, samples: Sequence[Sample]) -> SampleSource:
        """A source over samples already in memory."""
        held = list(samples)
        infos = [
            SampleInfo(s.sample_id, s.audio_answer, s.visual_answer, layout_digests(s))
            for s in held
        ]
        return cls(infos, lambda start, stop: held[start:stop])
