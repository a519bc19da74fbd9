from pathlib import Path

import pytest
import torch
import xarray as xr

from patchwork.bench import SUITE, run_bench

#: The shipped organisms: windows 4-5, heads 4:1 4:3, the control, and audio 0-2.
SHIPPED = [organism for organism in SUITE if organism.checkpoint is not None]
#: Clips per organism: 10 of the heads organism's first 12 are usable, above MIN_USABLE (8).
CLIPS = 12


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, Path]:
    """``run_bench`` on the shipped organisms, once for every test that reads it."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    return run_bench(out, SHIPPED, samples=CLIPS, log=lambda line: None), out


def stored(out: Path, organism: str, method: str) -> xr.Dataset:
    """The results ``run_bench`` stored for ``method`` on ``organism``."""
    from patchwork.bench.suite import Organism
    from patchwork.store.zarr_store import open_results

    slug = Organism(organism).slug
    path = out / "stores" / slug / f"bench-{slug}-{method.replace('+', '-')}.zarr"
    return open_results(path).load()
