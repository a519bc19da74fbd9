"""The prompt as the checkpoint's chat template renders it.

A study's question is plain text ("What sound do you hear? Answer with one word."). Where the
checkpoint ships a chat template (``chat_template.json``, ``chat_template.jinja`` or the
tokenizer's ``chat_template``), the question becomes one user turn holding the family's media
(``chat_media``) and the text, after an optional system turn, rendered with the tokenizer's
``apply_chat_template`` and a generation prompt — as the processors' own examples build prompts.
The rendered media block (e.g. ``<|audio_bos|><|AUDIO|><|audio_eos|><|vision_bos|><|VIDEO|>
<|vision_eos|>``) becomes ``{media}``: the adapter expands it to each clip's placeholders as the
family's processor would (:meth:`~patchwork.models.adapter.ModelAdapter.build_inputs`).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from patchwork.errors import ModelError
from patchwork.study.schema import ChatSpec

if TYPE_CHECKING:
    from patchwork.loading.model import LoadedModel

#: Where in the question the media placeholders go (default: before the whole question).
MEDIA_MARKER = "{media}"


def checkpoint_template(loaded: LoadedModel) -> str | None:
    """The chat template the checkpoint ships: the tokenizer's, else the processor's
    ``chat_template.json`` / ``chat_template.jinja`` in its directory; None without one."""
    template: Any = getattr(loaded.tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates
        template = template.get("default")
    if template:
        return str(template)
    source = loaded.adapter.source
    if source is None:
        return None
    if (source / "chat_template.jinja").is_file():
        return (source / "chat_template.jinja").read_text(encoding="utf-8")
    if (source / "chat_template.json").is_file():
        saved = json.loads((source / "chat_template.json").read_text(encoding="utf-8"))
        return str(saved["chat_template"]) if saved.get("chat_template") else None
    return None


def chat_prompt(loaded: LoadedModel, question: str, chat: ChatSpec) -> str:
    """``question`` as the prompt: rendered by the checkpoint's chat template with ``{media}``
    where the media go, or as written (see :class:`~patchwork.study.schema.ChatSpec`).

    Raises:
        patchwork.errors.ModelError: the template is required and missing, the question holds
            ``{media}`` although the template renders the turns, or the adapter or the template
            cannot place the media.
    """
    if chat.template == "none":
        return question
    template = checkpoint_template(loaded)
    if template is None:
        if chat.template == "checkpoint":
            raise ModelError(
                "the checkpoint ships no chat template (chat_template.json, "
                "chat_template.jinja or tokenizer_config.json); write the turns in the question "
                "with '{media}' and set chat.template: none"
            )
        return question
    if MEDIA_MARKER in question:
        if chat.template == "auto":  # the turns are written by hand
            return question
        raise ModelError(
            "the question holds '{media}' but the checkpoint's chat template renders the turns "
            "and places the media: give the question as plain text, or set chat.template: none"
        )
    adapter = loaded.adapter
    if not adapter.chat_media:
        if chat.template == "auto":  # the adapter builds its prompt its own way
            return question
        raise ModelError(
            f"the {adapter.family} adapter cannot place its media in a chat "
            "template; write the turns in the question with '{media}' and set chat.template: none"
        )
    messages: list[dict[str, Any]] = []
    if chat.system is not None:
        messages.append({"role": "system", "content": chat.system})
    content = [{"type": kind} for kind in adapter.chat_media]
    messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
    text = loaded.tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    return _media_as_marker(str(text), loaded)


def _media_as_marker(text: str, loaded: LoadedModel) -> str:
    """``text`` with its media block (from the first media token to the last) as ``{media}``."""
    markers = {
        str(loaded.tokenizer.convert_ids_to_tokens(token))
        for token in loaded.adapter.media_token_ids()
    }
    spans = [match.span() for marker in markers for match in re.finditer(re.escape(marker), text)]
    if not spans:
        raise ModelError(
            "the checkpoint's chat template renders none of the media "
            f"placeholders {sorted(markers)}"
        )
    start, end = min(span[0] for span in spans), max(span[1] for span in spans)
    between = text[start:end]
    for marker in markers:
        between = between.replace(marker, "")
    if between.strip():
        raise ModelError(
            f"the checkpoint's chat template puts text ({between.strip()!r}) "
            "between the media placeholders; write the turns in the question with '{media}' and "
            "set chat.template: none"
        )
    return text[:start] + MEDIA_MARKER + text[end:]
