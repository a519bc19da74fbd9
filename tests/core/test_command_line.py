"""The command line as a user meets it: one line and a documented exit code for every mistake and
for Ctrl-C, commands that start without torch, ``--set`` overrides, threads, and warnings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zarr

from patchwork import open_results, parse_study, run_study
from patchwork.errors import RunInterrupted
from patchwork.study.loader import study_hash

from .helpers import SMOKE, study_text

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
HEAVY = ("torch", "transformers", "nnsight")


def patchwork(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The ``patchwork`` command, as installed (``python -m patchwork``)."""
    return subprocess.run(
        [sys.executable, "-m", "patchwork", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    summary = run_study(parse_study(study_text(layers=2, samples=4)), store_root=root)
    return summary.store


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


BAD_ARGUMENTS = {
    "validate: no file": (["validate", "nowhere.yaml"], "study file not found"),
    "validate: bad override": (
        ["validate", str(SMOKE), "--set", "model.dtype=float12"],
        "--set model.dtype=float12: model.dtype",
    ),
    "run: misspelt override": (
        ["run", str(SMOKE), "--set", "modle.dtype=float16"],
        "error: --set modle.dtype=float16: modle: unknown key; did you mean 'model'?",
    ),
    "run: no file": (["run", "nowhere.yaml"], "study file not found"),
    "run: override without value": (["run", str(SMOKE), "--set", "model"], "KEY.PATH=VALUE"),
    "run: zero threads": (["run", str(SMOKE), "--threads", "0"], "--threads"),
    "run: unknown option": (["run", str(SMOKE), "--colour"], "No such option"),
    "status: no store": (["status", "nowhere.zarr"], "no patchwork store"),
    "verify: no store": (["verify", "nowhere.zarr"], "nowhere.zarr"),
    "locate: no store": (["locate", "nowhere.zarr"], "no patchwork store"),
    "plot: no store": (["plot", "nowhere.zarr", "--out", "figures"], "no patchwork store"),
    "unknown command": (["analyse"], "No such command"),
    "testbed eval: unknown checkpoint": (["testbed", "eval", "testbd"], "testbd"),
    "testbed eval: no samples": (["testbed", "eval", "testbed", "--samples", "0"], "--samples"),
    "testbed train: window past the last layer": (
        ["testbed", "train", "--out", "x", "--video-access-layers", "4-9"],
        "--video-access-layers",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_every_command_says_a_mistake_in_one_line_with_exit_2(case: str, tmp_path: Path) -> None:
    args, expected = BAD_ARGUMENTS[case]
    result = subprocess.run(
        [sys.executable, "-m", "patchwork", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert line.startswith("error: ")
    assert expected in line
    assert not (tmp_path / "x").exists()


def test_layer_ranges_are_written_as_in_study_files() -> None:
    from patchwork.testbed.windows import parse_layer_span

    assert parse_layer_span("4-5", 8, "--x") == parse_layer_span("4:5", 8, "--x") == (4, 5)
    with pytest.raises(Exception, match="FIRST:LAST"):
        parse_layer_span("4/5", 8, "--x")


def test_version() -> None:
    result = patchwork("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"patchwork {__import__('patchwork').__version__}"


LIGHT_COMMANDS = {
    "help": ["--help"],
    "validate --schema-only": ["validate", str(SMOKE), "--schema-only"],
    "status": ["status", "{store}"],
    # the random-init store has no sample whose baselines suit the normalized effect
    "locate": ["locate", "{store}", "--resamples", "50", "--metric", "logit_diff"],
    "plot": [
        "plot",
        "{store}",
        "--out",
        "{out}",
        "--resamples",
        "20",
        "--image-format",
        "png",
        "--metric",
        "logit_diff",
    ],
}

PROBE = """
import json, sys
from patchwork.__main__ import main
sys.argv = ["patchwork", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exit:
    code = exit.code
heavy = [name for name in {heavy!r} if name in sys.modules]
print("PROBE", json.dumps({{"code": code, "heavy": heavy}}))
"""


@pytest.mark.parametrize("command", sorted(LIGHT_COMMANDS))
def test_light_commands_start_without_torch(
    command: str, finished_store: Path, tmp_path: Path
) -> None:
    args = [a.format(store=finished_store, out=tmp_path) for a in LIGHT_COMMANDS[command]]
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    report = json.loads(result.stdout.split("PROBE", 1)[1])
    assert report["code"] == 0, result.stderr
    assert report["heavy"] == [], f"{command} imported {report['heavy']}"


def test_overrides_are_validated_hashed_and_recorded(tmp_path: Path) -> None:
    text = study_text(layers=2, samples=2)
    plain = parse_study(text)
    overridden = parse_study(text, overrides=["execution.batch_size=3", "dataset.samples=4"])
    assert (overridden.execution.batch_size, overridden.dataset.samples) == (3, 4)
    assert study_hash(overridden) != study_hash(plain)
    # threads change speed, not results: a run may resume with another count
    assert study_hash(parse_study(text, overrides=["execution.threads=2"])) == study_hash(plain)

    result = patchwork(
        "run", _write(tmp_path, text), "--store", str(tmp_path), "--samples", "4", "--threads", "1"
    )
    assert result.returncode == 0, result.stderr
    results = open_results(tmp_path / "tiny.zarr")
    assert results.sizes["sample"] == 4
    assert results.attrs["overrides"] == ["execution.threads=1", "dataset.samples=4"]
    assert results.attrs["config_sha256"] == study_hash(
        parse_study(text, overrides=["dataset.samples=4"])
    )
    # the same overrides resume; dropping one is a different study, and the message says which
    again = patchwork("run", _write(tmp_path, text), "--store", str(tmp_path), "--samples", "4")
    assert again.returncode == 0, again.stderr
    assert "0 units run, 2 already done" in " ".join(again.stdout.split())
    refused = patchwork("run", _write(tmp_path, text), "--store", str(tmp_path))
    assert refused.returncode == 2
    assert "changed: dataset.samples" in one_line(refused)


def test_store_variables_describe_themselves(finished_store: Path) -> None:
    results = open_results(finished_store)
    for name in ("effect", "baseline", "null_effect"):
        assert results[name].attrs["units"] == "1"
        assert (
            "clean" in results[name].attrs["long_name"]
            or "unpatched" in (results[name].attrs["long_name"])
        )
    assert "another sample" in results["null_effect"].attrs["long_name"]
    # opened without dask: a reduction prints numbers
    mean = results["effect"].sel(metric="normalized_effect").mean("sample")
    assert type(mean.data).__module__ == "numpy"


def test_a_position_group_empty_everywhere_is_reported(tmp_path: Path) -> None:
    text = study_text(layers=2, samples=2, groups="[audio, image, answer]")
    notes: list[str] = []
    run_study(parse_study(text), store_root=tmp_path, on_note=notes.append)
    assert notes == [
        "position group 'image' has no position in any sample run here: its effects are those "
        "of an empty patch"
    ]


def test_media_outside_the_testbeds_training_are_reported(tmp_path: Path) -> None:
    import torch

    from patchwork.testbed.model import outside_training

    trained = {
        "feature_attention_mask": torch.ones(1, 40, dtype=torch.long),
        "video_grid_thw": torch.tensor([[1, 8, 8]]),
    }
    assert outside_training(trained, "s0") == []
    long_clip = {**trained, "feature_attention_mask": torch.ones(1, 300, dtype=torch.long)}
    big_picture = {**trained, "video_grid_thw": torch.tensor([[1, 16, 16]])}
    assert outside_training(long_clip, "s0") == [
        "s0: audio of 3.00 s; the testbed was trained on 0.4 s clips — its answers on these "
        "are untested"
    ]
    assert outside_training(big_picture, "s0") == [
        "s0: pictures of 64×64 pixels; the testbed was trained on 32×32 — its answers on these "
        "are untested"
    ]


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return str(path)


def _done_units(store: Path) -> int:
    try:
        group = zarr.open_group(store, mode="r", zarr_format=3)
        done = group["random_init"]["done"][:]  # type: ignore[index]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        return 0
    return int(done.sum())


def _interrupt(
    args: list[str], when: Callable[[int], bool], timeout: float = 240, python: bool = False
) -> tuple[int, str, str]:
    """Run ``patchwork ARGS`` (``python ARGS``), send SIGINT once ``when(pid)`` holds; return
    (code, out, err)."""
    child = subprocess.Popen(
        [sys.executable, *args] if python else [sys.executable, "-m", "patchwork", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + timeout
    while not when(child.pid) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, "the command ended before it could be interrupted"
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    return child.returncode, out, err


def _loading_torch(pid: int) -> bool:
    """The process has begun loading torch's libraries: the run is past its start, loading."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_while_loading_is_one_line_and_writes_no_results(tmp_path: Path) -> None:
    study = _write(tmp_path, study_text(layers=2, samples=4))
    code, _, err = _interrupt(["run", study, "--store", str(tmp_path)], _loading_torch)
    assert code == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["interrupted"]
    assert _done_units(tmp_path / "tiny.zarr") == 0


def test_ctrl_c_during_the_sweep_keeps_finished_units_and_resumes(tmp_path: Path) -> None:
    study = _write(tmp_path, study_text(layers=3, samples=40, unit_size=2))
    store = tmp_path / "tiny.zarr"
    code, _, err = _interrupt(
        ["run", study, "--store", str(tmp_path)], lambda pid: _done_units(store) > 0
    )
    assert code == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
    done_units = int(lines[0].split()[1].split("/")[0])
    assert lines[0] == f"interrupted: {done_units}/20 units done; re-run to resume"
    assert 1 <= done_units < 20
    assert _done_units(store) == 2 * done_units  # the message counts what the store holds

    resumed = patchwork("run", study, "--store", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    summary = " ".join(resumed.stdout.split())
    assert f"{20 - done_units} units run, {done_units} already done" in summary
    assert bool(open_results(store)["done"].all())


def _ctrl_c_the_clean_up_fails_on(*_: object, **__: object) -> None:
    """A Ctrl-C as nnsight can pass it on: its traceback filter fails on a frame with no line
    number, and a TypeError leaves in place of the interrupt (campaign 4, attack 2533)."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise TypeError("'NoneType' object cannot be interpreted as an integer") from None


def test_a_ctrl_c_a_library_mangles_still_interrupts_the_run_and_it_resumes(
    tmp_path: Path,
) -> None:
    study = parse_study(study_text(layers=2, samples=4, unit_size=2))
    with pytest.raises(RunInterrupted, match="^1/2 units done; re-run to resume$"):
        run_study(study, store_root=tmp_path, on_unit=_ctrl_c_the_clean_up_fails_on)
    assert run_study(study, store_root=tmp_path).units_run == 1


def test_a_ctrl_c_a_library_mangles_is_one_line_from_any_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from patchwork.cli import app

    monkeypatch.setattr("patchwork.engine.runner.run_study", _ctrl_c_the_clean_up_fails_on)
    study = _write(tmp_path, study_text(layers=2, samples=4))
    result = CliRunner().invoke(app, ["run", study, "--store", str(tmp_path)])
    assert result.exit_code == 130, result.output
    assert result.output.splitlines()[-1] == "interrupted", result.output  # after the progress

    def a_bug(*_: object, **__: object) -> None:  # an error with no Ctrl-C behind it stays a bug
        raise TypeError("a bug")

    monkeypatch.setattr("patchwork.engine.runner.run_study", a_bug)
    result = CliRunner().invoke(app, ["run", study, "--store", str(tmp_path)])
    assert isinstance(result.exception, TypeError), result.output


SLOW_EXIT = """
import atexit, signal, sys
from pathlib import Path
shutting_down = Path(sys.argv[1])
def slow_exit_callback():  # stands in for a slow one, such as torch's (campaign 4, attack 2533)
    shutting_down.touch()
    signal.pause()
atexit.register(slow_exit_callback)
sys.argv = ["patchwork", "--version"]
from patchwork.__main__ import main
main()
"""


def test_ctrl_c_while_the_interpreter_shuts_down_leaves_at_once_without_a_traceback(
    tmp_path: Path,
) -> None:
    shutting_down = tmp_path / "shutting-down"
    code, out, err = _interrupt(
        ["-c", SLOW_EXIT, str(shutting_down)], lambda pid: shutting_down.exists(), python=True
    )
    assert shutting_down.exists()
    assert (code, err) == (130, ""), err
    assert out.strip(), "the command's own output is kept"


IGNORED_AT_EXIT = """
import atexit, signal, sys
atexit.register(lambda: print("ignored:", signal.getsignal(signal.SIGINT) is signal.SIG_IGN))
sys.argv = ["patchwork", "--version"]
from patchwork.__main__ import main
main()
"""


def test_a_ctrl_c_the_caller_ignores_stays_ignored_at_exit() -> None:
    """A command started in the background of a script ignores Ctrl-C, to its end."""
    result = subprocess.run(
        [sys.executable, "-c", IGNORED_AT_EXIT],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ignored: True", result.stdout


def test_run_study_draws_a_progress_bar_in_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = parse_study(study_text(layers=2, samples=4, unit_size=2))
    seen: list[tuple[str, int, int]] = []
    run_study(study, store_root=tmp_path, progress=True, on_start=lambda *a: seen.append(("s", *a)))
    bar = capsys.readouterr().err
    assert "tiny (0/4 done before)" in bar and "4/4" in bar and "sample/s" in bar
    assert seen == [("s", 4, 4)]  # the caller's own callbacks still run
    run_study(study, store_root=tmp_path, on_start=lambda *a: seen.append(("s", *a)))
    assert seen[-1] == ("s", 4, 0)  # a resumed run has nothing left to compute


def test_a_run_uses_the_studys_threads_and_gives_the_callers_back(tmp_path: Path) -> None:
    import torch

    text = study_text(layers=2, samples=2, unit_size=1)
    during: list[int] = []
    before = torch.get_num_threads()
    study = parse_study(text, overrides=[f"execution.threads={before + 1}"])
    run_study(study, store_root=tmp_path, on_unit=lambda _: during.append(torch.get_num_threads()))
    assert during == [before + 1, before + 1]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("command", ["verify", "status", "locate"])
def test_a_model_group_or_array_of_a_store_is_not_taken_for_a_store(
    command: str, finished_store: Path
) -> None:
    """``verify STORE/MODEL`` once said "ok: 0 finished units checked" and exit 0."""
    from .hostile import patchwork_main, refused

    model = next(entry for entry in finished_store.iterdir() if entry.is_dir())
    for part in (model, model / "done"):
        outcome = patchwork_main(command, part)
        refused(outcome, f"{part}: a part of the store {finished_store}, not a store")


def test_testbed_train_on_a_full_disk_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the checkpoint was saved once ended in safetensors' own traceback."""
    from safetensors import SafetensorError

    from patchwork.testbed import train

    from .hostile import patchwork_main, refused

    def full_disk(*arguments: object, **options: object) -> None:
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(train, "train", full_disk)
    out = tmp_path / "o"
    arguments = ("--stage1-steps", "1", "--stage2-steps", "1", "--fixed-steps", "--out", out)
    refused(
        patchwork_main("testbed", "train", *arguments),
        f"--out {out}: cannot write there (No space left on device)",
    )
    monkeypatch.setattr(train, "train", lambda *a, **k: 1 / 0)  # a bug stays a bug
    with pytest.raises(ZeroDivisionError):
        patchwork_main("testbed", "train", *arguments)


@pytest.mark.parametrize("command", ["--help", "status"])
def test_a_terminal_that_cannot_show_unicode_gets_escapes_not_a_traceback(
    command: str, finished_store: Path
) -> None:
    """Fourth campaign, attacks 2422-2423: with PYTHONIOENCODING=ascii every "—" in the output
    was a UnicodeEncodeError."""
    arguments = [command, str(finished_store)] if command == "status" else [command]
    result = subprocess.run(
        [sys.executable, "-m", "patchwork", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, "PYTHONIOENCODING": "ascii"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stdout.isascii()


def test_output_to_a_full_disk_is_one_line(finished_store: Path) -> None:
    """Fourth campaign, attack 2454: `status > /dev/full` ended in an OSError traceback."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "patchwork", "status", str(finished_store)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env=ENV,
        )
    assert result.returncode == 2
    assert result.stderr == "error: cannot write the output (No space left on device)\n"


def test_a_closed_output_pipe_stops_nothing(tmp_path: Path) -> None:
    """Fourth campaign, attacks 2455 and 2457 (`| head -1`): `status` exited 1 with Python's own
    "Exception ignored" lines, and a run stopped at its next line of output, unfinished. The
    pipe's reading end is closed before the command starts."""
    study = tmp_path / "study.yaml"
    study.write_text(study_text(layers=2, samples=4))
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "patchwork", "run", str(study), "--store", str(tmp_path)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env=ENV,
        )
    finally:
        os.close(write)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert bool(open_results(tmp_path / "tiny.zarr")["done"].all())


def test_a_closed_stdout_is_no_error(finished_store: Path) -> None:
    """Fourth campaign, attack 2453 (`status >&-`): an AttributeError traceback."""
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" -m patchwork status "$1" >&-', sys.executable, finished_store],
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 0 and result.stderr == ""


def test_a_removed_current_folder_is_one_line(tmp_path: Path) -> None:
    """Fourth campaign, attack 2449: torch failed to load with an oneMKL FATAL ERROR."""
    gone = tmp_path / "gone"
    gone.mkdir()
    result = subprocess.run(
        [
            "sh",
            "-c",
            'cd "$1" && rmdir "$1" && exec "$0" -m patchwork --help',
            sys.executable,
            gone,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 2, result.stderr
    assert one_line(result) == "error: the current folder no longer exists; cd to one that does"
