"""Study files: valid ones load; every malformed one names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchwork import StudyError, load_study, parse_study
from patchwork.study import study_hash

from .helpers import SMOKE, study_text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(StudyError) as caught:
        load_study(write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_smoke_study_loads_with_defaults() -> None:
    study = load_study(SMOKE)
    assert study.name == "smoke"
    assert study.patching.source == "clean" and study.patching.target == "conflict"
    assert study.patching.layers == "all"
    assert study.model.trust_remote_code is False
    assert study.text.startswith("# A smoke run")


def test_layer_lists_and_ranges_are_expanded(tmp_path: Path) -> None:
    text = study_text().replace("layers: all", "layers: [0, '2-4', 7]")
    assert load_study(write(tmp_path, text)).patching.layers == (0, 2, 3, 4, 7)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    text = study_text().replace("samples: 3", "samples: [3")
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'study.yaml'}:")
    assert "malformed YAML" in message


def test_unknown_key_names_line_and_field(tmp_path: Path) -> None:
    text = study_text().replace("    noise_floor:", "    colour: red\n    noise_floor:")
    message = error_of(tmp_path, text)
    line = text.splitlines().index("    colour: red") + 1
    assert f"study.yaml:{line}: interventions[0].colour: unknown key" in message


def test_wrong_type_names_line_field_and_value(tmp_path: Path) -> None:
    text = study_text().replace("window: 1", "window: two")
    message = error_of(tmp_path, text)
    line = text.splitlines().index("    window: two") + 1
    assert f":{line}: interventions[0].window:" in message
    assert "'two'" in message


def test_missing_required_section(tmp_path: Path) -> None:
    text = study_text().split("dataset:")[0]
    assert "dataset: required field is missing" in error_of(tmp_path, text)


def test_bad_layer_range(tmp_path: Path) -> None:
    text = study_text().replace("layers: all", "layers: ['5-2']")
    assert "ends before it starts" in error_of(tmp_path, text)


def test_unknown_run_is_refused(tmp_path: Path) -> None:
    text = study_text().replace("from: clean", "from: pristine")
    assert "pristine" in error_of(tmp_path, text)


def test_python_tags_are_refused(tmp_path: Path) -> None:
    text = study_text().replace("name: tiny", "name: !!python/object/apply:os.system ['true']")
    message = error_of(tmp_path, text)
    assert ":1:" in message and "python/object" in message


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = study_text() + "name: again\n"
    assert "duplicate key" in error_of(tmp_path, text)


def test_missing_study_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")


def test_checkpoint_xor_random_init(tmp_path: Path) -> None:
    text = study_text().replace("  attention:", "  checkpoint: testbed\n  attention:")
    assert "exactly one of 'checkpoint' or 'random_init'" in error_of(tmp_path, text)


def test_hash_ignores_formatting_but_not_content() -> None:
    base = parse_study(study_text())
    reformatted = parse_study("# comment\n" + study_text().replace("seed: 3", "seed:   3"))
    changed = parse_study(study_text(samples=4))
    assert study_hash(base) == study_hash(reformatted)
    assert study_hash(base) != study_hash(changed)


def test_manifest_path_is_relative_to_the_study(tmp_path: Path) -> None:
    text = study_text().replace("generator: random", "manifest: data/m.jsonl")
    assert load_study(write(tmp_path, text)).dataset.manifest == tmp_path / "data" / "m.jsonl"


BOMBS = {
    "billion laughs": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)
    )
    + "name: bomb\n",
    "recursive alias": "name: &r [*r]\n",
    "deep nesting": "name: " + "[" * 5000 + "]" * 5000 + "\n",
    "too large": "name: x\n" + "# padding\n" * 120_000,
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_hostile_yaml_is_refused_before_anything_is_built(case: str) -> None:
    """Aliases, deep nesting and huge files are refused from the event stream (an alias bomb
    otherwise expands exponentially in validation, deep nesting overflows the recursion)."""
    with pytest.raises(StudyError, match=r"^<study>(:\d+)?: (YAML aliases|nested|[\d,]+ bytes)"):
        parse_study(BOMBS[case])


def test_an_override_cannot_smuggle_an_alias() -> None:
    with pytest.raises(StudyError, match=r"--set model\.device=\[&a x, \*a\]:1: YAML aliases"):
        parse_study(study_text(), overrides=["model.device=[&a x, *a]"])


@pytest.mark.parametrize("method", ["attribution", "attribution+verify"])
def test_attribution_over_a_window_of_layers_is_refused(tmp_path: Path, method: str) -> None:
    text = study_text().replace("window: 1", f"window: 2\n    method: {method}")
    message = error_of(tmp_path, text)
    assert ": interventions[0].method:" in message and "window 2 needs method: exact" in message
    parse_study(study_text().replace("window: 1", f"window: 1\n    method: {method}"))
    parse_study(study_text().replace("window: 1", "window: 2\n    method: exact"))


UNCLOSED = {
    "bracket": ("name: x\nmodel: [a, b\ndataset: {}\n", 2, "'[' opened here is not closed"),
    "bracket at the end": ("name: x\nmodel: [a, b\n", 2, "'[' opened here is not closed"),
    "brace": ("name: x\nmodel: {family: a\ndataset: {}\n", 2, "'{' opened here is not closed"),
    "quote": ("name: x\ndescription: 'a\nmodel: {}\n", 2, "the quote opened here is not closed"),
}


@pytest.mark.parametrize("case", sorted(UNCLOSED))
def test_an_unclosed_bracket_or_quote_is_reported_where_it_opened(
    tmp_path: Path, case: str
) -> None:
    text, line, problem = UNCLOSED[case]
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'study.yaml'}:{line}: malformed YAML: {problem} (line ")


def test_a_mistake_inside_a_construct_is_reported_at_the_mistake(tmp_path: Path) -> None:
    text = study_text() + "name: again\n"  # a duplicate key: its own line, not the mapping's
    line = len(text.splitlines())
    assert f"study.yaml:{line}: malformed YAML: found duplicate key" in error_of(tmp_path, text)


MISSPELT = {
    "a section (required)": (("model:", "modle:"), "modle", "model"),
    "a section (optional)": (("execution:", "exectuion:"), "exectuion", "execution"),
    "a field": (("  seed: 3", "  sede: 3"), "dataset.sede", "seed"),
    "an intervention's field": (("window: 1", "windw: 1"), "interventions[0].windw", "window"),
    "an alias": (("from: clean", "form: clean"), "interventions[0].form", "from"),
    "a field of random_init": (
        ("hidden_size: 32", "hiden_size: 32"),
        "model.random_init",
        "hidden_size",
    ),
}


@pytest.mark.parametrize("case", sorted(MISSPELT))
def test_a_misspelt_key_names_the_closest_allowed_one(tmp_path: Path, case: str) -> None:
    (spelt, misspelt), field, meant = MISSPELT[case]
    text = study_text().replace(spelt, misspelt, 1)
    message = error_of(tmp_path, text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if misspelt.strip() in row)
    assert message.startswith(f"{tmp_path / 'study.yaml'}:{line}: {field}")
    assert message.endswith(f"unknown key; did you mean {meant!r}?")


def test_an_unknown_key_like_no_allowed_one_gets_no_guess(tmp_path: Path) -> None:
    text = study_text().replace("  seed: 3", "  seed: 3\n  colour: red")
    message = error_of(tmp_path, text)
    assert message.endswith(
        "dataset.colour: unknown key (check its spelling against the study-file reference)"
    )


BAD_OVERRIDES = {
    "modle.dtype=float16": "--set modle.dtype=float16: modle: unknown key; did you mean 'model'?",
    "model.dtyp=float16": "--set model.dtyp=float16: model.dtyp: unknown key; did you mean "
    "'dtype'?",
    "execution.reuse.deep=1": "--set execution.reuse.deep=1: execution.reuse:",
    "exectuion.retry.count=2": "--set exectuion.retry.count=2: exectuion: unknown key; did you "
    "mean 'execution'?",
}


@pytest.mark.parametrize("override", sorted(BAD_OVERRIDES))
def test_a_bad_override_is_named_not_the_file(tmp_path: Path, override: str) -> None:
    with pytest.raises(StudyError) as caught:
        load_study(write(tmp_path, study_text()), overrides=[override])
    assert str(caught.value).startswith(BAD_OVERRIDES[override])


def test_one_field_set_twice_to_different_values_is_refused() -> None:
    """Fourth campaign, attacks 2300 and 2303: the last value silently won."""
    twice = ["dataset.samples=4", "dataset.samples = 8"]
    with pytest.raises(StudyError, match="give one field two values; give it once"):
        parse_study(study_text(), overrides=twice)
    same = parse_study(study_text(), overrides=["dataset.samples=4", "dataset.samples=4"])
    assert same.dataset.samples == 4


def test_a_misspelt_key_in_the_file_is_not_blamed_on_an_override(tmp_path: Path) -> None:
    text = study_text().replace("  seed: 3", "  sede: 3")
    with pytest.raises(StudyError) as caught:
        load_study(write(tmp_path, text), overrides=["dataset.samples=4"])
    assert str(caught.value).startswith(f"{tmp_path / 'study.yaml'}:")
    assert "dataset.sede: unknown key; did you mean 'seed'?" in str(caught.value)


def test_what_changed_compares_the_manifest_as_a_resolved_path(tmp_path: Path) -> None:
    from patchwork.study import describe_changes

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.jsonl").write_text('{"id": "a"}\n')
    text = study_text().replace("generator: random", "manifest: data/m.jsonl")
    stored = load_study(write(tmp_path, text))
    assert describe_changes(stored.text, stored) == ""
    wider = load_study(write(tmp_path, text.replace("window: 1", "window: 2")))
    assert describe_changes(stored.text, wider) == "changed: interventions[0].window"
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "m.jsonl").write_text('{"id": "a"}\n')
    elsewhere = load_study(write(tmp_path, text.replace("data/m.jsonl", "elsewhere/m.jsonl")))
    assert describe_changes(stored.text, elsewhere) == "changed: dataset.manifest.path"
