"""The study file's schema: a YAML study validated into typed, immutable objects.

Unknown keys are errors everywhere (``extra="forbid"``). Checks that need the model (layer counts)
happen later, in :mod:`patchwork.engine.cost`, and still name the study file's line through
:meth:`Study.where`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from patchwork import plugins
from patchwork.errors import PatchworkError
from patchwork.study.specs import (
    MAX_SEED,
    METRICS,
    Metric,
    ModelSpec,
    Strict,
)


class ChatSpec(Strict):
    """How the question becomes the model's prompt."""

    template: Literal["auto", "checkpoint", "none"] = Field(
        "auto",
        description="'checkpoint': render the question as a user turn holding the media with the "
        "checkpoint's chat template (refused when it ships none); 'none': the question as "
        "written (turns and '{media}' by hand); 'auto': the template when the checkpoint ships "
        "one, the family can place its media in it and the question has no '{media}'; else as "
        "written.",
    )
    system: str | None = Field(
        None, description="The system turn rendered by the template; null: the template's own."
    )


class InputsSpec(Strict):
    """How a manifest's media files become the model's inputs (docs: "Your own clips",
    Conventions). ``inputs: processor`` is short for ``{builder: processor}``, ``inputs:
    transformers`` for ``{convention: transformers}``."""

    convention: Literal["model_card", "transformers"] = Field(
        "model_card",
        description="Which official route's frames, pixel budget and frame times: 'model_card' "
        "(qwen-omni-utils, then the processor, as the model cards call them) or 'transformers' "
        "(the processor's own do_sample_frames).",
    )
    builder: Literal["patchwork", "processor"] = Field(
        "patchwork",
        description="'patchwork': patchwork builds the inputs by the convention's rules (no "
        "torchvision needed); 'processor': the family's official processor, built from the "
        "checkpoint folder, builds them (needs torchvision, torchcodec and, for the model-card "
        "route, qwen-omni-utils).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if value == "processor":
            return {"builder": "processor"}
        if value in ("model_card", "transformers"):
            return {"convention": value}
        return value


class DatasetSpec(Strict):
    """Where the samples come from: a named generator or a manifest of media files."""

    generator: Literal["random", "testbed"] | None = Field(
        None,
        description="'random': random features (random-init models); 'testbed': the "
        "synthetic audio-visual world of the default model.",
    )
    manifest: Path | None = Field(
        None,
        strict=False,
        description="A JSONL or CSV file listing samples (paths relative to the study file).",
    )
    samples: int = Field(16, ge=1, le=1_000_000, description="How many samples (generators only).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Which samples (generators).")
    max_seconds: float = Field(
        600.0, gt=0, le=7200, description="Longest clip (or `seconds`) a manifest run may have."
    )
    max_frame_side: int = Field(
        4096, ge=16, le=16384, description="Largest picture or frame side (pixels) a run may have."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.generator is None) == (self.manifest is None):
            raise ValueError("give exactly one of 'generator' or 'manifest'")
        return self


class RunSpec(Strict):
    """How one run of a sample is built from its media (generators only)."""

    #: ``other_category``: the sound of the picture's category B (a sound-swap counterfactual).
    audio: Literal["own", "silence", "other_category"] = "own"
    picture: Literal["own", "blank", "other_category"] = "own"


class PluginIntervention(BaseModel):
    """An intervention of a method another package registers (entry point 'patchwork.methods'):
    its other keys are checked by that method's own ``spec_model`` when the study loads."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in plugins.names(plugins.METHODS):
            installed = ", ".join(plugins.names(plugins.METHODS))
            raise ValueError(f"unknown intervention kind; installed: {installed}")
        return kind

    @property
    def run_names(self) -> tuple[str, ...]:
        return ()


def _entry_models() -> dict[str, type[BaseModel]]:
    """The study-entry model of every kind registered under ``patchwork.entries`` — patchwork's
    own (:mod:`patchwork.study.entries`) and any plug-in's, read the same way. A kind whose
    method registers no entry model (its ``spec_model`` checks it later) is a
    :class:`PluginIntervention` here; one whose entry model fails to import is refused when a
    study names it."""
    models = {}
    for kind in plugins.names(plugins.ENTRIES):
        try:
            models[kind] = plugins.load(plugins.ENTRIES, kind)
        except PatchworkError:
            continue
    return models


#: Entry models by study ``kind``, read once from the installed packages' entry points.
ENTRY_MODELS = _entry_models()


def _kind_tag(value: object) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if isinstance(kind, str) and kind in ENTRY_MODELS else "plugin"


_TAGGED: tuple[Any, ...] = tuple(
    Annotated[model, Tag(kind)] for kind, model in ENTRY_MODELS.items()
) + (Annotated[PluginIntervention, Tag("plugin")],)
if TYPE_CHECKING:  # an entry of any registered kind: each has .kind and .run_names
    Intervention = Any
else:
    Intervention = Annotated[Union[_TAGGED], Discriminator(_kind_tag)]  # noqa: UP007


class AnalysisSpec(Strict):
    """How analyses of the normalized effect read the store (not part of the study hash: a
    finished store may be analysed under other settings)."""

    estimator: Literal["ratio_of_means", "mean_of_ratios"] = Field(
        "ratio_of_means",
        description="ratio_of_means: Σ(patched − conflict) / Σ(clean − conflict) over samples "
        "(each sample weighs by its gap); mean_of_ratios: the mean of per-sample normalized "
        "effects.",
    )
    min_relative_gap: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Samples whose clean − conflict gap is below this fraction of the median gap "
        "are left out of normalized-effect analyses (as are samples whose clean run does not "
        "prefer the audio answer or whose conflict run already does).",
    )


class Execution(Strict):
    """How the sweep runs: batch of patched conditions per forward, samples per stored unit."""

    batch_size: int = Field(
        16, ge=1, le=65_536, description="Patched conditions per batched forward."
    )
    unit_size: int = Field(
        8, ge=1, le=1_000_000, description="Samples per work unit (= one store chunk)."
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed of a run's random draws (noise-floor partners, steering's fit samples).",
    )
    threads: int = Field(
        1,
        ge=1,
        le=1024,
        description="torch CPU threads per process (each Dask worker too). 1 is fastest on a "
        "shared machine and no slower on an idle 2-core one (benchmarks/threads.py); raise it for "
        "large models on many idle cores. Not part of the study hash: a run may resume with "
        "another thread count.",
    )
    reuse: bool = Field(
        True,
        description="Patched runs start at the patched layer and position, reusing the target "
        "run's cached layer inputs, keys and values (exact; for adapters that support it).",
    )
    resources: dict[str, Annotated[float, Field(ge=0, le=1_000_000)]] = Field(
        default_factory=dict,
        description="Dask worker resources each unit needs, e.g. {GPU: 1} (distributed runs).",
    )


class Study(Strict):
    """A whole study file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    model: ModelSpec
    dataset: DatasetSpec
    runs: dict[str, RunSpec] = Field(
        default_factory=lambda: {
            "clean": RunSpec(audio="own", picture="blank"),
            "conflict": RunSpec(audio="own", picture="other_category"),
        }
    )
    question: str = "what do you hear"
    chat: ChatSpec = Field(default_factory=ChatSpec)
    inputs: InputsSpec = Field(default_factory=InputsSpec)
    interventions: tuple[Intervention, ...] = Field(min_length=1)
    metrics: tuple[Metric, ...] = Field(METRICS, min_length=1)
    execution: Execution = Field(default_factory=Execution)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    store: Path | None = Field(
        None,
        strict=False,
        description="Where the store goes, under the store root; default <name>.zarr.",
    )

    _source: Path | None = PrivateAttr(None)
    _text: str = PrivateAttr("")
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    _overrides: tuple[str, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _runs_exist(self) -> Study:
        kinds = [intervention.kind for intervention in self.interventions]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each intervention kind may appear once; listed twice: {kinds}")
        for intervention in self.interventions:
            for run in intervention.run_names:
                if run not in self.runs:
                    raise ValueError(
                        f"intervention names run {run!r}, not one of {list(self.runs)}"
                    )
            if len(set(intervention.run_names)) != len(intervention.run_names):
                raise ValueError(
                    f"{intervention.kind}: the runs it compares must differ, got "
                    f"{list(intervention.run_names)}"
                )
        return self

    @property
    def patching(self) -> Any:
        """The study's activation-patching intervention."""
        for intervention in self.interventions:
            if intervention.kind == "activation_patching":
                return intervention
        raise ValueError("this study has no activation_patching intervention")

    @property
    def source_path(self) -> Path | None:
        """The file the study was read from (None when built in code)."""
        return self._source

    @property
    def text(self) -> str:
        """The study file's text, verbatim (stored as provenance)."""
        return self._text

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``key.path=value`` overrides applied on top of :attr:`text` (``--set``)."""
        return self._overrides

    def where(self, *field_path: str | int) -> str:
        """'file:line: field.path' for messages; the line of the nearest enclosing key known."""
        from patchwork.study.locations import format_location

        return format_location(self._source, self._lines, field_path)
