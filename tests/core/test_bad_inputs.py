"""Bounded inputs: each bad study, manifest row, media file or option ends in one line naming the
file, line and field, exit code 2, before any weights load — no traceback, no hang, no memory
blow-up (issue 18, items 8, 10, 14, 16 and 17). Bounded by work, not by time: the tests hold on a
busy machine."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from patchwork.cli import app
from patchwork.data.media import save_frame
from patchwork.engine import runner as runner_module

from .helpers import study_text
from .test_manifest import make_media, manifest_rows, study_with_manifest

runner = CliRunner()


def _fails_in_one_line(args: list[str], *expected: str, megabytes: float = 200.0) -> str:
    """The command fails in one line with exit 2, without loading weights and without
    allocating more than ``megabytes`` on the Python/numpy heap on the way."""
    loads: list[bool] = []
    real_load = runner_module.load_model

    def load_model(*arguments: object) -> object:
        loads.append(bool(arguments[2]) if len(arguments) > 2 else True)
        return real_load(*arguments)  # type: ignore[arg-type]

    tracemalloc.start()
    try:
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(runner_module, "load_model", load_model)
            result = runner.invoke(app, args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "Traceback" not in result.output and message.startswith("error:"), result.output
    for text in expected:
        assert text in message, message
    assert not any(loads), "weights were loaded before the mistake was found"
    assert peak < megabytes * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"
    return message


def _manifest_study(tmp_path: Path, edit, extra: str = "") -> Path:
    make_media(tmp_path / "media")
    rows = manifest_rows()
    edit(rows)
    path = study_with_manifest(tmp_path, rows)
    if extra:
        path.write_text(path.read_text().replace("dataset:\n", f"dataset:\n{extra}"))
    return path


def _set(run: str, field: str, value):
    def edit(rows):
        rows[1]["runs"][run][field] = value

    return edit


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("fps", float("nan"), "runs.conflict.fps: must lie in (0, 120], got NaN"),
        ("fps", float("inf"), "runs.conflict.fps: must lie in (0, 120], got Infinity"),
        ("fps", 0, "runs.conflict.fps: must lie in (0, 120], got 0"),
        ("seconds", 1e9, "runs.conflict.seconds: must lie in (0, 600]"),
        ("seconds", float("nan"), "runs.conflict.seconds: must lie in (0, 600]"),
        ("seconds", -1, "runs.conflict.seconds: must lie in (0, 600]"),
        ("frame_size", [100000, 100000], "runs.conflict.frame_size: sides must lie in [1, 4096]"),
        ("frame_size", [0, 0], "runs.conflict.frame_size: sides must lie in [1, 4096]"),
    ],
)
def test_run_fields_out_of_bounds(tmp_path: Path, field: str, value, expected: str) -> None:
    path = _manifest_study(tmp_path, _set("conflict", field, value))
    _fails_in_one_line(["validate", str(path)], "samples.jsonl:2: sample bird-vs-fish", expected)


@pytest.mark.parametrize("visual_answer", ["meow", "mewo"])  # "mewo": the same random-init token
def test_a_sample_whose_two_answers_are_one_token_is_refused(
    tmp_path: Path, visual_answer: str
) -> None:
    """Row answers 'meow' / 'meow' were accepted: every effect of the sample is then 0."""

    def edit(rows):
        rows[1]["audio_answer"], rows[1]["visual_answer"] = "meow", visual_answer

    path = _manifest_study(tmp_path, edit)
    _fails_in_one_line(
        ["validate", str(path)],
        "samples.jsonl:2: sample bird-vs-fish: audio_answer 'meow' and visual_answer",
        "are one token (id",
        "a sample's two answers must differ",
    )


def test_non_finite_audio_is_refused(tmp_path: Path) -> None:
    def edit(rows):
        rows[0]["runs"]["clean"]["audio"] = "media/nan.wav"

    path = _manifest_study(tmp_path, edit)
    sound = np.zeros(6400, dtype=np.float32)
    sound[100] = np.nan
    soundfile.write(tmp_path / "media/nan.wav", sound, 16000, subtype="FLOAT")
    _fails_in_one_line(
        ["validate", str(path)],
        "samples.jsonl:1:",
        f"{tmp_path / 'media/nan.wav'}: the audio holds NaN or infinite samples",
    )


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        ("flags.npy", np.ones((4, 8), dtype=bool), "dtype bool is not floating point"),
        ("bytes.npy", np.ones((4, 8), dtype=np.int8), "dtype int8 is not floating point"),
        ("bytes.safetensors", np.ones((4, 8), dtype=np.int8), "dtype I8 is not floating point"),
        ("nan.npy", np.full((4, 8), np.nan, dtype=np.float32), "NaN or infinite value(s)"),
        ("inf.safetensors", np.full((4, 8), np.inf, dtype=np.float32), "NaN or infinite value"),
        # a scalar, a vector, an empty array, five axes: no vision tower's output (issue 28)
        ("scalar.npy", np.float32(1.0), "shape (); expected (images, tokens, hidden)"),
        ("flat.npy", np.zeros(8, np.float32), "shape (8,); expected (images, tokens, hidden)"),
        ("empty.npy", np.zeros((1, 4, 0), np.float32), "shape (1, 4, 0); expected (images,"),
        ("5d.npy", np.zeros((1, 1, 1, 4, 8), np.float32), "shape (1, 1, 1, 4, 8); expected"),
        ("flat.safetensors", np.zeros(8, np.float32), "shape (8,); expected (images, tokens,"),
    ],
)
def test_image_features_must_be_finite_floating_point(
    tmp_path: Path, name: str, values: np.ndarray, expected: str
) -> None:
    """A bool or int8 ``.npy`` was cast to float32 and used as image features without a word;
    features of any shape passed validate."""

    def edit(rows):
        rows[0]["runs"]["clean"]["image_features"] = f"media/{name}"

    path = _manifest_study(tmp_path, edit)
    features = tmp_path / "media" / name
    if name.endswith(".npy"):
        np.save(features, values)
    else:
        import torch
        from safetensors.torch import save_file

        save_file({"features": torch.from_numpy(values)}, str(features))
    _fails_in_one_line(
        ["validate", str(path)], "samples.jsonl:1: sample dog-vs-cat", str(features), expected
    )


def test_image_features_a_family_does_not_take_are_refused(tmp_path: Path) -> None:
    """Qwen2.5-Omni takes its pictures from frames: image_features beside them were read, then
    silently left unused."""

    def edit(rows):
        rows[1]["runs"]["conflict"]["image_features"] = "media/features.npy"

    path = _manifest_study(tmp_path, edit)
    np.save(tmp_path / "media" / "features.npy", np.zeros((1, 4, 8), np.float32))
    _fails_in_one_line(
        ["validate", str(path)],
        "samples.jsonl:2: sample bird-vs-fish: run 'conflict'",
        "image_features: qwen2_5_omni takes no precomputed image features",
    )


def test_a_picture_over_the_side_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    def edit(rows):
        rows[0]["runs"]["conflict"]["frames"] = ["media/huge.png"]

    path = _manifest_study(tmp_path, edit, extra="  max_frame_side: 64\n")
    save_frame(tmp_path / "media/huge.png", np.zeros((80, 100, 3), dtype=np.uint8))
    _fails_in_one_line(["validate", str(path)], "huge.png is 100x80 pixels, over max_frame_side")


def test_manifest_encodings(tmp_path: Path) -> None:
    make_media(tmp_path / "media")
    path = study_with_manifest(tmp_path, manifest_rows(), "csv")
    text = (tmp_path / "samples.csv").read_text()
    (tmp_path / "samples.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # a BOM: fine
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    lines = text.splitlines()
    lines[2] = lines[2].replace("bird-vs-fish", "bird-vs-fïsh")
    (tmp_path / "samples.csv").write_bytes("\n".join(lines).encode("latin-1"))
    _fails_in_one_line(["validate", str(path)], "samples.csv:3: not UTF-8 text")


def test_runs_of_different_layouts_are_found_with_their_line_before_any_unit(
    tmp_path: Path,
) -> None:
    def edit(rows):
        rows[1]["runs"]["conflict"]["audio"] = "media/long.wav"

    path = _manifest_study(tmp_path, edit)
    soundfile.write(tmp_path / "media/long.wav", np.zeros(32000, dtype=np.float32), 16000)
    _fails_in_one_line(
        ["validate", str(path)], "samples.jsonl:2: sample bird-vs-fish", "differ in token layout"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("window: 1", "window: 50", "interventions[0].window: window 50 is longer than"),
        ("layers: all", "layers: '0-1000000000'", "is beyond any model"),
        ("hidden_size: 32", "hidden_size: 1048576", "model.random_init.hidden_size"),
        ("samples: 2", "samples: 1000000000", "dataset.samples"),
    ],
)
def test_study_values_are_bounded(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = study_text(layers=2, samples=2)
    assert old in text
    path = tmp_path / "study.yaml"
    path.write_text(text.replace(old, new))
    _fails_in_one_line(["validate", str(path)], "study.yaml:", expected)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("notanaddress", "expected tcp://HOST:PORT"),
        ("tls://127.0.0.1:8786", "only tcp:// addresses"),
        ("127.0.0.1:99999", "expected tcp://HOST:PORT"),
    ],
)
def test_scheduler_addresses_are_checked_before_connecting(
    tmp_path: Path, address: str, expected: str
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(study_text(layers=2, samples=2))
    _fails_in_one_line(
        ["run", str(path), "--store", str(tmp_path / "store"), "--scheduler", address],
        expected,
    )
    assert not list(tmp_path.glob("store/*.zarr"))  # refused before anything was written
