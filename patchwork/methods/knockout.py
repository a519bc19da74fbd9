"""Attention knockout as a study method: rules ``(query groups, key groups, layers)`` block
attention edges, and the answer's metrics are compared with the unblocked run.

A rule without ``window`` is one knockout (all its layers blocked together); with ``window: k`` it
is a sweep, one knockout per first layer ``l`` in its ``layers`` blocking ``l … l+k−1`` (clipped
at the last layer; layers are inclusive). Every knockout is one row of a batched forward: a
pre-hook on each decoder layer's attention replaces the attention mask by one with that row's
blocked pairs removed, through :func:`patchwork.models.blocks.mask_with_blocks` (sdpa's ``None``
mask becomes a full causal one; eager's shared additive mask is never edited in place). Hooks
stack on top of planted windows.

Position groups are one vocabulary on every path (:mod:`patchwork.models.blocks`): ``answer`` is
the last prompt position — the query whose logits give the first generated token — ``text`` the
other non-placeholder prompt positions, ``generated`` the tokens generated after the prompt. A
rule blocks a query from itself unless it says ``self: keep``; a query left without keys keeps
itself. ``decode_tokens: N`` generates N tokens greedily with the knockout active (each step a
full forward over the prompt and the tokens so far, which equals cached decoding —
:func:`generate_with_knockout`, tested; media placeholders and delimiters are never chosen); the
metrics are those of the first token's logits.

Stored (``knockout`` = ``"<rule>@<first>-<last>"`` labels, runs of layers joined by commas):

- ``knockout_effect`` (sample, knockout, metric): the metrics of the knocked-out run; its
  ``normalized_effect`` is (knocked − run) / (reference − run) of the logit difference;
- ``knockout_baseline`` (sample, knockout_run, metric): the run and the reference, unblocked;
- ``knockout_token`` (sample, knockout, step) int64: the greedy tokens generated under knockout.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from patchwork.data.sample import ModelInputs, Sample
from patchwork.errors import DataError, StudyError
from patchwork.methods.method import Cost, Method
from patchwork.models import blocks
from patchwork.models.adapter import ModelAdapter
from patchwork.models.blocks import with_blocked_mask
from patchwork.patching.batches import Batches
from patchwork.patching.heads import head_count
from patchwork.patching.metrics import answer_metrics, baseline_rows, metric_rows
from patchwork.patching.patcher import Patcher
from patchwork.store.zarr_store import ArraySpec
from patchwork.study.entries import AttentionKnockout
from patchwork.study.specs import METRICS


@dataclass(frozen=True)
class Knockout:
    """One knockout: queries in ``queries`` lose keys in ``keys`` in every layer of ``layers``."""

    rule: str
    queries: tuple[str, ...]
    keys: tuple[str, ...]
    layers: tuple[int, ...]
    keep_self: bool = False
    #: The query heads blocked; None: all of them.
    heads: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        """``rule@first-last``; layer runs joined by commas when not contiguous (``r@0-3,6-7``);
        ``#h`` and the heads when only some are blocked (``r@4-5#h1,3``)."""
        runs: list[list[int]] = []
        for layer in self.layers:
            if runs and layer == runs[-1][1] + 1:
                runs[-1][1] = layer
            else:
                runs.append([layer, layer])
        label = f"{self.rule}@" + ",".join(f"{first}-{last}" for first, last in runs)
        if self.heads is not None:
            label += "#h" + ",".join(str(head) for head in self.heads)
        return label


