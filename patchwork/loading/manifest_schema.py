"""What a manifest row may hold, declared once for JSONL and CSV: :class:`ManifestRow`.

A row is one sample: its ``id``, the two answer words, an optional ``question`` and its ``runs``
(run name → :class:`ManifestRun`, the media fields that :func:`patchwork.data.containers.run_media`
decodes). Every text field must be text, every number a number within its bounds, every flag
``true`` or ``false``; unknown fields are refused with the field they were probably meant to be.
:mod:`patchwork.loading.manifest_files` reads JSONL lines and CSV rows into this one schema, and
:func:`describe` says what went wrong in the words a manifest's author reads (field, what was
expected, what was given). Bounds that a study sets (``dataset.max_seconds``,
``dataset.max_frame_side``) come in through :class:`RowLimits` as the validation context.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from patchwork.study.messages import suggestion

MAX_ID_CHARS = 256
MAX_ANSWER_CHARS = 256
MAX_QUESTION_CHARS = 10_000
MAX_PATH_CHARS = 4096
#: Still frames one run may list.
MAX_FRAME_FILES = 1024
MAX_RUNS = 16
MAX_RUN_NAME_CHARS = 64
#: Frames per second: (0, MAX_FPS]; frames sampled from a video: [1, MAX_SAMPLED_FRAMES].
MAX_FPS = 120.0
MAX_SAMPLED_FRAMES = 1024
#: Integers in a manifest have at most this many digits (no field needs more; Python refuses to
#: convert integers of over 4,300 digits, and a bound keeps a typo from costing anything).
MAX_INT_DIGITS = 18


@dataclass(frozen=True)
class RowLimits:
    """The study's bounds on a run: the longest ``seconds``, the largest ``frame_size`` side."""

    max_seconds: float = 600.0
    max_frame_side: int = 4096


class HugeNumber:
    """An integer of more digits than :data:`MAX_INT_DIGITS`, kept as its length: refused by every
    field, and named in the message without converting it."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _printable(text: str, allow: str = "") -> str:
    """``text`` unless it is blank (nothing but spaces and invisible format characters such as
    U+200B) or holds a control character or a lone surrogate (not text; a CSV cell cannot keep a
    carriage return, so no field may hold one)."""
    if all(character.isspace() or unicodedata.category(character) == "Cf" for character in text):
        raise ValueError("must not be blank")
    for character in text:
        if unicodedata.category(character) in ("Cc", "Cs") and character not in allow:
            raise ValueError(f"must be plain text, without U+{ord(character):04X}")
    return text


def readable_id(value: Any) -> bool:
    """Whether ``value`` is a valid sample id (so that messages may name the sample by it)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        return False
    try:
        _printable(value)
    except ValueError:
        return False
    return True


def _question(text: str) -> str:
    return _printable(text, allow="\n\t")  # a question may hold turns on lines of their own


_Plain = AfterValidator(_printable)
SampleId = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=MAX_ID_CHARS), _Plain
]
Answer = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=MAX_ANSWER_CHARS), _Plain
]
Question = Annotated[
    str,
    Strict(),
    StringConstraints(min_length=1, max_length=MAX_QUESTION_CHARS),
    AfterValidator(_question),
]
MediaPath = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=MAX_PATH_CHARS), _Plain
]
RunName = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]*$", max_length=MAX_RUN_NAME_CHARS),
]
Number = Annotated[float, Strict()]
WholeNumber = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]


def _one_or_more(value: Any) -> Any:
    """A lone path is a list of one frame."""
    return [value] if isinstance(value, str) else value


def _pair(value: Any) -> Any:
    """``[height, width]``: two whole numbers (checked here so that the message shows the pair)."""
    if value is None:
        return value
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in value)
    ):
        raise ValueError("expected [height, width], two whole numbers")
    return tuple(value)


def _within(value: float, low: float, high: float) -> float:
    if not math.isfinite(value) or not low < value <= high:
        raise ValueError(f"must lie in ({low:g}, {high:g}]")
    return value


