"""Base-model comparison as a study method: how far audio-visual tuning moved the next-token
distributions, position by position.

Both models (the study's and its ``base``, e.g. the testbed's stage-1 checkpoint) read the same
run. At every position, ``KL(model ‖ base)`` of their next-token distributions (nats) and whether
their top tokens differ are computed, then averaged over each position group's positions:

- ``base_kl`` (sample, base_run, base_group): mean KL divergence in nats;
- ``base_top_changed`` (sample, base_run, base_group): share of positions whose top token changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from patchwork.data.sample import ModelInputs, Sample
from patchwork.errors import StudyError
from patchwork.loading.model import LoadedModel, load_model
from patchwork.methods.method import Method
from patchwork.patching.patcher import Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import BaseComparison


def next_token_log_probs(loaded_root: torch.nn.Module, forward: dict) -> torch.Tensor:
    """Log-probabilities (seq, vocab) of a one-sample forward, in float32."""
    with torch.no_grad():
        logits = loaded_root(**forward).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def divergence(model_log_probs: torch.Tensor, base_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-position KL(model ‖ base) in nats: (seq,) from two (seq, vocab) log-probabilities."""
    return (model_log_probs.exp() * (model_log_probs - base_log_probs)).sum(-1)


class BaseComparisonMethod(Method):
    kind = "base_comparison"
    example = """\
  - kind: base_comparison
    base: {random_init: {layers: 3, hidden_size: 32, heads: 2, kv_heads: 1, seed: 7}}
    runs: [clean, conflict]
    position_groups: [all, answer]
"""
    spec: BaseComparison

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        model = self.study.model
        base_spec = self.spec.base.model_copy(
            update={"dtype": model.dtype, "device": model.device, "attention": model.attention}
        )
        self.base: LoadedModel = load_model(
            base_spec, self.where("base"), weights=self.loaded.has_weights
        )
        vocab = _vocab_size(self.loaded.model)
        if _vocab_size(self.base.model) != vocab:
            raise StudyError(
                f"{self.where('base')}: the base model's vocabulary has "
                f"{_vocab_size(self.base.model)} tokens, the model's {vocab}; next-token "
                "distributions can only be compared over the same vocabulary"
            )

    def runs(self) -> tuple[str, ...]:
        return tuple(self.spec.runs)

    def variables(self) -> dict[str, ArraySpec]:
        coords: dict[str, list] = {
            "base_run": list(self.spec.runs),
            "base_group": list(self.spec.position_groups),
        }
        dims = ("sample", "base_run", "base_group")
        return {
            "base_kl": ArraySpec(
                dims,
                coords,
                long_name="KL divergence of the next-token distribution from the base model's",
                units="nats",
            ),
            "base_top_changed": ArraySpec(
                dims,
                coords,
                long_name="fraction of positions whose top next token differs from the base's",
                units="1",
            ),
        }

    def compare(self, patcher: Patcher, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position KL (seq,) nats and top-token change (seq,) bool for one run."""
        adapter = patcher.adapter
        model_lp = next_token_log_probs(adapter.root, adapter.forward_kwargs(inputs))
        base_device = next(self.base.adapter.root.parameters()).device
        base_inputs = {key: value.to(base_device) for key, value in inputs.items()}
        base_lp = next_token_log_probs(
            self.base.adapter.root, self.base.adapter.forward_kwargs(base_inputs)
        ).to(model_lp.device)
        changed = model_lp.argmax(-1) != base_lp.argmax(-1)
        return divergence(model_lp, base_lp), changed

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        adapter = patcher.adapter
        device = next(adapter.root.parameters()).device
        spec = self.spec
        shape = (len(samples), len(spec.runs), len(spec.position_groups))
        kl = np.full(shape, np.nan, dtype=np.float32)
        changed = np.full(shape, np.nan, dtype=np.float32)
        for row, sample in enumerate(samples):
            for ri, run in enumerate(spec.runs):
                inputs = {key: value.to(device) for key, value in sample.runs[run].items()}
                per_position, top_changed = self.compare(patcher, inputs)
                groups = adapter.position_groups(inputs["input_ids"])
                for gi, group in enumerate(spec.position_groups):
                    mask = groups[group].to(per_position.device)
                    if bool(mask.any()):
                        kl[row, ri, gi] = float(per_position[mask].mean())
                        changed[row, ri, gi] = float(top_changed[mask].float().mean())
        return {"base_kl": kl, "base_top_changed": changed}


def _vocab_size(model: torch.nn.Module) -> int:
    embeddings: Any = model.get_output_embeddings()  # type: ignore[operator]
    return int(embeddings.weight.shape[0])
