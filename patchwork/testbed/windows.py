"""The testbed's planted access windows: layers outside which text positions may not read video
(or audio), or the attention heads through which alone the answer reads video, as
:class:`~patchwork.models.blocks.BlockRule` s, and the ``FIRST:LAST`` spans and ``LAYER:HEAD``
lists that name them on the command line and in a checkpoint's json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from patchwork.models.blocks import BlockRule

#: The groups of every position that is not a media placeholder.
NON_MODALITY = ("text", "answer", "generated")


def parse_layer_span(text: str | None, num_layers: int, option: str) -> tuple[int, int] | None:
    """``"A:B"`` or ``"A-B"`` (as study files write ranges) → (A, B), both inclusive, checked
    against ``num_layers``; None passes through."""
    from patchwork.errors import PatchworkError
    from patchwork.study.specs import parse_range

    if text is None or text == "":
        return None
    span = parse_range(str(text))
    if span is None:
        raise PatchworkError(f"{option}: expected FIRST:LAST layer indices, got {text!r}")
    first, last = span
    if not 0 <= first <= last < num_layers:
        raise PatchworkError(
            f"{option}: need 0 <= FIRST <= LAST < {num_layers} (inclusive layers), got {text!r}"
        )
    return first, last


def parse_heads(
    text: str | None, num_layers: int, num_heads: int, option: str
) -> tuple[tuple[int, int], ...] | None:
    """``"4:1,4:3"`` → ((4, 1), (4, 3)): (layer, query head) pairs, checked against the model's
    ``num_layers`` and ``num_heads``; None passes through."""
    from patchwork.errors import PatchworkError

    if text is None or text == "":
        return None
    pairs = []
    for item in str(text).split(","):
        layer, _, head = item.strip().partition(":")
        if not all(part.isascii() and part.isdigit() and len(part) < 10 for part in (layer, head)):
            raise PatchworkError(f"{option}: expected LAYER:HEAD,LAYER:HEAD,..., got {text!r}")
        pair = int(layer), int(head)
        if not (pair[0] < num_layers and pair[1] < num_heads):
            raise PatchworkError(
                f"{option}: {item.strip()} is outside the model ({num_layers} layers, "
                f"{num_heads} query heads per layer; both count from 0)"
            )
        pairs.append(pair)
    return tuple(sorted(set(pairs)))


def planted_heads(
    num_layers: int, num_heads: int, heads: tuple[tuple[int, int], ...]
) -> tuple[BlockRule, ...]:
    """Rules that let the answer position (and generated tokens) read video only through the
    (layer, query head) pairs ``heads``, and keep every other non-modality position (markers,
    question words) from reading video at all: the picture reaches the answer through those heads
    and no other route, so no later head can relay it from elsewhere."""
    rules = [BlockRule("text", "video", tuple(range(num_layers)))]
    for layer in range(num_layers):
        others = tuple(h for h in range(num_heads) if (layer, h) not in heads)
        if others:
            rules += [
                BlockRule(queries, "video", (layer,), heads=others)
                for queries in ("answer", "generated")
            ]
    return tuple(rules)


def planted_windows(
    num_layers: int,
    video_access: tuple[int, int] | None = None,
    audio_access: tuple[int, int] | None = None,
) -> tuple[BlockRule, ...]:
    """Rules that let text positions read video only in ``video_access`` (inclusive span) and audio
    only in ``audio_access``.

    Every non-modality position is restricted — text, the answer position and generated tokens
    (marker tokens would leak otherwise) — and video tokens never read audio (they would carry it
    past the audio window).
    """
    rules: list[BlockRule] = []
    for keys, span in (("video", video_access), ("audio", audio_access)):
        if span is None:
            continue
        outside = tuple(layer for layer in range(num_layers) if not span[0] <= layer <= span[1])
        if outside:
            rules += [BlockRule(queries, keys, outside) for queries in NON_MODALITY]
    if audio_access is not None:
        rules.append(BlockRule("video", "audio", tuple(range(num_layers))))
    return tuple(rules)


def rules_from_meta(
    meta: Mapping[str, Any] | None, num_layers: int, num_heads: int
) -> tuple[BlockRule, ...]:
    """The planted windows a checkpoint's json declares (``video_access_layers``,
    ``audio_access_layers``, ``video_access_heads``)."""
    if not meta:
        return ()
    spans = {
        key: tuple(meta[key]) if meta.get(key) is not None else None
        for key in ("video_access_layers", "audio_access_layers")
    }
    rules = planted_windows(num_layers, spans["video_access_layers"], spans["audio_access_layers"])
    if meta.get("video_access_heads"):
        heads = tuple((int(layer), int(head)) for layer, head in meta["video_access_heads"])
        rules += planted_heads(num_layers, num_heads, heads)
    return rules
