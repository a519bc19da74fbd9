"""The attack campaign's hostile numbers and options (issue 28, items 2 and 3), kept as a
regression corpus: each once ended in a traceback (or, for output paths, in a refusal found only
after the work was done); each is now one line ``error: …`` with exit code 2, found before any
model loads or any training starts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from patchwork.study.specs import MAX_SEED

from .helpers import SMOKE, study_text
from .hostile import patchwork_main, refused

BIG = "9" * 5000
#: Seeds beyond what torch accepts (2**64), beyond the bound (2**63) and below zero.
BAD_SEEDS = (str(2**64), str(2**63), "-1")


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(study_text(layers=2, samples=2))
    return path


@pytest.fixture
def nothing_heavy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model loads, no organism or testbed trains: each case is refused before."""
    from patchwork import bench
    from patchwork.engine import runner
    from patchwork.testbed import train

    def started(*arguments: object, **options: object) -> None:
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(runner, "load_model", started)
    monkeypatch.setattr(train, "train", started)
    monkeypatch.setattr(bench, "run_bench", started)


STUDY_CASES = {
    "a 5000-digit integer": ("seed: 3", f"seed: {BIG}", "study.yaml:9: a number of 5,000 digits"),
    "a 5000-digit hex integer": ("seed: 3", f"seed: 0x{BIG}", "a number of 5,002 digits"),
    "a seed beyond 64 bits": ("seed: 1}", f"seed: {2**64}}}", "model.random_init.seed"),
    "a negative seed": ("seed: 0}", "seed: -1}", "execution.seed"),
    # keys that are not names once ended in a TypeError (an unhashable key) or were misplaced
    "a list as a key": ("name: tiny", "? [a, b]\n: 1\nname: tiny", "study.yaml:1: key [a, b]"),
    "a number as a key": ("  attention: sdpa", "  1: 2", "study.yaml:5: model: key 1"),
    "a mapping as a key": ("name: tiny", "? {a: 1}\n: 1\nname: tiny", "key {a: 1} is a map"),
    # values of the wrong type were once taken as numbers or flags
    "a flag as a count": ("samples: 2", "samples: true", "study.yaml:8: dataset.samples"),
    "a text as a count": ("samples: 2", 'samples: "4"', "study.yaml:8: dataset.samples"),
    "a flag as a window": ("window: 1", "window: true", "study.yaml:16: interventions[0].window"),
    "a binary scalar": ("samples: 2", "samples: !!binary NA==", "8: dataset.samples: a !!binary"),
    "a binary name": ("name: tiny", "name: !!binary dGlueQ==", "study.yaml:1: name: a !!binary"),
    "a date as a seed": ("seed: 3", "seed: 2024-01-01", "9: dataset.seed: a !!timestamp"),
    "a number as a flag": ("seed: 0}", "seed: 0, reuse: 1}", "execution.reuse"),
}


@pytest.mark.parametrize("case", sorted(STUDY_CASES))
def test_hostile_numbers_in_a_study(tmp_path: Path, case: str, nothing_heavy: None) -> None:
    old, new, expected = STUDY_CASES[case]
    text = study_text(layers=2, samples=2)
    assert old in text
    path = tmp_path / "study.yaml"
    path.write_text(text.replace(old, new, 1))
    for schema_only in ([], ["--schema-only"]):
        refused(patchwork_main("validate", path, *schema_only), expected)


SET_CASES = {
    "a 5000-digit value": (f"execution.batch_size={BIG}", "a number of 5,000 digits"),
    "a 5000-digit list index": (f"interventions.{BIG}.window=2", "more than 9 digits"),
    "a superscript index": ("interventions.²=1", "interventions is a list"),
    "a quoted 5000-digit value": (f"execution.batch_size='{BIG}'", "execution.batch_size"),
    **{
        f"{field}={seed}": (f"{field}={seed}", field)
        for field in ("execution.seed", "model.random_init.seed", "dataset.seed")
        for seed in BAD_SEEDS
    },
    "the meta device": ("model.device=meta", "'meta' holds no data"),
    "a NaN window": ("interventions.0.window=.nan", "interventions.0.window"),
    "a flag spelt yes": ("execution.reuse=yes", "--set execution.reuse=yes: execution.reuse"),
    "a quoted count": ("execution.batch_size='4'", "execution.batch_size"),
    "a float count": ("execution.batch_size=4.0", "execution.batch_size"),
    "a number as a key": ("model={1: 2}", "--set model={1: 2}:1: key 1 is a number"),
    "a list as a key": ("model.random_init={[a]: 2}", "key [a] is a list"),
    "a binary value": ("execution.seed=!!binary NA==", "a !!binary value"),
}


