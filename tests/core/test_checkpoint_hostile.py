"""Hostile checkpoint folders (issue 28, item 3: checkpoints checked whatever their format), each
found by a hostile-input campaign on main, each now one line and exit 2 from the files alone:
negative or absurd sizes in ``config.json``, a ``tokenizer.json`` that transformers reads into a
bare ``KeyError``, renamed weights, a shard index naming a missing shard, a FIFO where a file
belongs — and a model that cannot fit the device, refused by ``run`` before it is built, with the
estimate ``plan`` prints."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from patchwork.models.checkpoint import missing_tensors, stored_tensors

from .hostile import patchwork_main, refused, study_on, tiny_testbed

FORMATS = ["testbed", "plain"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_testbed(tmp_path_factory.mktemp("tiny") / "testbed")


@pytest.fixture
def copy(tiny: Path, tmp_path: Path):
    """A fresh copy of the tiny folder as ``copy(form)``: testbed-format, or plain (without
    ``patchwork_testbed.json``)."""

    def make(form: str = "testbed") -> Path:
        folder = Path(shutil.copytree(tiny, tmp_path / form))
        if form == "plain":
            (folder / "patchwork_testbed.json").unlink()
        return folder

    return make


#: Opens each FIFO named for writing, again and again after a grace period, and closes it.
UNBLOCK = """
import os, sys, time
time.sleep(20)
while True:
    for path in sys.argv[1:]:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader waiting
            pass
    time.sleep(0.5)
"""


@pytest.fixture
def fifo():
    """``fifo(path)``: a FIFO made at ``path``. Should a reader ever open it (a regression), a
    writer in another process opens it after a while and closes it again, so that the reader
    gets an empty file and the test fails on its message instead of hanging (the readers wait
    in Rust or C, holding the GIL: no signal handler or thread of this process would run)."""
    writers: list[subprocess.Popen[bytes]] = []

    def make(path: Path) -> Path:
        os.mkfifo(path)
        writers.append(subprocess.Popen([sys.executable, "-c", UNBLOCK, str(path)]))
        return path

    yield make
    for writer in writers:
        writer.kill()
        writer.wait()


def commands(folder: Path, tmp_path: Path) -> dict[str, list[object]]:
    study = study_on(tmp_path, folder)
    return {
        "validate": ["validate", study],
        "plan": ["plan", study],
        "run": ["run", study, "--store", tmp_path / "store"],
    }


def edit_config(folder: Path, field: str, value: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    *parents, key = field.split(".")
    where = config
    for parent in parents:
        where = where[parent]
    where[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def rewrite_weights(folder: Path, edit) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    save_file(edit(weights), str(folder / "model.safetensors"), metadata={"format": "pt"})


# 1. sizes in config.json


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text_config.vocab_size", -5),
        ("text_config.intermediate_size", -5),  # once a RuntimeError from torch
        ("audio_config.d_model", -1),
        ("vision_config.depth", 10**9),
        ("text_config.num_hidden_layers", 10**9),  # once building for hours (its layer_types too)
    ],
)
def test_negative_and_absurd_sizes_are_one_line_naming_the_field(
    copy, tmp_path: Path, form: str, field: str, value: int
) -> None:
    folder = copy(form)
    edit_config(folder, field, value)
    if field.endswith("num_hidden_layers"):
        edit_config(folder, "text_config.layer_types", None)
    for name, command in commands(folder, tmp_path).items():
        line = refused(patchwork_main(*command), f"{folder / 'config.json'}: {field}: ")
        assert str(value) in line, name


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("text_config.rope_parameters.mrope_section", [1, 1, 1], "mrope_section: expected"),
        ("text_config.rope_parameters.mrope_section", [-4, 10, 10], "mrope_section: expected"),
        ("text_config.rope_parameters.mrope_section", "wide", "mrope_section: expected"),
        ("audio_token_index", 10**6, "audio_token_index: expected a token id of the vocabulary"),
        ("video_token_index", -1, "video_token_index: expected a token id of the vocabulary"),
    ],
)
def test_what_the_first_forward_would_fail_on_is_config_json_s_problem(
    copy, tmp_path: Path, form: str, field: str, value: object, named: str
) -> None:
    """A rotary split that does not cover half a head, or a placeholder id beyond the
    vocabulary, passed validate and failed in the first forward (or at the first sample)."""
    folder = copy(form)
    edit_config(folder, field, value)
    for command in commands(folder, tmp_path).values():
        refused(patchwork_main(*command), f"{folder / 'config.json'}: ", named)


def test_no_default_config_of_transformers_is_refused() -> None:
    """The bounds refuse no model transformers knows, as its config class writes it by default
    (over 800: experts counted in the ten thousands, a head_dim of 0 for "derived", -1 for
    "unset", a shared-expert width of 0); about 13 s here."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from patchwork.models.checkpoint_files import check_values

    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in list(CONFIG_MAPPING.keys()):
            try:
                config = CONFIG_MAPPING[model_type]().to_dict()
            except Exception:  # noqa: BLE001 - a config class without defaults: nothing to check
                continue
            check_values(config, Path(model_type))
            checked += 1
    assert checked > 500


