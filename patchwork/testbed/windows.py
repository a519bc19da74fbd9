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

#: One inclusive (first, last) layer span, or several (separated windows).
Spans = tuple[int, int] | tuple[tuple[int, int], ...]


def spans_of(access: Any) -> tuple[tuple[int, int], ...]:
    """A window as a tuple of inclusive (first, last) spans: None → (), one span (as a
    checkpoint's json or :class:`~patchwork.testbed.train.TrainConfig` writes it, ``[4, 5]``) →
    ((4, 5),), several (``[[1, 1], [5, 6]]``) → themselves."""
    if access is None or len(access) == 0:
        return ()
    if isinstance(access[0], int):
        return ((int(access[0]), int(access[1])),)
    return tuple((int(first), int(last)) for first, last in access)


def in_spans(layer: int, access: Any) -> bool:
    """Whether ``layer`` lies in one of the window's spans (:func:`spans_of`)."""
    return any(first <= layer <= last for first, last in spans_of(access))


def parse_layer_span(text: str | None, num_layers: int, option: str) -> Spans | None:
    """``"A:B"`` or ``"A-B"`` (as study files write ranges) → (A, B), both inclusive, checked
    against ``num_layers``; several, comma-separated and apart (``"1:1,5:6"``) → ((1, 1), (5, 6));
    None passes through."""
    from patchwork.errors import PatchworkError
    from patchwork.study.specs import parse_range

    if text is None or text == "":
        return None
    spans = []
    for item in str(text).split(","):
        span = parse_range(item.strip())
        if span is None:
            raise PatchworkError(
                f"{option}: expected FIRST:LAST layer indices (or several, comma-separated), "
                f"got {text!r}"
            )
        first, last = span
        if not 0 <= first <= last < num_layers:
            raise PatchworkError(
                f"{option}: need 0 <= FIRST <= LAST < {num_layers} (inclusive layers), got {text!r}"
            )
        spans.append((first, last))
    spans.sort()
    if any(later[0] <= earlier[1] + 1 for earlier, later in zip(spans, spans[1:], strict=False)):
        raise PatchworkError(f"{option}: spans must be apart (a gap between them), got {text!r}")
    return spans[0] if len(spans) == 1 else tuple(spans)


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
    video_access: Spans | None = None,
    audio_access: Spans | None = None,
) -> tuple[BlockRule, ...]:
    """Rules that let text positions read video only in ``video_access`` (an inclusive span, or
    several: :func:`spans_of`) and audio only in ``audio_access``.

    Every non-modality position is restricted — text, the answer position and generated tokens
    (marker tokens would leak otherwise) — and video tokens never read audio, nor audio tokens
    video (either would carry its medium past the other's window: where the soundtrack is
    interleaved with the frames, audio follows video; elsewhere the causal mask already has it).
    """
    rules: list[BlockRule] = []
    for keys, access in (("video", video_access), ("audio", audio_access)):
        if access is None:
            continue
        outside = tuple(layer for layer in range(num_layers) if not in_spans(layer, access))
        if outside:
            rules += [BlockRule(queries, keys, outside) for queries in NON_MODALITY]
    if audio_access is not None:
        rules.append(BlockRule("video", "audio", tuple(range(num_layers))))
    if video_access is not None:
        rules.append(BlockRule("audio", "video", tuple(range(num_layers))))
    return tuple(rules)


def rules_from_meta(
    meta: Mapping[str, Any] | None, num_layers: int, num_heads: int
) -> tuple[BlockRule, ...]:
    """The planted windows a checkpoint's json declares (``video_access_layers``,
    ``audio_access_layers``, ``video_access_heads``)."""
    if not meta:
        return ()
    spans = {
        key: spans_of(meta[key]) if meta.get(key) is not None else None
        for key in ("video_access_layers", "audio_access_layers")
    }
    rules = planted_windows(num_layers, spans["video_access_layers"], spans["audio_access_layers"])
    if meta.get("video_access_heads"):
        heads = tuple((int(layer), int(head)) for layer, head in meta["video_access_heads"])
        rules += planted_heads(num_layers, num_heads, heads)
    return rules
