"""Fuzzing command-line options (issue 28, item 5): random ``--set`` assignments for
``validate``, ``validate --schema-only`` and ``plan``, and random values of ``run``'s options
(``--set``, ``--seed``, ``--threads``, ``--device``, ``--workers``, ``--scheduler``, ``--store``
…) with the sweep itself replaced by a stub, so that nothing heavy runs. A case passes when it
ends in success (for ``run``: the sweep would start) or in exactly one line ``error: …`` with exit
code 2; a traceback fails it.

Budgets (CI, about 20 s here on a busy 2-core machine): 80 cases of ``validate``/``plan``, 60 of
``run``; fixed (derandomized) cases.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import study_text
from .hostile import patchwork_main, refused

FIELDS = [
    "name",
    "store",
    "question",
    "metrics",
    "model.device",
    "model.dtype",
    "model.attention",
    "model.family",
    "model.checkpoint",
    "model.random_init.seed",
    "model.random_init.layers",
    "model.random_init.hidden_size",
    "model.random_init.vocab_size",
    "dataset.seed",
    "dataset.generator",
    "execution.seed",
    "execution.batch_size",
    "execution.unit_size",
    "execution.threads",
    "execution.resources",
    "interventions.0.window",
    "interventions.0.layers",
    "interventions.0.components",
    "interventions.0.method",
    "interventions.1.kind",
    "runs.clean.audio",
]
#: Values a study could well hold there (so that some cases get past the schema).
PLAUSIBLE = st.sampled_from(
    ["0", "1", "2", "3", "all", "'0-1'", "float32", "bfloat16", "cpu", "sdpa", "eager", "clean"]
    + ["[residual]", "{GPU: 1}", "[audio, answer]", "testbed", "random", "x.zarr", "silence"]
)
#: Values as typed after ``=``: read as YAML, so syntax, tags and escapes are fair game.
VALUES = st.one_of(
    PLAUSIBLE,
    PLAUSIBLE,
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        [
            str(2**63),
            str(2**64),
            "-1",
            ".nan",
            "-.inf",
            "1e400",
            "9" * 5000,
            "0x" + "f" * 40,
            "meta",
            "cuda:99999",
            "[0, 2]",
            "{GPU: -1}",
            "{GPU: .nan}",
            "'0-4095'",
            "0-99999999999999999999",
            '"a\\0b"',
            "!!python/object:os.system x",
            "&a [*a]",
            "[[[[[[",
            "",
            "~",
        ]
    ),
    st.text(max_size=12).filter(lambda text: "\x00" not in text),
)
KEYS = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS),
    st.text(alphabet="abz.0123²_-", min_size=1, max_size=12),
    st.sampled_from(["interventions." + "9" * 5000, "interventions.-1", ".", "a..b"]),
)
ASSIGNMENTS = st.lists(
    st.tuples(KEYS, VALUES).map(lambda pair: f"{pair[0]}={pair[1]}"), min_size=1, max_size=3
)
#: Fixed cases (derandomized): the same ones on every run and machine.
FUZZ = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("options") / "study.yaml"
    path.write_text(study_text(layers=2, samples=2))
    return path


def _settled(*arguments: object) -> None:
    """Success or one line ``error: …`` with exit code 2 (a traceback propagates)."""
    outcome = patchwork_main(*arguments)
    if outcome.code == 0:
        return
    assert outcome.code == 2, (outcome.code, outcome.stderr)
    assert outcome.line.startswith("error: "), outcome.stderr


def _cheap(assignments: list[str]) -> bool:
    """Whether a full check stays cheap: no assignment asks for many generated samples."""
    return not any(
        text.startswith("dataset.samples=") and text.split("=", 1)[1].strip().isdigit()
        for text in assignments
    )


@settings(FUZZ, max_examples=80)
@given(command=st.sampled_from(["schema", "validate", "plan"]), assignments=ASSIGNMENTS)
def test_random_overrides(study: Path, command: str, assignments: list[str]) -> None:
    options = [part for text in assignments for part in ("--set", text)]
    if command == "schema":
        _settled("validate", study, "--schema-only", *options)
    elif _cheap(assignments):
        _settled(command, study, *options)


class SweepWouldStart(Exception):
    """Raised by the stub sweep: every option was accepted."""


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    from patchwork.engine import distributed, runner

    def run_study(*arguments: object, **options: object) -> None:
        raise SweepWouldStart

    @contextlib.contextmanager
    def dask_executor(workers, scheduler, *rest: object) -> Iterator[None]:
        if scheduler is not None:
            distributed.check_address(scheduler)  # what the real one checks before connecting
        yield None

    monkeypatch.setattr(runner, "run_study", run_study)
    monkeypatch.setattr(distributed, "dask_executor", dask_executor)


INTEGERS = st.one_of(
    st.integers(1, 4), st.integers(-5, 0), st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64])
)
TEXT = st.text(max_size=12).filter(lambda text: "\x00" not in text)
#: Each option of ``run`` with values a user could type, good and hostile.
RUN_OPTIONS = {
    "--seed": INTEGERS,
    "--threads": INTEGERS,
    "--batch-size": INTEGERS,
    "--samples": st.sampled_from([-1, 0, 1, 3, 10**9, 2**64]),
    "--workers": st.sampled_from([-1, 0, 10**6]),
    "--device": TEXT | st.sampled_from(["cpu", "cpu", "meta", "cuda:0", "yes", "cpu:99999"]),
    "--dtype": TEXT | st.sampled_from(["float32", "bfloat16", "int8"]),
    "--scheduler": TEXT
    | st.sampled_from(["tcp://[::1", "tcp://h:0", "tls://h:1", "h:8786", "tcp://[::1]:1"]),
    "--store": TEXT | st.sampled_from(["/dev/null", "a-file", "a-file/below", "ok", "ok"]),
    "--set": st.tuples(KEYS, PLAUSIBLE | VALUES).map("=".join),
}


@st.composite
def run_options(draw: st.DrawFn) -> list[str]:
    """Up to three of ``run``'s options, each ``--name=value``."""
    names = draw(st.lists(st.sampled_from(sorted(RUN_OPTIONS)), max_size=3))
    return [f"{name}={draw(RUN_OPTIONS[name])}" for name in names]


@settings(FUZZ, max_examples=60)
@given(options=run_options())
def test_random_run_options(study: Path, no_sweep: None, options: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        Path("a-file").write_text("")
        try:
            _settled("run", study, *options)
        except SweepWouldStart:
            pass


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--scheduler", ""], "--scheduler '': an empty address"),
        (["--workers", "2", "--scheduler", "h:1"], "give one"),
        (["--samples", "2", "--set", "dataset.samples=1e3"], "both set dataset.samples"),
        (["--seed", "1", "--set", "dataset . seed=-1"], "both set dataset.seed"),
        (["--store", "a" * 300], "a name of 300 bytes, over the"),
        (["--store", "abcdefghij/" * 400], "a path of"),
    ],
)
def test_run_options_never_ignored_or_found_unusable_late(
    study: Path, no_sweep: None, options: list[str], expected: str, tmp_path: Path
) -> None:
    """An option that would be ignored (an empty --scheduler, --workers beside --scheduler, a
    --set of the field a short option sets) or a --store the file system refuses is one line
    before the sweep (before: run locally, the --set value dropped unread, a traceback)."""
    with contextlib.chdir(tmp_path):
        refused(patchwork_main("run", study, *options), expected)
