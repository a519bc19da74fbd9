"""A checkpoint's chat template renders the prompt, and the placeholders are expanded as the
family's processor expands them.

The reference is the processor's own recipe on the published Qwen2.5-Omni chat template
(``tests/fixtures/published_configs``): render the conversation with ``apply_chat_template``,
repeat each ``<|AUDIO|>`` / ``<|VIDEO|>`` by the processor's counts, tokenize the whole text.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from patchwork.errors import ModelError, PatchworkError
from patchwork.loading.manifest import load_manifest
from patchwork.loading.model import load_model
from patchwork.study import load_study

from .builders import family_study

TEMPLATE = Path(__file__).parents[1] / "fixtures/published_configs/qwen2_5_omni_chat_template.jinja"
QUESTION = "What do you hear? Answer with one word."


@pytest.fixture(scope="module")
def templated(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2.5-Omni checkpoint with the published chat template beside it."""
    folder = tmp_path_factory.mktemp("templated") / "checkpoint"
    shutil.copytree(checkpoint("qwen2_5_omni"), folder)
    shutil.copy(TEMPLATE, folder / "chat_template.jinja")
    return folder


def _samples(folder: Path, checkpoint: Path, media: Path, chat: str, question: str = QUESTION):
    path = family_study(folder, "qwen2_5_omni", checkpoint, media, audio_in_video=False)
    text = path.read_text().replace("question: what do you hear", f'question: "{question}"')
    path.write_text(text + chat)
    study = load_study(path)
    loaded = load_model(study.model, weights=False)
    return load_manifest(study, loaded), loaded


@pytest.mark.parametrize("system", [None, "what do you hear"])
def test_the_prompt_is_the_templates_with_the_processors_placeholders(
    templated: Path, family_root: Path, tmp_path: Path, system: str | None
) -> None:
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
        _get_feat_extract_output_lengths,
    )

    chat = "chat: {template: checkpoint" + (f", system: {system}" if system else "") + "}\n"
    samples, loaded = _samples(tmp_path, templated, family_root / "media", chat)
    tokenizer = loaded.tokenizer
    messages = [{"role": "system", "content": system}] if system else []
    content = [{"type": "audio"}, {"type": "video"}, {"type": "text", "text": QUESTION}]
    rendered = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": content}],
        chat_template=TEMPLATE.read_text(),
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    for sample in samples:
        for run in sample.runs.values():
            frames = int(run["feature_attention_mask"].sum())
            audio = int(_get_feat_extract_output_lengths(torch.tensor(frames)))
            video = int(run["video_grid_thw"].prod()) // 4
            expanded = rendered.replace("<|AUDIO|>", "<|AUDIO|>" * audio).replace(
                "<|VIDEO|>", "<|VIDEO|>" * video
            )
            expected = tokenizer(expanded, add_special_tokens=False)["input_ids"]
            assert run["input_ids"][0].tolist() == expected


def test_a_hand_written_prompt_is_kept_under_auto(
    templated: Path, family_root: Path, tmp_path: Path
) -> None:
    question = "<|im_start|>user {media}what do you hear<|im_end|> <|im_start|>assistant"
    samples, loaded = _samples(tmp_path, templated, family_root / "media", "", question)
    ids = samples[0].runs["clean"]["input_ids"][0].tolist()
    # the hand-written user turn first, no system turn from the template
    assert ids[:2] == loaded.token_ids("<|im_start|>user")
    assert ids[-2:] == loaded.token_ids("<|im_start|>assistant")


def test_a_required_template_that_is_missing_is_one_clear_error(
    checkpoint, family_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match=r"\.yaml:\d+: chat\.template: the checkpoint ships no"):
        _samples(
            tmp_path,
            checkpoint("qwen2_5_omni"),
            family_root / "media",
            "chat: {template: checkpoint}\n",
        )


def test_media_in_the_question_and_a_template_are_refused(
    templated: Path, family_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(PatchworkError, match="holds '\\{media\\}'"):
        _samples(
            tmp_path,
            templated,
            family_root / "media",
            "chat: {template: checkpoint}\n",
            "{media}what do you hear",
        )
