"""One stored run of every method per attention implementation, shared by the method tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import xarray as xr

from patchwork import open_results, parse_study, run_study
from patchwork.data.sample import Sample
from patchwork.loading.generators import random_sample
from patchwork.loading.model import LoadedModel, load_model
from patchwork.study.schema import Study

from .helpers import study_text


@dataclass
class Stored:
    study: Study
    results: xr.Dataset
    loaded: LoadedModel

    def sample(self, sample_id: str) -> Sample:
        index = int(str(sample_id)[1:])
        spec = self.study
        return random_sample(index, spec.dataset.seed, spec.runs, spec.question, self.loaded)


@pytest.fixture(scope="session", params=["sdpa", "eager"])
def stored(request, tmp_path_factory) -> Stored:
    study = parse_study(study_text(request.param))
    root = tmp_path_factory.mktemp(f"methods-{request.param}")
    summary = run_study(study, store_root=root)
    results = open_results(summary.store).load()
    assert bool(results["done"].all())
    return Stored(study, results, load_model(study.model))
