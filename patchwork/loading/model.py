"""Load the model a study names: the shipped testbed, a local checkpoint, or a random-init config.

Checkpoints load from local directories only (``local_files_only``), from safetensors only, and
run remote code only when the study sets ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchwork import plugins
from patchwork.errors import ModelError
from patchwork.models.adapter import ModelAdapter
from patchwork.models.checkpoint import (
    ConfigError,
    build_empty,
    check_finite,
    check_folder,
    read_config,
    report_withheld,
)
from patchwork.models.checkpoint_files import read_json, read_tokenizer, weight_files
from patchwork.models.generic import GenericAdapter
from patchwork.models.memory import refuse_beyond_device
from patchwork.models.qwen2_5_omni import seeded_thinker
from patchwork.study.specs import ModelSpec, RandomInit

#: Files whose presence in a checkpoint directory means it ships a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def adapter_class(spec: ModelSpec) -> type[ModelAdapter]:
    """The adapter registered as ``spec.family`` (entry point ``patchwork.families``); a generic
    one carries the study's declared paths."""
    adapter: type[ModelAdapter] = plugins.load(plugins.FAMILIES, spec.family)
    if issubclass(adapter, GenericAdapter):
        assert spec.generic is not None
        return adapter.declare(spec.generic, spec.trust_remote_code)
    return adapter


#: Token ids of a random-init thinker: specials at the top of its vocabulary.
RANDOM_SPECIALS = {
    "audio": 1,
    "image": 2,
    "video": 3,
    "audio_start": 4,
    "audio_end": 5,
    "vision_start": 6,
    "vision_end": 7,
}


@dataclass
class LoadedModel:
    """A model ready for tracing, its adapter, its tokenizer (if any) and a name for the store."""

    model: nn.Module
    adapter: ModelAdapter
    name: str
    tokenizer: Any = None
    input_notes: Callable[[Mapping[str, Any], str], list[str]] | None = None
    """``input_notes(inputs, label)``: one line per medium of a run far from what the model was
    trained on (set for testbed checkpoints, whose training media had one size); None where the
    loader cannot tell."""
    has_weights: bool = True
    """False for a model built from its config alone (meta device): checks only, no forwards."""

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (random-init models: one id per word).

        Raises:
            patchwork.errors.ModelError: when a word is not in the vocabulary (the tokenizer
                would map it to its unknown token, and every metric on it would be meaningless).
        """
        ids = self._encode(text)
        unknown = self._unknown_id()
        if unknown is not None and unknown in ids:
            words = [word for word in text.split() if unknown in self._encode(word)]
            raise ModelError(
                f"{words or [text]} not in the model's vocabulary (the tokenizer makes them its "
                "unknown token)"
            )
        return ids

    def answer_id(self, word: str) -> int:
        """The single token id of an answer word, as the model would emit it: the word itself, or
        with a leading space where only that variant is one token (BPE vocabularies).

        Raises:
            patchwork.errors.ModelError: when the word is unknown or neither variant is one
                token.
        """
        ids = self.token_ids(word)
        if len(ids) != 1 and self.tokenizer is not None:
            spaced = self.token_ids(f" {word}")
            ids = spaced if len(spaced) == 1 else ids
        if len(ids) != 1:
            raise ModelError(
                f"answer {word!r} is {len(ids)} tokens for this model's tokenizer; answers must "
                "be single tokens"
            )
        return ids[0]

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            vocab = self.adapter.config.text_config.vocab_size
            first = max(RANDOM_SPECIALS.values()) + 1
            return [first + sum(map(ord, word)) % (vocab - first) for word in text.split()]
        if hasattr(self.tokenizer, "encode") and not callable(self.tokenizer):
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _unknown_id(self) -> int | None:
        """The tokenizer's unknown-token id (None: every text has tokens, e.g. byte-level BPE)."""
        if self.tokenizer is None:
            return None
        if hasattr(self.tokenizer, "unk_token_id"):  # transformers' tokenizers
            return self.tokenizer.unk_token_id  # type: ignore[no-any-return]
        unknown = getattr(self.tokenizer.model, "unk_token", None)  # a tokenizers.Tokenizer
        return self.tokenizer.token_to_id(unknown) if unknown else None


