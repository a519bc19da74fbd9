"""The one out-of-memory rule of every method (patchwork.patching.batches)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patchwork.patching.batches import Batches


def fits_at_most(limit: int, calls: list[int]):
    def compute(batch: Sequence[int]) -> list[int]:
        calls.append(len(batch))
        if len(batch) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [row * 10 for row in batch]

    return compute


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(min_value=0, max_value=40),
    size=st.integers(min_value=1, max_value=16),
    limit=st.integers(min_value=1, max_value=16),
)
def test_every_row_once_in_order_and_the_smaller_size_is_kept(
    rows: int, size: int, limit: int
) -> None:
    calls: list[int] = []
    batches = Batches(size)
    assert batches.map(list(range(rows)), fits_at_most(limit, calls)) == [
        row * 10 for row in range(rows)
    ]
    assert batches.size <= size
    assert batches.size <= limit or all(count <= limit for count in calls)
    succeeded = [count for count in calls if count <= limit]
    assert sum(succeeded) == rows
    # after the first refusal no batch is ever larger than the size that fitted
    if any(count > limit for count in calls):
        first_refusal = next(i for i, count in enumerate(calls) if count > limit)
        assert all(count <= calls[first_refusal] // 2 for count in calls[first_refusal + 1 :])


def test_a_single_row_that_does_not_fit_raises() -> None:
    with pytest.raises(torch.OutOfMemoryError):
        Batches(4).map([1, 2, 3], fits_at_most(0, []))


def test_other_errors_are_not_retried() -> None:
    def broken(batch: Sequence[int]) -> list[int]:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        Batches(4).map([1, 2], broken)