def test_overrides_are_read_as_yaml_then_checked_strictly(tiny_study: Path) -> None:
    """A ``--set`` value is text: ``4`` is read as the integer 4, ``true`` as the flag."""
    outcome = patchwork_main(
        "validate", tiny_study, "--schema-only", "--set", "execution.batch_size=4",
        "--set", "execution.reuse=false", "--set", "dataset.max_seconds=30",
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_study_path_that_is_not_a_regular_file_is_refused_unread(
    tmp_path: Path, kind: str
) -> None:
    """``validate /dev/zero`` once read without end, a FIFO waited forever for a writer."""
    path = tmp_path / "study.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    expected = {"directory": "is a directory", "fifo": "is a FIFO", "device": "is a character"}
    for schema_only in ([], ["--schema-only"]):
        refused(
            patchwork_main("validate", path, *schema_only), f"{path}: study file", expected[kind]
        )


def test_a_huge_study_file_is_refused_while_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study file over the bound is refused after reading one byte more than the bound."""
    from patchwork import files

    path = tmp_path / "study.yaml"
    with path.open("wb") as handle:  # sparse: 1 GB on paper, nothing on disk
        handle.truncate(1 << 30)
    asked: list[int] = []
    read = files.read_at_most
    monkeypatch.setattr(files, "read_at_most", lambda p, n: asked.append(n) or read(p, n))
    refused(patchwork_main("validate", path, "--schema-only"), "over 1,000,000 bytes")
    assert asked == [1_000_000]


@pytest.mark.parametrize("case", sorted(SET_CASES))
def test_hostile_overrides(tiny_study: Path, case: str, nothing_heavy: None) -> None:
    assignment, expected = SET_CASES[case]
    for command in ("validate", "plan", "run"):
        line = refused(patchwork_main(command, tiny_study, "--set", assignment), expected)
        assert len(line) < 400, line  # the hostile value is not echoed whole


RUN_OPTIONS = {
    "--seed -1": (["--seed", "-1"], "--seed -1: dataset.seed"),
    "--seed 2**64": (["--seed", str(2**64)], "--seed"),
    "--device meta": (["--device", "meta"], "--device meta: model.device"),
    "--threads 5000": (["--threads", "5000"], "--threads"),
    "--workers 100000": (["--workers", "100000"], "--workers"),
    "--scheduler unclosed IPv6": (["--scheduler", "tcp://[::1"], "--scheduler tcp://[::1"),
    "--scheduler with a path": (["--scheduler", "tcp://host:8786/x"], "tcp://HOST:PORT"),
}


@pytest.mark.parametrize("case", sorted(RUN_OPTIONS))
def test_hostile_run_options(
    tiny_study: Path, tmp_path: Path, case: str, nothing_heavy: None
) -> None:
    options, expected = RUN_OPTIONS[case]
    store = tmp_path / "store"
    refused(patchwork_main("run", tiny_study, "--store", store, *options), expected)
    assert not store.exists()


def test_an_unknown_device_is_refused_before_the_model_is_built(
    tiny_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from patchwork.loading import model

    def built(*arguments: object, **options: object) -> None:
        raise AssertionError("the model was built before its device was checked")

    monkeypatch.setattr(model, "random_thinker", built)
    refused(
        patchwork_main("run", tiny_study, "--store", tmp_path, "--device", "yes"),
        "model.device",
        "device string: yes",
    )


def test_a_store_path_that_is_a_file_is_refused_before_loading(
    tmp_path: Path, nothing_heavy: None
) -> None:
    text = study_text(layers=2, samples=2) + "store: results/tiny.zarr\n"
    study = tmp_path / "study.yaml"
    study.write_text(text)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a store")
    refused(patchwork_main("run", study, "--store", a_file), f"--store {a_file}", "is a file")
    refused(patchwork_main("run", study, "--store", "/dev/null"), "/dev/null is not a folder")
    (tmp_path / "root" / "results").mkdir(parents=True)
    (tmp_path / "root" / "results" / "tiny.zarr").write_text("a file where the store goes")
    line = refused(patchwork_main("run", study, "--store", tmp_path / "root"), "is a file")
    assert line.startswith(f"error: {study}:") and ": store " in line


@pytest.mark.parametrize("out", ["file", "/dev/null", "file/below"])
def test_output_folders_are_checked_before_work_starts(
    tmp_path: Path, out: str, nothing_heavy: None
) -> None:
    """`testbed train --out FILE` once trained to the end and then failed to save."""
    (tmp_path / "file").write_text("")
    path = out if out.startswith("/") else str(tmp_path / out)
    refused(patchwork_main("bench", "--out", path), f"--out {path}")
    refused(
        patchwork_main("testbed", "train", "--out", path, "--stage2-steps", "1", "--fixed-steps"),
        f"--out {path}",
    )
    refused(
        patchwork_main("testbed", "train", "--out", tmp_path / "ok", "--base-out", path),
        f"--base-out {path}",
    )
    assert not (tmp_path / "ok").exists()


def test_the_two_training_outputs_are_two_folders(tmp_path: Path, nothing_heavy: None) -> None:
    """``--out o --base-out o`` once let stage 2 replace stage 1's checkpoint without a word."""
    same = tmp_path / "o"
    refused(
        patchwork_main("testbed", "train", "--out", same, "--base-out", tmp_path / "." / "o"),
        "is the --out folder",
    )


TRAINING_OPTIONS = {
    "--seed -1": (["--seed", "-1"], "--seed"),
    "--seed 2**64": (["--seed", str(2**64)], "--seed"),
    "--time-budget nan": (["--time-budget", "nan"], "--time-budget"),
    "--batch-size 10**6": (["--batch-size", "1000000"], "--batch-size"),
    "--stage2-steps 10**9": (["--stage2-steps", str(10**9)], "--stage2-steps"),
    "--video-access-heads ²:1": (["--video-access-heads", "²:1"], "--video-access-heads"),
    "--video-access-layers 5000 digits": (
        ["--video-access-layers", f"0-{BIG}"],
        "--video-access-layers",
    ),
}


@pytest.mark.parametrize("case", sorted(TRAINING_OPTIONS))
def test_hostile_training_options(tmp_path: Path, case: str, nothing_heavy: None) -> None:
    options, expected = TRAINING_OPTIONS[case]
    refused(patchwork_main("testbed", "train", "--out", tmp_path / "out", *options), expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", BAD_SEEDS)
def test_evaluation_seeds_are_bounded(seed: str) -> None:
    refused(
        patchwork_main("testbed", "eval", "testbed", "--samples", "1", "--seed", seed), "--seed"
    )


def test_the_largest_seed_is_one_torch_and_numpy_take() -> None:
    """The bound is theirs, with room for the small offsets added to seeds (``seed + fold``)."""
    torch.manual_seed(MAX_SEED + 5)
    torch.Generator().manual_seed(MAX_SEED + 5)
    np.random.default_rng([MAX_SEED, 2**31, 7, 99]).random()
    with pytest.raises(ValueError, match="Overflow"):
        torch.manual_seed(2**64)  # what a study once reached
    with pytest.raises(ValueError):
        np.random.default_rng(-1)
    outcome = patchwork_main(
        "validate", SMOKE, "--schema-only", "--set", f"execution.seed={MAX_SEED}"
    )
    assert outcome.code == 0, outcome.stderr


@pytest.mark.parametrize("seed", BAD_SEEDS)
@pytest.mark.parametrize("command", ["locate", "plot"])
def test_analysis_seeds_are_bounded(tmp_path: Path, command: str, seed: str) -> None:
    """``--seed -1`` once reached numpy's generator (a traceback) when the store was there."""
    refused(patchwork_main(command, tmp_path, "--seed", seed), "'--seed'")


EMPTY_PATHS = {
    "run STUDY ''": ["run", ""],
    "validate ''": ["validate", ""],
    "plan ''": ["plan", ""],
    "status ''": ["status", ""],
    "verify ''": ["verify", ""],
    "run --store ''": ["run", "study.yaml", "--store", ""],
    "plot --out ''": ["plot", "x.zarr", "--out", ""],
    "plot ''": ["plot", "", "--out", "figures"],
    "locate ''": ["locate", ""],
    "compare STORE ''": ["compare", "x.zarr", ""],
    "inspect --out ''": ["inspect", "study.yaml", "--sample", "s", "--out", ""],
    "pairs --out ''": ["pairs", "clips", "--out", ""],
    "pairs --words ''": ["pairs", "clips", "--out", "m.jsonl", "--words", ""],
    "bench --out ''": ["bench", "--out", ""],
    "testbed train --out ''": ["testbed", "train", "--out", ""],
    "testbed train --base-out ''": ["testbed", "train", "--out", "ok", "--base-out", ""],
    "testbed train --from-base ''": ["testbed", "train", "--out", "ok", "--from-base", ""],
}


@pytest.mark.parametrize("case", sorted(EMPTY_PATHS))
def test_an_empty_path_is_refused(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch, nothing_heavy: None
) -> None:
    """``Path("")`` is the current folder: ``--out ''`` once wrote figures, ``--store ''`` a
    store, into it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(study_text(layers=2, samples=2))
    refused(patchwork_main(*EMPTY_PATHS[case]), "an empty path")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["study.yaml"]


def test_pillow_s_pixel_count_warning_gives_way_to_max_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12k x 12k image once printed Pillow's DecompressionBombWarning (two lines) before the
    one-line refusal; the bound is ``max_side``, checked from the header (the pixel limit is
    lowered here so that a tiny image stands for the huge one)."""
    import warnings

    from PIL import Image

    from patchwork.data.media import load_frames
    from patchwork.errors import DataError

    path = tmp_path / "big.png"
    Image.new("RGB", (16, 16)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 256 pixels: a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="16x16 pixels, over max_frame_side"):
            load_frames([path], max_side=8)
        assert load_frames([path], max_side=16).shape == (1, 16, 16, 3)


LINKED_OUTPUTS = {
    "inspect": (["inspect", "study.yaml", "--sample", "s", "--out", "out"], "out/frames.png"),
    "bench": (["bench", "--out", "out"], "out/organisms/model.safetensors"),
    "testbed train --out": (["testbed", "train", "--out", "out"], "out/config.json"),
    "testbed train --base-out": (
        ["testbed", "train", "--out", "ok", "--base-out", "out"],
        "out/tokenizer.json",
    ),
    "pairs --out": (["pairs", "clips", "--out", "out/m.jsonl"], "out/m.jsonl"),
    "pairs, the manifest's draft": (
        ["pairs", "clips", "--out", "out/m.jsonl"],
        "out/m.jsonl.partial",
    ),
}


@pytest.mark.parametrize("case", sorted(LINKED_OUTPUTS))
def test_a_file_written_into_an_output_folder_is_never_a_link(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch, nothing_heavy: None
) -> None:
    """`plot --out DIR` once overwrote the file `DIR/heatmap.png` linked to; every command that
    writes into an output folder refuses such a link, naming it, before any work."""
    arguments, link = LINKED_OUTPUTS[case]
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("kept")
    (tmp_path / link).parent.mkdir(parents=True)
    (tmp_path / link).symlink_to(outside)
    refused(patchwork_main(*arguments), f"{link} is a symbolic link (to {outside})")
    assert outside.read_text() == "kept" and not (tmp_path / "ok").exists()
