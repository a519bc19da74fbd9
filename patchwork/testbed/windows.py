"""The testbed's planted access windows: layers outside which text positions may not read video
(or audio), as :class:`~patchwork.models.blocks.BlockRule` s, and the ``FIRST:LAST`` spans that
name them on the command line and in a checkpoint's json."""

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
    from patchwork.study.schema import parse_range

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


def rules_from_meta(meta: Mapping[str, Any] | None, num_layers: int) -> tuple[BlockRule, ...]:
    """The planted windows a checkpoint's json declares (``video_access_layers`` etc.)."""
    if not meta:
        return ()
    spans = {
        key: tuple(meta[key]) if meta.get(key) is not None else None
        for key in ("video_access_layers", "audio_access_layers")
    }
    return planted_windows(num_layers, spans["video_access_layers"], spans["audio_access_layers"])