def test_sizes_a_config_may_leave_unset_pass(copy, tmp_path: Path) -> None:
    """-1 is "unset" in some configs (a size that is no width and no count of modules)."""
    folder = copy("plain")
    edit_config(folder, "text_config.chunk_size", -1)
    assert patchwork_main("validate", study_on(tmp_path, folder)).code == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("vision_config.hidden_size", 2**31 - 1), ("audio_config.num_mel_bins", 0)],
)
def test_sizes_within_bounds_that_torch_cannot_build_are_one_line(
    copy, tmp_path: Path, field: str, value: int
) -> None:
    """Once a RuntimeError from torch (a storage size that overflows), and a warning of
    zero-element tensors printed before the refusal."""
    folder = copy("plain")
    edit_config(folder, field, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(patchwork_main("validate", study_on(tmp_path, folder)), "config.json")
    assert not [w for w in caught if "zero-element" in str(w.message)]


def _size_fields(config: dict, parents: tuple[str, ...] = ()) -> list[str]:
    from patchwork.models.checkpoint_files import SIZE_KEY

    found = []
    for key, value in config.items():
        if isinstance(value, dict):
            found += _size_fields(value, (*parents, key))
        elif isinstance(value, int) and not isinstance(value, bool) and SIZE_KEY.search(key):
            found.append(".".join((*parents, key)))
    return found


@settings(
    deadline=None,
    derandomize=True,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.data(),
    st.sampled_from(FORMATS),
    st.sampled_from([-(2**63), -2, -1, 0, 1, 2, 3, 7, 1023, 1024, 1025, 2**20, 2**31 - 1, 2**31])
    | st.integers(-(2**40), 2**40),
)
def test_any_size_in_config_ends_well_or_in_one_line(
    tiny: Path, data: st.DataObject, form: str, value: int
) -> None:
    """Fuzzing (issue 28, item 5): one size of the tiny folder's config.json set to anything;
    `validate` ends in success or in one line (budget: 40 cases, about 10 s here)."""
    field = data.draw(st.sampled_from(_size_fields(json.loads((tiny / "config.json").read_text()))))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(tiny, Path(scratch) / form))
        if form == "plain":
            (folder / "patchwork_testbed.json").unlink()
        edit_config(folder, field, value)
        outcome = patchwork_main("validate", study_on(Path(scratch), folder))
        if outcome.code != 0:
            refused(outcome)


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("text_config.rms_norm_eps", float("nan"), "expected a finite number; got nan"),
        ("text_config.rope_parameters.rope_theta", float("inf"), "expected a finite number"),
        ("dtype", "float128", "expected the name of a torch dtype"),  # once an AttributeError
        ("text_config.dtype", "zeros", "expected the name of a torch dtype"),
    ],
)
def test_a_config_value_no_model_means_is_one_line_naming_the_field(
    copy, tmp_path: Path, form: str, field: str, value: object, named: str
) -> None:
    """A NaN ``rms_norm_eps`` passed validate and ran to NaN effects (``testbed eval``: a table
    of NaN); a dtype torch does not know was transformers' ``AttributeError``."""
    folder = copy(form)
    edit_config(folder, field, value)
    outcomes = {
        name: patchwork_main(*command) for name, command in commands(folder, tmp_path).items()
    }
    if form == "testbed":
        outcomes["eval"] = patchwork_main("testbed", "eval", folder, "--samples", 2, "--no-probes")
    for outcome in outcomes.values():
        refused(outcome, f"{folder / 'config.json'}: {field}: {named}")


def test_an_infinite_limit_as_transformers_writes_it_passes() -> None:
    """transformers' own default ``time_step_limit`` (Mamba-2 and kin) is ``(0.0, inf)``."""
    from patchwork.models.checkpoint_files import check_values

    check_values({"time_step_limit": [0.0, float("inf")], "dtype": "bfloat16"}, Path("c.json"))


# 2. tokenizer.json


