"""A model family and a study method from another package: installed into a temporary directory
(a package plus its ``.dist-info`` with entry points, as pip lays it out), found through
:mod:`patchwork.plugins`, and run in a study like patchwork's own."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from patchwork import load_study, open_results, plugins, run_study
from patchwork.engine.runner import load_samples
from patchwork.errors import StudyError
from patchwork.loading.model import load_model

from . import builders

FAMILY = '''
from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter

BUILT = []


class ToyOmniAdapter(Qwen25OmniAdapter):
    """A Qwen2.5-Omni thinker under another family name; records that it was used."""

    family = "toy_omni"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        BUILT.append(self)
'''

METHOD = '''
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from patchwork.methods.method import Method
from patchwork.store.zarr_store import ArraySpec


class AnswerMarginSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["answer_margin"]
    run: str = "conflict"
    scale: float = Field(1.0, gt=0)

    @property
    def run_names(self):
        return (self.run,)


class AnswerMargin(Method):
    """scale × (audio − visual answer logit) of one run, per sample."""

    kind = "answer_margin"
    spec_model = AnswerMarginSpec

    def runs(self):
        return (self.spec.run,)

    def variables(self):
        return {"margin": ArraySpec(("sample",), long_name="scaled answer margin", units="1")}

    def compute(self, samples, patcher):
        adapter = patcher.adapter
        margins = []
        for sample in samples:
            inputs = adapter.forward_kwargs(sample.runs[self.spec.run])
            with torch.no_grad():
                logits = adapter.answer_logits(adapter.root(**inputs).logits)[0]
            margin = logits[sample.audio_answer_id] - logits[sample.visual_answer_id]
            margins.append(self.spec.scale * float(margin))
        return {"margin": np.asarray(margins, dtype="float32")}
'''

ENTRY_POINTS = """\
[patchwork.families]
toy_omni = toy_plugins.family:ToyOmniAdapter

[patchwork.methods]
answer_margin = toy_plugins.method:AnswerMargin
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The toy package installed into ``tmp_path / site`` and on ``sys.path``."""
    site = tmp_path / "site"
    package = site / "toy_plugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "family.py").write_text(textwrap.dedent(FAMILY))
    (package / "method.py").write_text(textwrap.dedent(METHOD))
    info = site / "toy_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    plugins.refresh()
    yield site
    monkeypatch.undo()
    plugins.refresh()


def plugin_study(folder: Path, family_root: Path, checkpoint: Path, scale: object = 2.0) -> Path:
    path = builders.family_study(folder, "qwen2_5_omni", checkpoint, family_root / "media")
    text = path.read_text().replace("family: qwen2_5_omni", "family: toy_omni")
    text = text.replace(
        "interventions:\n", f"interventions:\n  - kind: answer_margin\n    scale: {scale}\n"
    )
    path.write_text(text)
    return path


def test_a_third_party_family_and_method_run_a_study(
    installed: Path, tmp_path: Path, family_root: Path, checkpoint
) -> None:
    assert "toy_omni" in plugins.names(plugins.FAMILIES)
    assert "answer_margin" in plugins.names(plugins.METHODS)
    study = load_study(plugin_study(tmp_path, family_root, checkpoint("qwen2_5_omni")))
    summary = run_study(study, store_root=tmp_path / "store")
    results = open_results(summary.store)
    assert bool(results["done"].all())
    assert results["margin"].attrs["long_name"] == "scaled answer margin"
    assert "effect" in results  # patchwork's own method ran beside it

    from toy_plugins.family import BUILT, ToyOmniAdapter  # type: ignore[import-not-found]

    assert BUILT and all(type(adapter) is ToyOmniAdapter for adapter in BUILT)
    # the stored margins against a plain forward of the transformers model
    loaded = load_model(study.model)
    for index, sample in enumerate(load_samples(study, loaded).load(0, len(results["sample"]))):
        conflict = sample.runs["conflict"]
        with torch.no_grad():
            # with the flags the ids imply (use_audio_in_video for interleaved clips)
            logits = loaded.model(**loaded.adapter.forward_kwargs(conflict)).logits[0, -1]
        expected = 2.0 * float(logits[sample.audio_answer_id] - logits[sample.visual_answer_id])
        assert float(results["margin"].isel(sample=index)) == pytest.approx(expected, abs=1e-4)


def test_a_plugin_entry_is_checked_by_its_own_model_with_file_and_line(
    installed: Path, tmp_path: Path, family_root: Path, checkpoint
) -> None:
    path = plugin_study(tmp_path, family_root, checkpoint("qwen2_5_omni"), scale=-1)
    with pytest.raises(StudyError, match=r"\.yaml:\d+: interventions\[0\]\.scale: Input should be"):
        load_study(path)


def test_without_the_plugin_its_names_are_unknown(tmp_path: Path, family_root: Path, checkpoint):
    plugins.refresh()
    path = plugin_study(tmp_path, family_root, checkpoint("qwen2_5_omni"))
    with pytest.raises(StudyError, match=r"model\.family: unknown model family; installed: "):
        load_study(path)
