"""Logit lens as a study method: each layer's residual stream read through the unembedding.

For every layer in ``layers`` the residual stream (the decoder layer's output) at the positions of
each position group is passed through the final norm (unless ``final_norm: false``) and the
unembedding; softmax gives a next-token distribution per position, and a group's distribution is
the mean over its positions. From it are stored (``lens_answer`` = ``audio`` | ``visual``):

- ``lens_probability`` (sample, lens_layer, lens_group, lens_answer): probability of the answer;
- ``lens_rank`` (sample, lens_layer, lens_group, lens_answer): its rank, 0 = the top token;
- ``lens_top_tokens`` (sample, lens_layer, lens_group, lens_k) int64: the top-k token ids.

At the last layer, with the final norm, the answer group's distribution is the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from patchwork.data.sample import Sample
from patchwork.errors import StudyError
from patchwork.methods.method import Method
from patchwork.models.adapter import ModelAdapter
from patchwork.patching.patcher import Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import LogitLens

ANSWERS = ("audio", "visual")


def lens_distribution(
    adapter: ModelAdapter, residual: torch.Tensor, final_norm: bool = True
) -> torch.Tensor:
    """Next-token probabilities (positions, vocab) of residual vectors (positions, hidden): the
    final norm (optional) and the model's readout (:meth:`ModelAdapter.readout`, e.g. Gemma's
    final soft cap)."""
    hidden = residual
    if final_norm:
        hidden = adapter.root.get_submodule(adapter.final_norm_path)(hidden)
    return torch.softmax(adapter.readout(hidden).float(), dim=-1)


def rank_of(distribution: torch.Tensor, token: int) -> int:
    """How many tokens have a strictly higher probability than ``token`` (0 = top)."""
    return int((distribution > distribution[token]).sum())


class LogitLensMethod(Method):
    kind = "logit_lens"
    example = """\
  - kind: logit_lens
    run: conflict
    position_groups: [audio, answer]
"""
    spec: LogitLens

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.layers = self.resolve_layers(self.spec.layers)
        unembed = self.loaded.adapter.root.get_submodule(self.loaded.adapter.unembed_path)
        vocab = int(unembed.weight.shape[0])  # type: ignore[index]
        if self.spec.top_k > vocab:
            raise StudyError(
                f"{self.where('top_k')}: {self.spec.top_k} top tokens asked, the vocabulary has "
                f"{vocab}"
            )

    def runs(self) -> tuple[str, ...]:
        return (self.spec.run,)

    def variables(self) -> dict[str, ArraySpec]:
        coords: dict[str, list] = {
            "lens_layer": list(self.layers),
            "lens_group": list(self.spec.position_groups),
            "lens_answer": list(ANSWERS),
        }
        dims = ("sample", "lens_layer", "lens_group", "lens_answer")
        top_dims = ("sample", "lens_layer", "lens_group", "lens_k")
        top_coords = {**coords, "lens_k": list(range(self.spec.top_k))}
        del top_coords["lens_answer"]
        return {
            "lens_probability": ArraySpec(
                dims, coords, long_name="logit-lens probability of the answer word", units="1"
            ),
            "lens_rank": ArraySpec(
                dims, coords, long_name="logit-lens rank of the answer word (0 = top)", units="1"
            ),
            "lens_top_tokens": ArraySpec(
                top_dims, top_coords, dtype="int64", long_name="logit-lens top token ids"
            ),
        }

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        adapter = patcher.adapter
        device = next(adapter.root.parameters()).device
        spec = self.spec
        shape = (len(samples), len(self.layers), len(spec.position_groups))
        probability = np.full((*shape, len(ANSWERS)), np.nan, dtype=np.float32)
        rank = np.full((*shape, len(ANSWERS)), np.nan, dtype=np.float32)
        top = np.zeros((*shape, spec.top_k), dtype=np.int64)
        sites = [(layer, "residual") for layer in self.layers]
        for row, sample in enumerate(samples):
            inputs = {key: value.to(device) for key, value in sample.runs[spec.run].items()}
            _, residuals = patcher.record(inputs, sites)
            groups = adapter.position_groups(inputs["input_ids"])
            answers = (sample.audio_answer_id, sample.visual_answer_id)
            for li, layer in enumerate(self.layers):
                with torch.no_grad():
                    per_position = lens_distribution(
                        adapter,
                        adapter.merge_streams(residuals[(layer, "residual")]),
                        spec.final_norm,
                    )
                for gi, group in enumerate(spec.position_groups):
                    mask = groups[group].to(per_position.device)
                    if not bool(mask.any()):
                        continue
                    distribution = per_position[mask].mean(0)
                    for ai, token in enumerate(answers):
                        probability[row, li, gi, ai] = float(distribution[token])
                        rank[row, li, gi, ai] = rank_of(distribution, token)
                    top[row, li, gi] = distribution.topk(spec.top_k).indices.cpu().numpy()
        return {"lens_probability": probability, "lens_rank": rank, "lens_top_tokens": top}
