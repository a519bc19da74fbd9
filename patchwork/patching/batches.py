"""Rows of patched runs in batches that fit the accelerator: the one out-of-memory rule of every
method.

A batch that runs out of accelerator memory is halved and tried again, and the smaller size is
kept for the rest of the run (the next sample's batches start there too); a single row that does
not fit raises, since nothing smaller can be tried. On the CPU nothing runs out this way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

Row = TypeVar("Row")
Result = TypeVar("Result")


class Batches:
    """Batches of at most :attr:`size` rows, halved on out-of-memory (see the module)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a batch holds at least one row, got {size}")
        self.size = size

    def run(
        self, rows: Sequence[Row], compute: Callable[[Sequence[Row]], Result]
    ) -> Iterator[tuple[Sequence[Row], Result]]:
        """``(batch, compute(batch))`` for consecutive batches covering ``rows`` in order."""
        first = 0
        while first < len(rows):
            batch = rows[first : first + self.size]
            try:
                result = compute(batch)
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                self.size = max(1, len(batch) // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            yield batch, result
            first += len(batch)

    def map(
        self, rows: Sequence[Row], compute: Callable[[Sequence[Row]], Sequence[Result]]
    ) -> list[Result]:
        """``compute`` of every row, in order, for a ``compute`` that returns one result a row."""
        return [result for _, results in self.run(rows, compute) for result in results]
