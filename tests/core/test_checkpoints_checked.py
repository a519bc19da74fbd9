"""Checkpoints checked whatever their format (issue 28, items 2 and 3): every tensor the model
expects present, in its shape and kind, read from the safetensors headers before any weight
loads — at `validate` as at `run`, for testbed-format folders as for plain ones — and every
damaged file of a testbed-format folder one line, exit 2, in every command that reads it.

The header check is compared with what transformers itself reports when it loads the same
folder (its missing-keys report), on the tiny testbed folder and on a plain checkpoint of each
built-in family."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from patchwork.models.checkpoint import missing_tensors, read_config, stored_tensors

from ..families import checkpoints as family_checkpoints
from .hostile import patchwork_main, refused, study_on, tiny_testbed

NOT_LOADED = "weights are not in the safetensors files"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_testbed(tmp_path_factory.mktemp("tiny") / "testbed")


@pytest.fixture
def copy(tiny: Path, tmp_path: Path):
    """A fresh copy of the tiny testbed folder, as ``copy(name)``."""

    def make(name: str = "copy") -> Path:
        return Path(shutil.copytree(tiny, tmp_path / name))

    return make


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """`testbed train` must refuse before training starts."""
    from patchwork.testbed import train

    def refuse(*arguments: object, **options: object) -> None:
        raise AssertionError("training started before the options were checked")

    monkeypatch.setattr(train, "train", refuse)


def rewrite_weights(folder: Path, edit) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    save_file(edit(weights), str(folder / "model.safetensors"), metadata={"format": "pt"})


def every_command(folder: Path, tmp_path: Path) -> dict[str, list[object]]:
    """The commands that read a testbed-format checkpoint folder, by name."""
    study = study_on(tmp_path, folder)
    return {
        "validate": ["validate", study],
        "run": ["run", study, "--store", tmp_path / "store"],
        "testbed eval": ["testbed", "eval", folder, "--samples", "2"],
        "testbed train --from-base": [
            "testbed",
            "train",
            "--out",
            tmp_path / "out",
            "--from-base",
            folder,
            "--fixed-steps",
        ],
    }


def test_a_testbed_folder_without_the_models_tensors_is_refused_everywhere(
    copy, tmp_path: Path, no_training: None
) -> None:
    """It once ran on random weights and exited 0 with a store written."""
    folder = copy()
    rewrite_weights(folder, lambda weights: {"unrelated": torch.zeros(2)})
    for name, arguments in every_command(folder, tmp_path).items():
        line = refused(patchwork_main(*arguments), NOT_LOADED)
        assert str(folder) in line or folder.name in line, (name, line)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("*.zarr"))
    assert not (tmp_path / "out").exists()


def test_the_tiny_folder_passes_every_command(tiny: Path, tmp_path: Path) -> None:
    """The checks refuse nothing that is whole (the refusals below are not a check that refuses
    everything)."""
    for name, arguments in every_command(tiny, tmp_path).items():
        if name.startswith("testbed train"):
            continue  # trains; test_train covers it
        outcome = patchwork_main(*arguments)
        assert outcome.code == 0, (name, outcome.stderr)


DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbled start": lambda data: bytes(b ^ 0x5A for b in data[:64]) + data[64:],
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("file", ["model.safetensors", "patchwork_testbed.json", "tokenizer.json"])
def test_a_damaged_file_is_one_line_in_every_command(
    copy, tmp_path: Path, file: str, damage: str, no_training: None
) -> None:
    folder = copy()
    (folder / file).write_bytes(DAMAGES[damage]((folder / file).read_bytes()))
    for name, arguments in every_command(folder, tmp_path).items():
        line = refused(patchwork_main(*arguments), file)
        assert "error: " in line, name


@pytest.mark.parametrize("testbed_format", [True, False])
def test_a_config_whose_layer_counts_disagree_is_one_line(
    copy, tmp_path: Path, testbed_format: bool
) -> None:
    """transformers' own config check raises a class-validation error (not a ValueError)."""
    folder = copy()
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 1  # layer_types still lists 2
    (folder / "config.json").write_text(json.dumps(config))
    if not testbed_format:
        (folder / "patchwork_testbed.json").unlink()
    study = study_on(tmp_path, folder)
    for command in (["validate", study], ["plan", study], ["run", study, "--store", tmp_path]):
        refused(patchwork_main(*command), "config.json", "num_hidden_layers")