def load_model(
    spec: ModelSpec, study_where: str = "model", weights: bool = True, config_only: bool = False
) -> LoadedModel:
    """Load what ``spec`` describes, in eval mode, on its device and dtype.

    The dtype is applied as transformers' ``from_pretrained(dtype=…)`` applies it — never by
    casting the loaded model, which would also cast the buffers transformers keeps in float32
    (rotary frequencies, sinusoidal positions) and so change the model. ``weights=False`` builds
    the model from its config on the meta device instead (modules and shapes, no weights read, no
    memory), with its tokenizer: what ``patchwork validate`` checks a study against;
    ``config_only=True`` then accepts a checkpoint directory without its weight files (``patchwork
    plan`` before a download).
    """
    if not weights:
        return _without_weights(spec, study_where, config_only)
    try:
        device = torch.device(spec.device)  # a misspelt device is refused before any loading
    except RuntimeError as error:
        raise ModelError(f"{study_where}.device: {_first_line(error)}") from None
    dtype = getattr(torch, spec.dtype)
    tokenizer = None
    source = None
    if spec.random_init is not None:
        with torch.device("meta"):  # its size first: one line, not a machine out of memory
            empty = random_thinker(spec.random_init, spec.attention)
        refuse_beyond_device(empty, dtype, spec.device, f"{study_where}.random_init")
        model: nn.Module = random_thinker(spec.random_init, spec.attention)
        if dtype != torch.float32:
            model = _as_loaded(model, dtype, spec.attention)
        name = "random_init"
    elif spec.checkpoint is not None and spec.checkpoint.startswith("testbed"):
        from patchwork import testbed

        model, tokenizer = testbed.load(
            testbed.checkpoint_path(spec.checkpoint), spec.attention, dtype, spec.device
        )
        name = spec.checkpoint
    else:
        source = Path(spec.checkpoint or "")
        model = _from_directory(source, spec, study_where)
        tokenizer = _tokenizer(source, spec, study_where)
        name = source.name
    try:
        model = model.to(device=device).eval()
    except (RuntimeError, AssertionError) as error:
        raise ModelError(
            f"{study_where}.device: cannot use device {spec.device!r} ({error})"
        ) from None
    _set_attention(model, spec.attention)
    adapter = _adapter(spec, model, source, study_where)
    is_testbed = name.startswith("testbed") if source is None else _is_testbed(source)
    return LoadedModel(model, adapter, name, tokenizer, input_notes=_input_notes(is_testbed))


def _input_notes(testbed: bool) -> Callable[[Mapping[str, Any], str], list[str]] | None:
    if not testbed:
        return None
    from patchwork.testbed.model import outside_training

    return outside_training


def _adapter(spec: ModelSpec, model: nn.Module, source: Path | None, where: str) -> ModelAdapter:
    """The family's adapter over ``model``; a generic one checks its declared module paths."""
    adapter = adapter_class(spec)(model, source)
    if source is not None:
        _check_config(adapter, source, where)
    if isinstance(adapter, GenericAdapter):
        try:
            adapter.check_paths()
        except ModelError as error:
            raise ModelError(f"{where}.{error}") from None
    return adapter


def _check_config(adapter: ModelAdapter, folder: Path, where: str) -> None:
    """Refuse, naming ``config.json`` and the field, what the parsed config of the model the
    adapter runs says that its first forward would fail on
    (:meth:`~patchwork.models.adapter.ModelAdapter.config_problems`)."""
    problems = adapter.config_problems()
    if problems:
        path = folder / "config.json"
        # a full omni checkpoint's config.json holds the thinker's under thinker_config
        full = "thinker_config" in read_json(path) if path.is_file() else False
        raise ModelError(
            f"{where}.checkpoint: {path}: {'thinker_config.' if full else ''}{problems[0]}"
        )


