"""Path patching as the literature defines it: a sender's source-run value reaching the answer only
through one receiving head's queries, keys or values (Wang et al. 2022, "Interpretability in the
Wild", arXiv 2211.00593; Goldowsky-Dill et al. 2023, arXiv 2304.05969).

The *source* run carries the signal (the study's ``from``, IOI's x_new); the *target* run is
patched (``into``, IOI's x_orig). ``G`` is the sender group's positions.

**Sender** — one component of decoder layer ``l`` takes its source value at ``G``:

- ``residual``: the residual stream after layer ``l`` (the whole stream, so senders of different
  ``l`` are nested: the one after layer 2 holds everything the one after layer 1 sent);
- ``mlp``: layer ``l``'s MLP output;
- ``head h``: query head ``h``'s output before the output projection (``o_proj``'s input).

**Freeze** — the *frozen run* is the target run with the sender patched and, in every layer after
it, these pinned to their target-run values:

- ``attention`` (IOI's definition): every attention head but the sender. Wang et al. pin all
  other heads to their x_orig activations and let the MLPs (and norms) be recomputed, so a path
  may run sender → MLPs → receiver: they take heads as the circuit's nodes and MLPs as part of
  the paths between them;
- ``attention+mlp``: the MLPs as well (patchwork's path patching before issue 27), so only the
  residual stream carries the change — on a Qwen decoder layer (x + attention + MLP) the
  receiver's input is exactly the target's plus the sender's change at ``G``.

**Receiver** — query head ``h'`` of a layer ``l' > l`` reads its queries, keys or values as
computed in the frozen run (the projection's output, before any q/k norm and rotary embedding,
which the model applies itself), its other two inputs the target run's; under grouped-query
attention the other query heads that share its key/value head keep the target's. The answer is
read from the target run with only ``h'``'s output replaced by what it computes so; everything
after it is recomputed (IOI's last step).

One sample costs one recorded run of source and target, one batched frozen run per (sender,
receiver input) — in which every projection but the receiving one is held at the target's, so
``o_proj``'s input at each later layer holds every receiving head's output at once — and one
batched patched run per path. All edits are plain forward hooks on the modules a family's adapter
names: the attention module (its output frozen), its ``q_proj``/``k_proj``/``v_proj``/``o_proj``
(linear), the MLP and the residual site. A family whose layers reuse the keys and values of an
earlier layer (Gemma 3n's KV sharing) declares it in its adapter (``shares_key_values``); such a
layer's heads read the keys and values that the earlier layer computed in the frozen run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.errors import ModelError
from patchwork.models.adapter import ModelAdapter
from patchwork.patching.heads import head_count, output_projection, with_head_edits

SenderComponent = Literal["residual", "mlp", "head"]
ReceiverInput = Literal["queries", "keys", "values"]
Freeze = Literal["attention", "attention+mlp"]

#: The attention projection whose output is each receiver input.
PROJECTIONS: dict[str, str] = {"queries": "q_proj", "keys": "k_proj", "values": "v_proj"}

#: (component, layer) → one run's tensor: 'residual' as the adapter's site holds it (seq, hidden;
#: Gemma 3n: streams, seq, hidden), 'attention' and 'mlp' (seq, hidden), 'heads' (seq, heads,
#: head_dim), 'queries' / 'keys' / 'values' (seq, projection width).
Recorded = dict[tuple[str, int], torch.Tensor]


@dataclass(frozen=True)
class Sender:
    """One sender: ``component`` of decoder layer ``layer`` (``head``: which query head)."""

    component: SenderComponent
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        """Its coordinate along the stored ``sender`` dimension: 'residual', 'mlp', 'head 3'."""
        return f"head {self.head}" if self.component == "head" else self.component


@dataclass(frozen=True)
class FrozenRow:
    """One row of a frozen run: ``sender`` patched, ``receiver_input`` read by the later heads."""

    sender: Sender
    receiver_input: ReceiverInput


def _shares_key_values(adapter: ModelAdapter, layer: int) -> bool:
    # Declared by the families that have it (Gemma 3n); the others compute their own.
    shares = getattr(adapter, "shares_key_values", None)
    return bool(shares(layer)) if shares is not None else False


def projections(adapter: ModelAdapter, layer: int) -> dict[str, nn.Linear]:
    """The linear projections of layer ``layer``'s attention by the receiver input they compute;
    keys and values are left out where the layer reuses an earlier layer's. ModelError naming
    what is missing otherwise."""
    attention = adapter.component(adapter.root, layer, "attention")
    found = {}
    for receiver, name in PROJECTIONS.items():
        if receiver != "queries" and _shares_key_values(adapter, layer):
            continue
        module = getattr(attention, name, None)
        if not isinstance(module, nn.Linear):
            raise ModelError(
                f"the {adapter.family} adapter's attention ({adapter.attention_name}) at layer "
                f"{layer} has no linear {name}; path patching reads a receiving head's {receiver} "
                "at its output"
            )
        found[receiver] = module
    return found


def check_structure(adapter: ModelAdapter, layers: Iterable[int]) -> None:
    """ModelError naming the first module path patching needs and ``layers`` lack: the attention
    projections, the output projection (heads' outputs) and the MLP."""
    for layer in sorted(set(layers)):
        projections(adapter, layer)
        output_projection(adapter, layer)
        try:
            adapter.component(adapter.root, layer, "mlp")
        except AttributeError:
            raise ModelError(
                f"the {adapter.family} adapter's decoder layer {layer} has no MLP module "
                f"{adapter.mlp_name!r}; path patching recomputes or freezes it"
            ) from None


def _tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def _hook(module: nn.Module, where: str, edit: Callable[[torch.Tensor], torch.Tensor | None]):
    """A hook passing ``module``'s output (``where='output'``) or first input (``'input'``,
    positional or ``hidden_states``) through ``edit``; None from ``edit`` keeps it."""
    if where == "output":

        def after(module: nn.Module, args: tuple, output: Any) -> Any:
            edited = edit(_tensor(output))
            if edited is None:
                return None
            return (edited, *output[1:]) if isinstance(output, tuple) else edited

        return module.register_forward_hook(after)

    def before(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        edited = edit(args[0] if args else kwargs["hidden_states"])
        if edited is None:
            return None
        if args:
            return (edited, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edited}

    return module.register_forward_pre_hook(before, with_kwargs=True)


def record(
    adapter: ModelAdapter, inputs: ModelInputs, sites: Iterable[tuple[str, int]]
) -> tuple[torch.Tensor, Recorded]:
    """One run of ``inputs``: answer logits (1, vocab) and its tensors at ``sites`` (component,
    layer), as :data:`Recorded` describes them."""
    heads = head_count(adapter)
    saved: Recorded = {}

    def keep(key: tuple[str, int], axis: int = 0) -> Callable[[torch.Tensor], None]:
        def edit(tensor: torch.Tensor) -> None:
            value = tensor.select(axis, 0).detach().clone()
            if key[0] == "heads":
                value = value.reshape(*value.shape[:-1], heads, -1)
            saved[key] = value

        return edit

    with ExitStack() as stack, torch.no_grad():
        for component, layer in set(sites):
            if component == "residual":
                module, where = adapter.site(adapter.root, layer, "residual")
                axis = adapter.batch_axis("residual")
            elif component == "heads":
                module, where, axis = output_projection(adapter, layer), "input", 0
            elif component in PROJECTIONS:
                module, where, axis = projections(adapter, layer)[component], "output", 0
            else:
                module, where, axis = adapter.component(adapter.root, layer, component), "output", 0
            stack.callback(_hook(module, where, keep((component, layer), axis)).remove)
        logits = adapter.root(**adapter.forward_kwargs(inputs)).logits
    return adapter.answer_logits(logits), saved


def _replace(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor | None = None,
    axis: int = 0,
) -> torch.Tensor:
    """``hidden`` (batch on ``axis``, …, seq, width) with ``value`` (one run's, no batch axis) in
    the rows ``rows`` (bool (batch,)), at ``positions`` only (bool (seq,)) where given."""
    moved = hidden.movedim(axis, 0)
    mask = rows.to(hidden.device).reshape(-1, *[1] * (moved.ndim - 1))
    if positions is not None:
        mask = mask & positions.to(hidden.device).reshape(-1, 1)
    replaced = torch.where(mask, value.to(hidden.dtype).unsqueeze(0), moved)
    return replaced.movedim(0, axis)


def _mask(flags: Sequence[bool]) -> torch.Tensor:
    return torch.tensor(list(flags), dtype=torch.bool)


def receiving_heads(
    adapter: ModelAdapter,
    target_inputs: ModelInputs,
    source: Recorded,
    target: Recorded,
    rows: Sequence[FrozenRow],
    positions: torch.Tensor,
    freeze: Freeze,
    receiver_layers: Iterable[int],
) -> list[dict[int, torch.Tensor]]:
    """One frozen run (the module's definition), one row per :class:`FrozenRow`: for each row,
    receiver layer (after its sender) → the outputs (seq, heads, head_dim) its query heads
    compute when their ``receiver_input`` is read from the frozen residual stream.

    ``source`` holds each sender's value ('residual', 'mlp' or 'heads' at its layer); ``target``
    the target run's 'attention' (and under ``attention+mlp`` 'mlp') of every layer from the
    first sender's on, and the receiver layers' projections. ``positions``: bool (seq,), the
    sender group.
    """
    receivers = set(receiver_layers)
    senders = [row.sender for row in rows]
    captured: list[dict[int, torch.Tensor]] = [{} for _ in rows]
    first = min(sender.layer for sender in senders)
    with ExitStack() as stack, torch.no_grad():
        for layer in range(first, max(receivers, default=first) + 1):
            after = _mask([layer > sender.layer for sender in senders])
            reading = after & _mask([layer in receivers] * len(rows))

            def sending(component: str, layer: int = layer) -> torch.Tensor:
                return _mask([s.layer == layer and s.component == component for s in senders])

            residual = sending("residual")
            if bool(residual.any()):
                module, where = adapter.site(adapter.root, layer, "residual")
                value, axis = source[("residual", layer)], adapter.batch_axis("residual")
                edit = _replacing([(residual, value, positions)], axis)
                stack.callback(_hook(module, where, edit).remove)
            sent = [(i, senders[i].head) for i in sending("head").nonzero().flatten().tolist()]
            if sent or bool(reading.any()):
                heads_edit = _heads_edit(adapter, layer, source, sent, positions, reading, captured)
                projection = output_projection(adapter, layer)
                stack.callback(_hook(projection, "input", heads_edit).remove)
            if bool(after.any()):  # every attention head after the sender's layer is pinned
                attention = adapter.component(adapter.root, layer, "attention")
                edit = _replacing([(after, target[("attention", layer)], None)])
                stack.callback(_hook(attention, "output", edit).remove)
            mlp_edits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
            mlp_sent = sending("mlp")
            if bool(mlp_sent.any()):
                mlp_edits.append((mlp_sent, source[("mlp", layer)], positions))
            if freeze == "attention+mlp":
                pinned = after | sending("head")
                if bool(pinned.any()):
                    mlp_edits.append((pinned, target[("mlp", layer)], None))
            if mlp_edits:
                mlp = adapter.component(adapter.root, layer, "mlp")
                stack.callback(_hook(mlp, "output", _replacing(mlp_edits)).remove)
            if bool(reading.any()):  # the projections other than a row's receiver input are held
                for receiver, module in projections(adapter, layer).items():
                    held = reading & _mask([row.receiver_input != receiver for row in rows])
                    if bool(held.any()):
                        edit = _replacing([(held, target[(receiver, layer)], None)])
                        stack.callback(_hook(module, "output", edit).remove)
        adapter.root(**adapter.forward_kwargs(adapter.repeat_inputs(target_inputs, len(rows))))
    return captured


def _replacing(
    edits: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], axis: int = 0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit applying :func:`_replace` for each (rows, value, positions) in turn."""

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        for rows, value, positions in edits:
            hidden = _replace(hidden, rows, value, positions, axis)
        return hidden

    return edit


def _heads_edit(
    adapter: ModelAdapter,
    layer: int,
    source: Recorded,
    sent: Sequence[tuple[int, int | None]],
    positions: torch.Tensor,
    reading: torch.Tensor,
    captured: list[dict[int, torch.Tensor]],
) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """The edit of layer ``layer``'s output-projection input (rows, seq, heads × head_dim): the
    sending heads (row, head) take the source's output at ``positions``; the rows in ``reading``
    keep every head's output (seq, heads, head_dim) in ``captured[row][layer]``."""
    heads = head_count(adapter)

    def edit(hidden: torch.Tensor) -> torch.Tensor | None:
        split = hidden.reshape(*hidden.shape[:-1], heads, -1)
        if sent:
            mask = torch.zeros(split.shape[0], split.shape[1], heads, 1, dtype=torch.bool)
            for row, head in sent:
                mask[row, :, head] = positions.cpu()[:, None]
            patch = source[("heads", layer)].to(hidden.dtype).unsqueeze(0)
            split = torch.where(mask.to(hidden.device), patch, split)
        for row in reading.nonzero().flatten().tolist():
            captured[row][layer] = split[row].detach().clone()
        return split.flatten(-2) if sent else None

    return edit


def patched_head_outputs(
    adapter: ModelAdapter, target: ModelInputs, rows: Sequence[tuple[int, int, torch.Tensor]]
) -> torch.Tensor:
    """Answer logits (len(rows), vocab) of the target run, each row with one head's output
    (layer, head, new output (seq, head_dim)) replaced at every position."""
    by_layer: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for row, (layer, head, output) in enumerate(rows):
        by_layer.setdefault(layer, []).append((row, head, output))

    def replace(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            for row, head, output in by_layer[layer]:
                hidden[row, :, head] = output.to(hidden.dtype)
            return hidden

        return edit

    return with_head_edits(
        adapter, target, len(rows), {layer: replace(layer) for layer in by_layer}
    )