def test_validate_reads_the_headers_of_a_testbed_folder(copy, tmp_path: Path) -> None:
    """`validate` once said ok to a testbed folder whose weights file was cut short."""
    folder = copy()
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-10])
    refused(
        patchwork_main("validate", study_on(tmp_path, folder)),
        "model.checkpoint",
        "damaged safetensors file",
    )


def test_misshapen_and_mistyped_tensors_are_refused(copy, tmp_path: Path) -> None:
    """A tensor of another shape (transformers raises at load; patchwork says so at validate) and
    a floating-point weight stored as integers (transformers loads it silently, cast)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    shaped, typed = copy("shaped"), copy("typed")
    rewrite_weights(shaped, lambda w: {**w, "model.norm.weight": torch.ones(5)})
    rewrite_weights(typed, lambda w: {**w, "model.norm.weight": torch.ones(32, dtype=torch.int64)})
    refused(
        patchwork_main("validate", study_on(tmp_path, shaped)),
        "mismatched sizes",
        "model.norm.weight",
    )
    with pytest.raises(RuntimeError, match="size mismatch|mismatched"):
        Thinker.from_pretrained(shaped)
    _, info = Thinker.from_pretrained(typed, output_loading_info=True)
    assert not any(info.values()), "transformers reports nothing for integer weights"
    refused(patchwork_main("validate", study_on(tmp_path, typed)), "stored as I64")


def _plain_folders(root: Path) -> dict[str, Path]:
    return {
        "qwen2_5_omni": family_checkpoints.qwen2_5_omni_checkpoint(root / "qwen2_5_omni"),
        "qwen3_omni": family_checkpoints.qwen3_omni_checkpoint(root / "qwen3_omni"),
        "gemma3n": family_checkpoints.gemma3n_checkpoint(root / "gemma3n"),
    }


@pytest.fixture(scope="module")
def folders(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"testbed": tiny, **_plain_folders(tmp_path_factory.mktemp("families"))}


def _family_model(family: str, folder: Path):
    """The model class transformers loads the folder into, and the folder's empty model."""
    from patchwork.loading.model import adapter_class
    from patchwork.models.adapter import empty_model
    from patchwork.study.specs import ModelSpec

    config = read_config(folder)
    if family == "testbed":
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

        return Thinker, empty_model(Thinker, config)
    adapter = adapter_class(ModelSpec(family=family, checkpoint=str(folder)))
    empty = adapter.empty(folder, config)
    return type(empty), empty


@pytest.mark.parametrize("family", ["testbed", "qwen2_5_omni", "qwen3_omni", "gemma3n"])
@pytest.mark.parametrize("dropped", [0, 1, 7, "all"])
def test_the_header_check_agrees_with_transformers_report(
    folders: dict[str, Path], tmp_path: Path, family: str, dropped: int | str
) -> None:
    """Drop some stored tensors (seeded): the header check names exactly those, and transformers,
    loading the same folder, reports missing weights exactly when it does (as many, but for the
    mixture-of-experts family, whose per-expert tensors transformers merges into one: there it
    fails to merge, or reports the merged tensor)."""
    folder = Path(shutil.copytree(folders[family], tmp_path / family))
    names = sorted(load_file(str(folder / "model.safetensors")))
    count = len(names) if dropped == "all" else int(dropped)
    gone = set(random.Random(count).sample(names, count))
    rewrite_weights(
        folder,
        lambda w: {k: v for k, v in w.items() if k not in gone} or {"unrelated": torch.zeros(1)},
    )
    model_class, empty = _family_model(family, folder)
    assert set(missing_tensors(empty, stored_tensors(folder))) == gone

    try:
        _, info = model_class.from_pretrained(folder, output_loading_info=True)
    except RuntimeError:  # an expert's tensor missing: transformers cannot merge the others
        assert family == "qwen3_omni" and gone
        return
    tied = set(getattr(empty, "all_tied_weights_keys", None) or ())  # reported with their source
    reported = set(info["missing_keys"]) - tied
    assert bool(reported) == bool(gone)
    if family != "qwen3_omni":
        assert len(reported) == len(gone)
