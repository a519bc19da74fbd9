"""The exceptions patchwork raises on purpose.

Every error a user can cause derives from :class:`PatchworkError`; the CLI prints its message as
one line and exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PatchworkError(Exception):
    """Base of every error a user can cause and fix."""


class StudyError(PatchworkError):
    """A study file is malformed: the message names the file, the line and the field path."""


class DataError(PatchworkError):
    """A dataset, manifest or media file is missing, unreadable or inconsistent."""


class ModelError(PatchworkError):
    """A model cannot be loaded, or its inputs do not fit it (e.g. placeholder counts)."""


class StoreError(PatchworkError):
    """A result store is missing, belongs to another study, or would be written out of bounds."""


class TrainingError(PatchworkError):
    """Training the testbed stopped (step cap or time budget) without meeting its targets."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the message says how many units are done. Finished units stay in the
    store, and running the study again resumes after them."""


def ctrl_c_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C that ``error`` is, or was raised while handling (a library's clean-up can fail
    on the interrupt: nnsight's traceback filter raises a ``TypeError`` for a frame with no line
    number, and the user still pressed Ctrl-C); ``None`` when there is none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None