def _without_weights(spec: ModelSpec, where: str, config_only: bool = False) -> LoadedModel:
    if spec.random_init is not None:
        with torch.device("meta"):
            model = random_thinker(spec.random_init, spec.attention)
        adapter = _adapter(spec, model, None, where)
        return LoadedModel(model, adapter, "random_init", has_weights=False)
    from patchwork.testbed.model import checkpoint_path, open_checkpoint

    named = spec.checkpoint or ""
    is_shipped = named.startswith("testbed")
    path = checkpoint_path(named) if is_shipped else Path(named)
    config = _checkpoint_config(path, spec, where, needs_weights=not config_only)
    # `plan` (config_only) checks the weights that are there, and accepts a folder without any
    weights = not config_only or any(path.glob("*.safetensors"))
    if _is_testbed(path):
        try:
            checked = open_checkpoint(path, weights=weights)
        except ModelError as error:
            raise ModelError(f"{where}.checkpoint: {error}") from None
        model, tokenizer = checked.empty, checked.tokenizer
    else:
        model = _empty(path, spec, config, where)
        if weights:
            _check_weights(path, model, where)
        tokenizer = _tokenizer(path, spec, where)
    adapter = _adapter(spec, model, None if is_shipped else path, where)
    name = named if is_shipped else path.name
    return LoadedModel(
        model,
        adapter,
        name,
        tokenizer,
        has_weights=False,
        input_notes=_input_notes(_is_testbed(path)),
    )