def knockouts(
    spec: AttentionKnockout, resolve_layers, num_layers: int, num_heads: int | None = None
) -> list[Knockout]:
    """Every knockout of ``spec``'s rules; ``resolve_layers(layers, field)`` checks layer lists.
    ``num_heads`` (query heads per layer) is needed by rules that name heads."""
    found = []
    for name, rule in spec.rules.items():
        layers = resolve_layers(rule.layers, ("rules", name, "layers"))
        keep = rule.self_pairs == "keep"
        spans = (
            [layers]
            if rule.window is None
            else [tuple(range(first, min(first + rule.window, num_layers))) for first in layers]
        )
        head_sets: list[tuple[int, ...] | None] = [None]
        if rule.heads == "each":
            head_sets = [(head,) for head in range(num_heads or 0)]
        elif rule.heads != "all":
            head_sets = [tuple(rule.heads)]
        for span in spans:
            for heads in head_sets:
                found.append(Knockout(name, rule.queries, rule.keys, span, keep, heads))
    return found


def blocked_pairs(
    rows: Sequence[Knockout],
    groups: Mapping[str, torch.Tensor],
    num_layers: int,
    num_heads: int | None = None,
) -> dict[int, torch.Tensor]:
    """Per layer with any block: bool (rows, seq, seq), True where query → key is blocked, or
    (rows, heads, seq, seq) when a row of the batch blocks some heads only (``num_heads``: query
    heads per layer).

    ``groups`` are (seq,) masks of one sequence (:func:`sequence_groups`). The diagonal is blocked
    only for knockouts that do not keep themselves (a query left without keys keeps itself when
    the mask is built: :func:`patchwork.models.blocks.mask_with_blocks`).
    """
    seq = next(iter(groups.values())).numel()
    per_head = any(knockout.heads is not None for knockout in rows)
    if per_head and num_heads is None:
        raise ValueError("knockouts of some heads need num_heads")
    shape = (len(rows), num_heads or 0, seq, seq) if per_head else (len(rows), seq, seq)
    blocked: dict[int, torch.Tensor] = {}
    for row, knockout in enumerate(rows):
        queries = torch.zeros(seq, dtype=torch.bool)
        keys = torch.zeros(seq, dtype=torch.bool)
        for group in knockout.queries:
            queries |= groups[group]
        for group in knockout.keys:
            keys |= groups[group]
        pairs = queries[:, None] & keys[None, :]
        if knockout.keep_self:
            pairs &= ~torch.eye(seq, dtype=torch.bool)
        for layer in knockout.layers:
            if layer not in blocked:
                blocked[layer] = torch.zeros(shape, dtype=torch.bool)
            if not per_head:
                blocked[layer][row] |= pairs
            elif knockout.heads is None:
                blocked[layer][row] |= pairs[None]
            else:
                blocked[layer][row, list(knockout.heads)] |= pairs[None]
    return {layer: mask for layer, mask in blocked.items() if layer < num_layers}