@pytest.mark.parametrize("form", FORMATS)
def test_a_tokenizer_json_of_the_wrong_shape_is_one_line(copy, tmp_path: Path, form: str) -> None:
    """transformers raised a bare KeyError('added_tokens') on it (plain folders)."""
    folder = copy(form)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    for command in commands(folder, tmp_path).values():
        refused(patchwork_main(*command), f"{folder / 'tokenizer.json'}: not a readable tokenizer")


def test_a_tokenizer_json_without_its_added_tokens_is_refused(copy, tmp_path: Path) -> None:
    """The specials left in the vocabulary but not added as special tokens: passed `validate`,
    `run` and `testbed eval`, though a text holding ``<|AUDIO|>`` would read it as three
    unknown words."""
    folder = copy("testbed")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = []
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    outcomes = [patchwork_main(*command) for command in commands(folder, tmp_path).values()]
    outcomes.append(patchwork_main("testbed", "eval", folder, "--samples", 2, "--no-probes"))
    for outcome in outcomes:
        refused(outcome, f"{folder / 'tokenizer.json'}: the testbed's special tokens ['<pad>'")


# 3. renamed weights


@pytest.mark.parametrize("form", FORMATS)
def test_renamed_weights_are_refused_at_validate_plan_and_run(
    copy, tmp_path: Path, form: str
) -> None:
    """Every key prefixed with ``x.``: once accepted by `validate` (any common prefix matched),
    then transformers' 126-line load report at `run`."""
    folder = copy(form)
    rewrite_weights(folder, lambda weights: {f"x.{k}": v for k, v in weights.items()})
    for name, command in commands(folder, tmp_path).items():
        line = refused(
            patchwork_main(*command),
            "weights are not in the safetensors files",
            "(model.safetensors)",
            "does not expect, e.g. x.",
        )
        count = re.search(r"(\d+) of the model's (\d+) weights", line)
        assert count and count[1] == count[2], (name, line)  # all of them
        assert re.search(r"missing e\.g\. [a-z_]+\.", line), (name, line)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


@pytest.mark.parametrize(("prefix", "accepted"), [("x.", False), ("thinker.", True)])
def test_the_header_check_strips_the_prefixes_transformers_strips(
    copy, prefix: str, accepted: bool
) -> None:
    """A full omni checkpoint's ``thinker.`` is stripped by transformers' loader; another prefix
    is not, and the header check agrees with transformers on both."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    from patchwork.models.adapter import empty_model
    from patchwork.models.checkpoint import read_config

    folder = copy()
    rewrite_weights(folder, lambda weights: {prefix + k: v for k, v in weights.items()})
    empty = empty_model(Thinker, read_config(folder))
    missing = missing_tensors(empty, stored_tensors(folder))
    _, info = Thinker.from_pretrained(folder, output_loading_info=True)
    assert (not missing) is accepted
    assert (not info["missing_keys"]) is accepted


@pytest.mark.parametrize("form", FORMATS)
def test_transformers_load_report_is_withheld_where_patchwork_checked(
    copy, tmp_path: Path, form: str
) -> None:
    """An extra tensor beside every expected one passes the check; transformers' report of it
    (a table of names, logged as a warning) is not printed."""
    folder = copy(form)
    rewrite_weights(folder, lambda weights: {**weights, "extra.weight": torch.zeros(2)})
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        outcome = patchwork_main("run", study_on(tmp_path, folder), "--store", tmp_path)
    finally:
        logger.removeHandler(handler)
    assert outcome.code == 0, outcome.stderr
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]


@pytest.mark.parametrize("form", FORMATS)
def test_non_finite_weights_are_refused_where_they_are_loaded(
    copy, tmp_path: Path, form: str
) -> None:
    """NaN weights in layer 0's MLP: `run` computed every unit before refusing its NaN effects
    with a message that named no file, `testbed eval` printed a table of accuracies on them.
    The headers cannot tell (`validate` reads no weight), the load refuses, naming the tensor."""

    def poisoned(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name in weights:
            if "layers.0.mlp" in name:
                weights[name] = torch.full_like(weights[name], float("nan"))
        return weights

    folder = copy(form)
    rewrite_weights(folder, poisoned)
    outcomes = [patchwork_main("run", study_on(tmp_path, folder), "--store", tmp_path / "store")]
    if form == "testbed":
        outcomes.append(patchwork_main("testbed", "eval", folder, "--samples", 2, "--no-probes"))
    for outcome in outcomes:
        line = refused(outcome, f"{folder / 'model.safetensors'}: tensor ", "NaN or infinite")
        assert re.search(r"tensor model\.layers\.0\.mlp\.\w+\.weight ", line), line
    assert not list((tmp_path / "store").glob("**/done/c/*"))  # no unit written


# 4. sharded checkpoints


def shard(folder: Path) -> list[str]:
    """Split the folder's weights into two shards and an index, as transformers writes them."""
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    for file, half in zip(files, halves, strict=True):
        save_file({k: weights[k] for k in half}, str(folder / file), metadata={"format": "pt"})
    weight_map = {k: file for file, half in zip(files, halves, strict=True) for k in half}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return files