def _as_loaded(model: nn.Module, dtype: torch.dtype, attention: str) -> nn.Module:
    """``model`` saved and loaded back by transformers in ``dtype`` (what a checkpoint of it
    would give)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)  # type: ignore[operator]
        return type(model).from_pretrained(  # type: ignore[attr-defined,no-any-return]
            folder, dtype=dtype, attn_implementation=attention, local_files_only=True
        )


def _is_testbed(path: Path) -> bool:
    return (path / "patchwork_testbed.json").exists()


def random_thinker(spec: RandomInit, attention: str = "sdpa") -> nn.Module:
    """A tiny random-init ``Qwen2_5OmniThinkerForConditionalGeneration`` (seeded).

    Audio: 32 mel bins; vision: 3×2×4×4 patches merged 2×2; specials as in ``RANDOM_SPECIALS``.
    """
    head_dim = spec.hidden_size // spec.heads
    quarter = head_dim // 2 // 4
    mrope_section = [head_dim // 2 - 2 * quarter * 3 // 2, quarter * 3 // 2, quarter * 3 // 2]
    return seeded_thinker(
        spec.seed,
        audio=dict(
            num_mel_bins=32,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            output_dim=spec.hidden_size,
            n_window=50,
            max_source_positions=1500,
        ),
        vision=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            in_channels=3,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=16,
            out_hidden_size=spec.hidden_size,
            fullatt_block_indexes=[0],
        ),
        text=dict(
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=2 * spec.hidden_size,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=2048,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section,
            },
        ),
        specials=RANDOM_SPECIALS,
        user_token_id=0,
        attention=attention,
    )


def _checkpoint_config(path: Path, spec: ModelSpec, where: str, needs_weights: bool = True) -> Any:
    """The config of a checkpoint directory, once it is known to be one: a directory, with
    safetensors weights (a testbed checkpoint has them by construction; not checked when
    ``needs_weights`` is False), with a readable config.json."""
    if not path.is_dir():
        raise ModelError(f"{where}.checkpoint: no checkpoint directory at {path}")
    try:
        if needs_weights and not _is_testbed(path) and not weight_files(path):
            raise ModelError(f"{path} holds no *.safetensors weights (pickled weights are refused)")
        return read_config(path, spec.trust_remote_code)
    except ModelError as error:
        raise ModelError(f"{where}.checkpoint: {error}") from None


def _from_directory(path: Path, spec: ModelSpec, where: str) -> nn.Module:
    from safetensors import SafetensorError

    config = _checkpoint_config(path, spec, where)
    if _is_testbed(path):
        from patchwork import testbed

        try:
            return testbed.load(path, spec.attention, getattr(torch, spec.dtype), spec.device)[0]
        except ModelError as error:
            raise ModelError(f"{where}.checkpoint: {error}") from None
    checked = adapter_class(spec).empty.__func__ is not ModelAdapter.empty.__func__  # type: ignore[attr-defined]
    if checked:
        empty = _empty(path, spec, config, where)
        _check_weights(path, empty, where)
        refuse_beyond_device(empty, getattr(torch, spec.dtype), spec.device, f"{where}.checkpoint")
        _check_config(adapter_class(spec)(empty, path), path, where)  # before any weight is read
    else:  # a plug-in family that cannot build its model empty: transformers' report below
        _check_weights(path, None, where)
    try:
        with report_withheld() if checked else contextlib.nullcontext():
            loaded: Any = adapter_class(spec).from_pretrained(
                path,
                config,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=spec.trust_remote_code,
                attn_implementation=spec.attention,
                dtype=getattr(torch, spec.dtype),
                output_loading_info=True,
            )
    except ModelError as error:
        raise ModelError(f"{where}.family: {error}") from None
    except SafetensorError as error:  # a truncated or foreign weights file
        raise ModelError(
            f"{where}.checkpoint: {path} holds a damaged safetensors file ({error})"
        ) from None
    except (RuntimeError, OSError, ValueError, KeyError) as error:  # e.g. sizes off the config
        raise ModelError(
            f"{where}.checkpoint: cannot load the weights in {path}: {_first_line(error)}"
        ) from None
    model, info = loaded
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        total = len(model.state_dict())
        raise ModelError(
            f"{where}.checkpoint: {len(missing)} of the model's {total} weights are not in "
            f"{path} (e.g. {', '.join(missing[:3])}); they would run on random values — is it "
            f"a {spec.family} checkpoint?"
        )
    try:
        check_finite(model, path)
    except ModelError as error:
        raise ModelError(f"{where}.checkpoint: {error}") from None
    return model  # type: ignore[no-any-return]


def _empty(path: Path, spec: ModelSpec, config: Any, where: str) -> nn.Module:
    """The checkpoint's model built from its config on the meta device (no weights read)."""
    try:
        return build_empty(lambda: adapter_class(spec).empty(path, config), path)
    except ConfigError as error:
        raise ModelError(f"{where}.checkpoint: {error}") from None
    except ModelError as error:  # the family's own refusal
        raise ModelError(f"{where}.family: {error}") from None


def _check_weights(path: Path, empty: nn.Module | None, where: str) -> None:
    """:func:`patchwork.models.checkpoint.check_folder` (headers only without the ``empty``
    model), its refusal labelled with the study's field."""
    try:
        check_folder(path, empty)
    except ModelError as error:
        raise ModelError(f"{where}.checkpoint: {error}") from None


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, shortened (transformers' size reports are long)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "ignore_mismatched_sizes" in str(error):
        text = "some weights have other shapes than its config.json says (mismatched sizes)"
    return text[:300]


def _tokenizer(path: Path, spec: ModelSpec, where: str) -> Any:
    """The checkpoint's own tokenizer when its directory has one (None otherwise)."""
    if (path / "patchwork_testbed.json").exists() or not any(
        (path / name).is_file() for name in TOKENIZER_FILES
    ):
        return None
    from transformers import AutoTokenizer

    try:
        if (path / "tokenizer.json").exists():
            read_tokenizer(path / "tokenizer.json")  # what transformers raises on it is bare
    except ModelError as error:
        raise ModelError(f"{where}.checkpoint: {error}") from None
    try:
        return AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError, TypeError, KeyError, IndexError, RecursionError) as error:
        raise ModelError(
            f"{where}.checkpoint: cannot load the tokenizer in {path} ({_first_line(error)})"
        ) from None


def _set_attention(model: nn.Module, attention: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(attention)