@contextmanager
def blocking(adapter: ModelAdapter, blocked: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Apply ``blocked`` (layer → (rows, seq, seq)) to every forward inside the block."""
    handles = []

    def hook_for(layer_blocks: torch.Tensor):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            return args, with_blocked_mask(module, kwargs, layer_blocks, hidden)

        return hook

    try:
        for layer, layer_blocks in blocked.items():
            module = adapter.component(adapter.root, layer, "attention")
            handles.append(
                module.register_forward_pre_hook(hook_for(layer_blocks), with_kwargs=True)
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def sequence_groups(
    adapter: ModelAdapter, prompt_ids: torch.Tensor, generated: int = 0
) -> dict[str, torch.Tensor]:
    """(seq,) masks of the prompt's position groups and of ``generated`` tokens after it."""
    groups = {
        name: torch.cat([mask.reshape(-1), torch.zeros(generated, dtype=torch.bool)])
        for name, mask in adapter.position_groups(prompt_ids).items()
    }
    seq = prompt_ids.shape[-1] + generated
    groups["generated"] = torch.arange(seq) >= prompt_ids.shape[-1]
    groups["all"] = torch.ones(seq, dtype=torch.bool)
    return groups


def knocked_out_logits(
    adapter: ModelAdapter,
    inputs: ModelInputs,
    rows: Sequence[Knockout],
    generated: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (len(rows), vocab) at the last position of one run, one knockout per batch row:
    the answer logits, or with ``generated`` tokens (rows, steps) appended to each row's prompt,
    the logits predicting the next one."""
    steps = 0 if generated is None else generated.shape[1]
    groups = sequence_groups(adapter, inputs["input_ids"], steps)
    heads = head_count(adapter) if any(row.heads is not None for row in rows) else None
    blocked = blocked_pairs(rows, groups, adapter.num_layers, heads)
    batch = adapter.repeat_inputs(inputs, len(rows))
    if generated is not None and steps:
        batch["input_ids"] = torch.cat([batch["input_ids"], generated.to(batch["input_ids"])], 1)
        if "attention_mask" in batch:
            ones = torch.ones_like(generated, dtype=batch["attention_mask"].dtype)
            batch["attention_mask"] = torch.cat([batch["attention_mask"], ones], 1)
    with torch.no_grad(), blocking(adapter, blocked):
        logits = adapter.root(**adapter.forward_kwargs(batch)).logits
    return logits[:, -1, :] if steps else adapter.answer_logits(logits)


def generate_with_knockout(
    model: torch.nn.Module,
    inputs: ModelInputs,
    rules: Sequence[Knockout],
    max_new_tokens: int = 2,
    **generate_options: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy generation (Qwen2.5-Omni thinkers) with ``rules`` active in prefill and decoding
    with a KV cache.

    Groups are read from the token ids on every step (:mod:`patchwork.models.blocks`): ``answer``
    is the last prompt position, ``generated`` each token after the prompt. Returns the
    generated ids (1, max_new_tokens) and each step's logits (max_new_tokens, vocab).
    """
    block_rules = [
        blocks.BlockRule(query, key, knockout.layers, knockout.keep_self)
        for knockout in rules
        for query in knockout.queries
        for key in knockout.keys
    ]
    hooks = blocks.install(model, block_rules, blocks.modality_token_ids(model.config))
    try:
        with torch.no_grad():
            out = model.generate(  # type: ignore[operator]
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_logits=True,
                **generate_options,
            )
    finally:
        hooks.remove()
    generated = out.sequences[:, inputs["input_ids"].shape[1] :]
    return generated, torch.cat([step[:1] for step in out.logits])


def _greedy(logits: torch.Tensor, banned: Sequence[int]) -> torch.Tensor:
    """The top token of each row (rows, 1), never a media placeholder or delimiter (``banned``):
    fed back, one would claim media features the run does not have."""
    allowed = logits.clone()
    allowed[:, list(banned)] = float("-inf")
    return allowed.argmax(-1, keepdim=True)


class AttentionKnockoutMethod(Method):
    kind = "attention_knockout"
    example = """\
  - kind: attention_knockout
    run: conflict
    reference: clean
    rules:
      video_block: {queries: [answer, text], keys: [video], layers: 1-2}
      audio_sweep: {queries: [answer], keys: [audio], window: 2}
"""
    spec: AttentionKnockout

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        depth = self.loaded.adapter.num_layers
        for name, rule in self.spec.rules.items():
            if rule.window is not None and rule.window > depth:
                raise StudyError(
                    f"{self.where('rules', name, 'window')}: window {rule.window} is longer "
                    f"than the model's {depth} layers"
                )
        named = any(rule.heads != "all" for rule in self.spec.rules.values())
        count = head_count(self.loaded.adapter) if named else 0
        for name, rule in self.spec.rules.items():
            listed = rule.heads if isinstance(rule.heads, tuple) else ()
            outside = [head for head in listed if head >= count]
            if outside:
                raise StudyError(
                    f"{self.where('rules', name, 'heads')}: head {outside[0]} is out of range; "
                    f"the model has {count} query heads per layer (0–{count - 1})"
                )
        self.knockouts = knockouts(self.spec, self.resolve_layers, depth, count)
        labels = [k.label for k in self.knockouts]
        if len(set(labels)) != len(labels):
            raise StudyError(f"{self.where('rules')}: two rules give the same knockout label")

    def runs(self) -> tuple[str, ...]:
        return (self.spec.run, self.spec.reference)

    def check_sample(self, sample: Sample) -> None:
        groups = self.loaded.adapter.position_groups(sample.runs[self.spec.run]["input_ids"])
        for knockout in self.knockouts:
            for group in (*knockout.queries, *knockout.keys):
                if group != "generated" and not bool(groups[group].any()):
                    raise DataError(
                        f"sample {sample.sample_id}: knockout rule {knockout.rule!r} names "
                        f"position group {group!r}, which has no positions in this sample"
                    )

    def cost(self, sample: Sample) -> Cost:
        """The run and its reference, and one run per knockout changed from its first layer at
        every position."""
        cells = tuple((min(knockout.layers), 0) for knockout in self.knockouts)
        return Cost(run=self.spec.run, baselines=2, cells=cells)

    def variables(self) -> dict[str, ArraySpec]:
        labels = [k.label for k in self.knockouts]
        return {
            "knockout_effect": ArraySpec(
                ("sample", "knockout", "metric"),
                {"knockout": labels, "metric": list(METRICS)},
                long_name="answer metric with attention blocked by the knockout rule",
                units="1",
            ),
            "knockout_baseline": ArraySpec(
                ("sample", "knockout_run", "metric"),
                {"knockout_run": list(self.runs()), "metric": list(METRICS)},
                long_name="answer metric of each run without knockout",
                units="1",
            ),
            "knockout_token": ArraySpec(
                ("sample", "knockout", "step"),
                {"knockout": labels, "step": list(range(self.spec.decode_tokens))},
                dtype="int64",
                long_name="greedy tokens generated under the knockout",
            ),
        }

    def compute(self, samples: Sequence[Sample], patcher: Patcher) -> dict[str, np.ndarray]:
        adapter = patcher.adapter
        device = next(adapter.root.parameters()).device
        n = len(samples)
        effect = np.full((n, len(self.knockouts), len(METRICS)), np.nan, dtype=np.float32)
        baseline = np.full((n, 2, len(METRICS)), np.nan, dtype=np.float32)
        steps = self.spec.decode_tokens
        banned = adapter.media_token_ids()
        tokens = np.zeros((n, len(self.knockouts), steps), dtype=np.int64)
        batches = Batches(self.study.execution.batch_size)
        for row, sample in enumerate(samples):
            run, reference = (
                {key: value.to(device) for key, value in sample.runs[name].items()}
                for name in self.runs()
            )
            ids = (sample.audio_answer_id, sample.visual_answer_id)
            with torch.no_grad():
                plain = [
                    adapter.answer_logits(adapter.root(**adapter.forward_kwargs(r)).logits)
                    for r in (run, reference)
                ]
            run_m, ref_m = (answer_metrics(logits, *ids) for logits in plain)
            baseline[row] = baseline_rows(ref_m, run_m)[::-1]  # (run, reference)

            def knocked_out(chunk: Sequence[Knockout], run: Any = run) -> tuple[Any, Any]:
                """The answer logits and the greedy continuation with each knockout."""
                logits = knocked_out_logits(adapter, run, chunk)
                generated = _greedy(logits, banned)
                for _ in range(1, steps):
                    following = knocked_out_logits(adapter, run, chunk, generated)
                    generated = torch.cat([generated, _greedy(following, banned)], 1)
                return logits, generated

            first = 0
            for chunk, (logits, generated) in batches.run(self.knockouts, knocked_out):
                knocked = answer_metrics(logits, *ids)
                effect[row, first : first + len(chunk)] = metric_rows(knocked, ref_m, run_m)
                tokens[row, first : first + len(chunk)] = generated.cpu().numpy()
                first += len(chunk)
        return {"knockout_effect": effect, "knockout_baseline": baseline, "knockout_token": tokens}