def _limits(info: ValidationInfo) -> RowLimits:
    context = info.context if isinstance(info.context, Mapping) else {}
    limits = context.get("limits")
    return limits if isinstance(limits, RowLimits) else RowLimits()


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestRun(_Row):
    """One run's media (paths relative to the manifest) and how they are cut to a common layout."""

    audio: MediaPath | None = None
    video: MediaPath | None = None
    frames: (
        Annotated[
            tuple[MediaPath, ...],
            BeforeValidator(_one_or_more),
            Field(min_length=1, max_length=MAX_FRAME_FILES),
        ]
        | None
    ) = None
    image_features: MediaPath | None = None
    fps: Number | None = None
    max_frames: WholeNumber | None = None
    audio_in_video: Flag | None = None
    seconds: Number | None = None
    frame_size: Annotated[tuple[int, int] | None, BeforeValidator(_pair)] = None

    @field_validator("fps")
    @classmethod
    def _fps(cls, value: float | None) -> float | None:
        return None if value is None else _within(value, 0, MAX_FPS)

    @field_validator("max_frames")
    @classmethod
    def _max_frames(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_SAMPLED_FRAMES:
            raise ValueError(f"must lie in [1, {MAX_SAMPLED_FRAMES}]")
        return value

    @field_validator("seconds")
    @classmethod
    def _seconds(cls, value: float | None, info: ValidationInfo) -> float | None:
        return None if value is None else _within(value, 0, _limits(info).max_seconds)

    @field_validator("frame_size")
    @classmethod
    def _frame_size(
        cls, value: tuple[int, int] | None, info: ValidationInfo
    ) -> tuple[int, int] | None:
        side = _limits(info).max_frame_side
        if value is not None and not all(1 <= length <= side for length in value):
            raise ValueError(f"sides must lie in [1, {side}]")
        return value

    @model_validator(mode="after")
    def _names_media(self) -> ManifestRun:
        if not (self.audio or self.video or self.frames or self.image_features):
            raise ValueError("names no media: give 'audio', 'video', 'frames' or 'image_features'")
        if self.video and self.frames:
            raise ValueError("gives both 'video' and 'frames': a run's pictures come from one")
        return self

    def media_spec(self) -> dict[str, Any]:
        """The fields this run sets, as :func:`~patchwork.data.containers.run_media` reads them."""
        spec = self.model_dump(exclude_none=True)
        for key in ("frames", "frame_size"):
            if key in spec:
                spec[key] = list(spec[key])
        return spec


class ManifestRow(_Row):
    """One sample of a manifest."""

    id: SampleId
    audio_answer: Answer
    visual_answer: Answer
    question: Question | None = None
    runs: Annotated[dict[RunName, ManifestRun], Field(min_length=1, max_length=MAX_RUNS)]


#: Fields every row must give (absent, null or empty: the row "lacks" them).
REQUIRED = ("id", "audio_answer", "visual_answer", "runs")
ROW_FIELDS = tuple(ManifestRow.model_fields)
RUN_FIELDS = tuple(ManifestRun.model_fields)

_EXPECTED = {
    "string_type": "expected text",
    "string_unicode": "expected Unicode text",
    "float_type": "expected a number",
    "int_type": "expected a whole number",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping of run names to their media fields",
    "model_type": "expected a mapping of media fields",
    "model_attributes_type": "expected a mapping of media fields",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
}


def describe(error: Mapping[str, Any], csv: bool = False) -> str:
    """A pydantic error of validating a :class:`ManifestRow`: ``FIELD: expected …, got …``, the
    field written as the file writes it (``runs.clean.fps`` in JSONL, the column ``clean.fps``
    in CSV)."""
    loc = tuple(error["loc"])
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"{field_name(loc, csv)}: {_unknown(loc, csv)}"
    if loc[-1:] == ("[key]",):
        return (
            f"{field_name(loc[:-2], csv)}: a run name is letters, digits, '_' and '-' (at most "
            f"{MAX_RUN_NAME_CHARS} characters), got {shown(loc[-2])}"
        )
    if kind == "missing":
        problem = "required field is missing"
    elif kind in _EXPECTED:
        problem = f"{_EXPECTED[kind]}, got {shown(given)}"
    elif kind in ("string_too_short", "too_short"):
        problem = f"must not be empty, got {shown(given)}"
    elif kind == "string_too_long":
        problem = f"at most {error['ctx']['max_length']:,} characters, got {_length(given)}"
    elif kind == "too_long":
        problem = f"at most {error['ctx']['max_length']:,} entries, got {_length(given)}"
    else:  # our own checks (bounds, media) say what they expected
        message = str(error["msg"]).removeprefix("Value error, ")
        problem = message if isinstance(given, Mapping) else f"{message}, got {shown(given)}"
    return f"{field_name(loc, csv)}: {problem}" if loc else problem


def _length(given: Any) -> str:
    return f"{len(given):,}" if isinstance(given, Sized) else "more"


def field_name(loc: tuple[Any, ...], csv: bool = False) -> str:
    """``('runs', 'clean', 'frames', 0)`` as ``runs.clean.frames[0]`` (CSV: ``clean.frames[0]``)."""
    if csv and loc[:1] == ("runs",) and len(loc) > 1:
        loc = loc[1:]
    name = ""
    for part in loc:
        text = part if isinstance(part, str) and part.isprintable() else repr(part)
        name += f"[{part}]" if isinstance(part, int) else f".{text}" if name else text
    return name


def _unknown(loc: tuple[Any, ...], csv: bool) -> str:
    meant = suggestion(ManifestRow, loc)
    if meant is not None:
        return f"unknown field; did you mean {meant!r}?"
    if len(loc) == 1 and loc[0] in RUN_FIELDS:
        example = f"clean.{loc[0]}" if csv else f'"runs": {{"clean": {{"{loc[0]}": …}}}}'
        return f"unknown field; {loc[0]!r} belongs to a run: {example}"
    allowed = RUN_FIELDS if len(loc) == 3 else ROW_FIELDS
    return f"unknown field; expected some of {', '.join(allowed)}"


def shown(value: Any, nested: bool = False) -> str:
    """``value`` as a message shows it: JSON spelling, containers one level deep, at most 80
    characters — never converting a huge integer or recursing into deep nesting."""
    if isinstance(value, HugeNumber):
        return f"a number of {value.digits:,} digits (at most {MAX_INT_DIGITS})"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 60:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    if isinstance(value, Mapping):
        if nested:
            return "{…}"
        items = [f"{shown(str(key))}: {shown(item, True)}" for key, item in list(value.items())[:4]]
        text = "{" + ", ".join(items) + (", …" if len(value) > 4 else "") + "}"
    elif isinstance(value, list | tuple):
        if nested:
            return "[…]"
        listed = ", ".join(shown(item, True) for item in value[:4])
        text = "[" + listed + (", …" if len(value) > 4 else "") + "]"
    elif isinstance(value, str):
        text = repr(value[:80])
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = type(value).__name__
    return text if len(text) <= 80 else text[:79] + "…"