@pytest.mark.parametrize("form", FORMATS)
def test_an_index_naming_a_missing_shard_is_refused_naming_it(
    copy, tmp_path: Path, form: str
) -> None:
    folder = copy(form)
    files = shard(folder)
    study = study_on(tmp_path, folder)
    assert patchwork_main("validate", study).code == 0  # whole, sharded: fine
    (folder / files[1]).unlink()
    for command in commands(folder, tmp_path).values():
        refused(
            patchwork_main(*command),
            "model.safetensors.index.json names the shard",
            f"{files[1]}, which is missing",
        )


def test_an_index_naming_a_file_outside_the_folder_is_refused(copy, tmp_path: Path) -> None:
    folder = copy("plain")
    shard(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(
        patchwork_main("validate", study_on(tmp_path, folder)),
        "weight_map.lm_head.weight: expected a file name in this folder",
    )


# 5. files that are not regular files


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("file", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_fifo_in_the_folder_is_refused_without_being_opened(
    copy, tmp_path: Path, form: str, file: str, fifo
) -> None:
    """A FIFO named model.safetensors once made `validate` wait for ever."""
    folder = copy(form)
    (folder / file).unlink()
    fifo(folder / file)
    refused(
        patchwork_main("validate", study_on(tmp_path, folder)),
        f"{folder / file} is a FIFO (named pipe), not a regular file",
    )


# 6. a model that cannot fit the device


@pytest.fixture
def device_of(monkeypatch: pytest.MonkeyPatch):
    """``device_of(size)``: every device holds ``size`` bytes. A tiny model is then "at the
    limits" without a machine's worth of memory at stake should the refusal ever fail."""
    from patchwork.engine import cost
    from patchwork.models import memory

    def holding(size: int) -> None:
        monkeypatch.setattr(memory, "device_memory", lambda device: ("cpu (RAM)", size))
        monkeypatch.setattr(cost, "device_memory", memory.device_memory)

    return holding


def random_init_study(folder: Path) -> Path:
    path = folder / "random.yaml"
    path.write_text(
        """\
name: random
model:
  family: qwen2_5_omni
  random_init: {layers: 2, hidden_size: 64, heads: 2, kv_heads: 1}
dataset: {generator: random, samples: 2, seed: 0}
interventions:
  - kind: activation_patching
    components: [residual]
    layers: '0-1'
    position_groups: [answer]
    noise_floor: none
execution: {batch_size: 8, unit_size: 2, seed: 0}
"""
    )
    return path


def test_run_refuses_a_random_init_model_plan_says_does_not_fit(
    tmp_path: Path, device_of, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plan` said "fits: NO" and `run` went on to build the model (out of memory at the
    schema's limits); it now refuses before building, quoting plan's estimate of the weights."""
    from patchwork.loading import model as loading

    device_of(2**19)
    study = random_init_study(tmp_path)
    plan = patchwork_main("plan", study)
    assert plan.code == 0, plan.stderr
    weights = re.search(r"weights\s*│\s*([\d.]+ [MG]iB)", plan.stdout)
    assert weights and re.search(r"fits\s*│\s*NO", plan.stdout), plan.stdout

    built = []
    build = loading.random_thinker

    def counted(*arguments: object, **options: object) -> torch.nn.Module:
        built.append(torch.get_default_device())
        return build(*arguments, **options)

    monkeypatch.setattr(loading, "random_thinker", counted)
    line = refused(
        patchwork_main("run", study, "--store", tmp_path / "store"),
        "model.random_init: the model's weights take",
        f"{weights[1]} in float32 (the estimate of `patchwork plan`), more than cpu (RAM) holds",
    )
    assert "(0.5 MiB)" in line
    assert all(device.type == "meta" for device in built), "a model was built with its weights"
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


@pytest.mark.parametrize("form", FORMATS)
def test_run_refuses_a_checkpoint_beyond_the_device_before_loading_it(
    copy, tmp_path: Path, form: str, device_of
) -> None:
    device_of(2**16)
    refused(
        patchwork_main("run", study_on(tmp_path, copy(form)), "--store", tmp_path / "store"),
        "model.checkpoint: the model's weights take",
        "more than cpu (RAM) holds",
    )
