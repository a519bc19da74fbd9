"""Linear probes: stored pooled residual features, and a cross-validated probe over the store.

The study method stores, per sample, the residual stream (decoder layer output) mean-pooled over
each position group's positions: ``probe_features`` (sample, probe_layer, probe_group,
probe_hidden), in the model's hidden units. Features are per sample, so they fill the store unit
by unit like every other method. ``probe_logit_diff`` (sample,) stores the run's own answer
preference, logit(audio answer) − logit(visual answer), so probes can be restricted to samples the
model answers with the picture's sound (< 0). The probe itself needs all samples and runs
afterwards, as an analysis over the store
(:func:`patchwork.analysis.probes.probe_scores`; ``patchwork plot`` draws it).

Labels come from the store's per-sample coordinates: ``audio_answer`` names the true sound (for
"what do you hear" studies the sound word is the sound's category), ``visual_answer`` the
picture's. A shuffled-label probe (same folds, labels permuted) gives the chance baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from patchwork.data.sample import Sample
from patchwork.methods.method import Method
from patchwork.patching.patcher import Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import Probes


class ProbesMethod(Method):
    kind = "probes"
    example = """\
  - kind: probes
    run: conflict
    position_groups: [audio, answer]
"""
    spec: Probes

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.layers = self.resolve_layers(self.spec.layers)
        config = getattr(self.loaded.adapter.config, "text_config", self.loaded.adapter.config)
        self.hidden = int(config.hidden_size)

    def runs(self) -> tuple[str, ...]:
        return (self.spec.run,)

    def variables(self) -> dict[str, ArraySpec]:
        return {
            "probe_features": ArraySpec(
                ("sample", "probe_layer", "probe_group", "probe_hidden"),
                {
                    "probe_layer": list(self.layers),
                    "probe_group": list(self.spec.position_groups),
                    "probe_hidden": list(range(self.hidden)),
                },
                long_name="mean hidden state of the position group (probe features)",
            ),
            "probe_logit_diff": ArraySpec(
                ("sample",),
                long_name="logit difference, audio − visual answer, of the probed run",
                units="1",
            ),
        }

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        adapter = patcher.adapter
        device = next(adapter.root.parameters()).device
        groups_wanted = self.spec.position_groups
        features = np.full(
            (len(samples), len(self.layers), len(groups_wanted), self.hidden),
            np.nan,
            dtype=np.float32,
        )
        logit_diff = np.full(len(samples), np.nan, dtype=np.float32)
        sites = [(layer, "residual") for layer in self.layers]
        for row, sample in enumerate(samples):
            inputs = {key: value.to(device) for key, value in sample.runs[self.spec.run].items()}
            answer_logits, residuals = patcher.record(inputs, sites)
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            logit_diff[row] = float(answer_logits[0, ids[0]] - answer_logits[0, ids[1]])
            groups = adapter.position_groups(inputs["input_ids"])
            for li, layer in enumerate(self.layers):
                stream = adapter.merge_streams(residuals[(layer, "residual")]).detach().float()
                for gi, group in enumerate(groups_wanted):
                    mask = groups[group].to(stream.device)
                    if bool(mask.any()):
                        features[row, li, gi] = stream[mask].mean(0).cpu().numpy()
        return {"probe_features": features, "probe_logit_diff": logit_diff}
