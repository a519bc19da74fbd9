"""The testbed model: a small ``Qwen2_5OmniThinkerForConditionalGeneration``, its word-level
tokenizer, its token layout, and how checkpoints are written, found and loaded.

A checkpoint directory holds ``config.json`` + ``model.safetensors`` (transformers),
``tokenizer.json`` (tokenizers) and ``patchwork_testbed.json`` (world, planted windows, the
command that reproduces it, measured behaviour).
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from patchwork.errors import ModelError
from patchwork.models.qwen2_5_omni import seeded_thinker
from patchwork.testbed import world

CHECKPOINTS = Path(__file__).parent / "checkpoints"
KNOWN_CHECKPOINTS = {
    "testbed": "stage 2 (audio-visual tuning) — the default model",
    "testbed-base": "stage 1 (vision-language base, never heard a sound)",
    "testbed-windowed": "stage 2 with planted access windows (video 4:5, audio 0:2)",
    "testbed-heads": "stage 2 whose answer reads video only through heads 4:1 and 4:3",
}
META_FILE = "patchwork_testbed.json"

SPECIALS = {
    "pad": "<pad>",
    "unk": "<unk>",
    "audio": "<|AUDIO|>",
    "image": "<|IMAGE|>",
    "video": "<|VIDEO|>",
    "audio_start": "<|audio_bos|>",
    "audio_end": "<|audio_eos|>",
    "vision_start": "<|vision_bos|>",
    "vision_end": "<|vision_eos|>",
}
N_MELS, MEL_FRAMES = 32, 40
AUDIO_TOKENS = ((MEL_FRAMES - 1) // 2 + 1 - 2) // 2 + 1  # 10
PATCH, TEMPORAL_PATCH, MERGE = 4, 2, 2
VIDEO_TOKENS = (world.FRAME_SIZE // PATCH) ** 2 // MERGE**2  # 16
HOP_SECONDS = 0.01  # Whisper features: one mel frame per 160 samples at 16 kHz
#: An interleaved clip (``audio_in_video``, as Qwen2.5-Omni reads a video's soundtrack): the
#: picture held for 4 frames at 1 fps -> 2 grid steps of 2 s, one per time chunk of the model's
#: (``seconds_per_chunk``, 2 s; 25 time positions a second): video 16, audio 10 (the 0.4 s sound
#: lies in the first chunk), video 16 tokens. Two audio chunks would take a sound over 1 s (the
#: config's chunk length is a whole number of seconds): a sequence twice as long to train on.
INTERLEAVED_FRAMES, INTERLEAVED_FPS = 4, 1
SECONDS_PER_GRID = TEMPORAL_PATCH / INTERLEAVED_FPS


def vocabulary() -> list[str]:
    """Every word the testbed knows, specials first; answers are single words."""
    words = list(SPECIALS.values())
    for question in world.QUESTIONS:
        words += [w for w in question.split() if w not in words]
    words.append(world.NOTHING)
    for kind in world.CATEGORIES:
        words += [kind.name, kind.sound]
    return words


def build_tokenizer() -> Tokenizer:
    """A word-level tokenizer over :func:`vocabulary`, whitespace-split, unknown → ``<unk>``."""
    vocab = {word: index for index, word in enumerate(vocabulary())}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=SPECIALS["unk"]))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(list(SPECIALS.values()))
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Token ids of the specials by role (``audio``, ``video``, ``audio_start`` …)."""
    return {role: word_id(tokenizer, token) for role, token in SPECIALS.items()}


def word_id(tokenizer: Tokenizer, word: str) -> int:
    index = tokenizer.token_to_id(word)
    if index is None:
        raise ModelError(f"{word!r} is not in the testbed vocabulary")
    return index


def prompt_ids(tokenizer: Tokenizer, question: str, audio_in_video: bool = False) -> list[int]:
    """The token layout of a testbed clip (the answer is predicted after the last token):

    ``<|audio_bos|> <|AUDIO|>×10 <|audio_eos|> <|vision_bos|> <|VIDEO|>×16 <|vision_eos|> question``

    or, ``audio_in_video``, the soundtrack interleaved with the frames in time chunks as
    Qwen2.5-Omni lays out a video with sound (:data:`INTERLEAVED_FRAMES`):

    ``<|vision_bos|> <|audio_bos|> <|VIDEO|>×16 <|AUDIO|>×10 <|VIDEO|>×16 <|audio_eos|>
    <|vision_eos|> question``
    """
    specials = special_ids(tokenizer)
    words = question.strip().rstrip("?").split()
    unknown = [w for w in words if tokenizer.token_to_id(w) is None]
    if unknown or not words:
        raise ModelError(
            f"question {question!r} has words the testbed does not know ({unknown}); "
            f"it was trained on {list(world.QUESTIONS)}"
        )
    question_ids = [word_id(tokenizer, w) for w in words]
    if audio_in_video:
        return _interleaved_ids(specials) + question_ids
    return (
        [specials["audio_start"]]
        + [specials["audio"]] * AUDIO_TOKENS
        + [specials["audio_end"]]
        + [specials["vision_start"]]
        + [specials["video"]] * VIDEO_TOKENS
        + [specials["vision_end"]]
        + question_ids
    )


def _interleaved_ids(specials: Mapping[str, int]) -> list[int]:
    """The clip's placeholders interleaved by time chunk, by the real family's rule
    (:func:`~patchwork.models.qwen2_5_omni.interleaved_placeholders`; 25 time positions a
    second, 2 s chunks: the thinker config's defaults, which the testbed keeps)."""
    from patchwork.models.qwen2_5_omni import interleaved_placeholders

    per_second, seconds_per_chunk = 25, 2
    grid_steps = INTERLEAVED_FRAMES // TEMPORAL_PATCH
    video_times = [
        int(step * SECONDS_PER_GRID * per_second)
        for step in range(grid_steps)
        for _ in range(VIDEO_TOKENS)
    ]
    return interleaved_placeholders(
        video_times, AUDIO_TOKENS, per_second * seconds_per_chunk, specials
    )


def build_model(tokenizer: Tokenizer, seed: int, attention: str = "sdpa") -> torch.nn.Module:
    """A fresh seeded thinker: text 8 layers × hidden 128 (4 heads, 2 KV heads, head_dim 32),
    audio encoder 2 layers × 64 on 32 mel bins, vision encoder 2 blocks × 64 on 4×4 patches."""
    hidden = 128
    specials = special_ids(tokenizer)
    return seeded_thinker(
        seed,
        audio=dict(
            num_mel_bins=N_MELS,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=128,
            d_model=64,
            output_dim=hidden,
            n_window=50,
            max_source_positions=1500,
        ),
        vision=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            in_channels=3,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=TEMPORAL_PATCH,
            window_size=world.FRAME_SIZE,
            out_hidden_size=hidden,
            fullatt_block_indexes=[1],
        ),
        text=dict(
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=hidden,
            intermediate_size=384,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 6, 6],
            },
        ),
        specials=specials,
        user_token_id=specials["pad"],
        attention=attention,
        pad_token_id=specials["pad"],
    )


def save(model: Any, tokenizer: Tokenizer, directory: Path, meta: dict[str, Any]) -> Path:
    """Write a checkpoint directory (safetensors weights, config, tokenizer, testbed json)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def read_meta(directory: Path) -> dict[str, Any]:
    """A checkpoint's ``patchwork_testbed.json``, its planted windows checked for shape.

    Raises:
        patchwork.errors.ModelError: naming the file, when it is missing, not JSON, or declares
            windows patchwork cannot read.
    """
    from patchwork import files

    path = Path(directory) / META_FILE
    problem = files.not_regular(path)
    if problem == "not found":
        raise ModelError(f"{directory} is not a testbed checkpoint (no {META_FILE})")
    if problem is not None:  # a FIFO would make the read below wait for ever
        raise ModelError(f"{path} {problem}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelError(f"{path}: not a readable testbed description ({error})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: not a readable testbed description (expected a JSON object)")
    _check_windows(meta.get("windows"), path)
    if not isinstance(meta.get("audio_in_video", False), bool):  # a wrong layout runs silently
        raise ModelError(
            f"{path}: audio_in_video: expected true or false; "
            f"got {reprlib.repr(meta['audio_in_video'])}"
        )
    return meta


def audio_in_video(meta: Mapping[str, Any]) -> bool:
    """Whether a checkpoint (its :func:`read_meta`) was trained on clips whose soundtrack is
    interleaved with the frames; checkpoints from before the option were not."""
    return bool(meta.get("audio_in_video", False))


#: The planted windows a checkpoint's json may declare, and their form.
WINDOW_KEYS = {
    "video_access_layers": "[FIRST, LAST] or [[FIRST, LAST], ...]",
    "audio_access_layers": "[FIRST, LAST] or [[FIRST, LAST], ...]",
    "video_access_heads": "[[LAYER, HEAD], ...]",
}


def _check_windows(declared: object, path: Path, layers: int = 2**31, heads: int = 2**31) -> None:
    """Refuse windows that :func:`~patchwork.testbed.windows.rules_from_meta` cannot read, or
    that lie outside a model of ``layers`` decoder layers of ``heads`` query heads: a window
    read wrongly would run the model without the blocks it was trained with."""
    if declared is None:
        return
    if not isinstance(declared, dict) or set(declared) - set(WINDOW_KEYS):
        raise ModelError(
            f"{path}: windows: expected null or an object of {', '.join(WINDOW_KEYS)}; "
            f"got {reprlib.repr(declared)}"
        )
    for key, form in WINDOW_KEYS.items():
        value = declared.get(key)
        if value is None:
            continue
        of_heads = key == "video_access_heads"
        several = isinstance(value, list) and bool(value) and isinstance(value[0], list)
        pairs = value if of_heads or several else [value]
        limits = (layers, heads) if of_heads else (layers, layers)
        if (
            not isinstance(pairs, list)
            or not pairs
            or not all(_pair_within(pair, *limits) for pair in pairs)
            or (not of_heads and any(pair[0] > pair[1] for pair in pairs))
        ):
            raise ModelError(
                f"{path}: windows.{key}: expected {form}, indices within the model; "
                f"got {reprlib.repr(value)}"
            )


def _pair_within(pair: object, first_limit: int, second_limit: int) -> bool:
    return (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        and 0 <= pair[0] < first_limit
        and 0 <= pair[1] < second_limit
    )


@dataclass
class Checkpoint:
    """A testbed checkpoint folder, checked: its description, config, tokenizer and its model
    built on the meta device (shapes, no weights)."""

    directory: Path
    meta: dict[str, Any]
    config: Any
    tokenizer: Tokenizer
    empty: torch.nn.Module


def open_checkpoint(directory: str | Path, weights: bool = True) -> Checkpoint:
    """Read and check every file of a testbed checkpoint folder without loading its weights:
    ``patchwork_testbed.json``, ``config.json`` (a Qwen2.5-Omni thinker), ``tokenizer.json``
    (the testbed's specials, no id beyond the model's vocabulary) and, unless ``weights`` is
    False, the safetensors headers (every tensor the model expects, shape and dtype; see
    :mod:`patchwork.models.checkpoint`).

    Raises:
        patchwork.errors.ModelError: naming the file that is missing, damaged or does not fit.
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

    from patchwork.models import checkpoint
    from patchwork.models.adapter import empty_model

    directory = Path(directory)
    meta = read_meta(directory)
    config = checkpoint.read_config(directory)
    if config.model_type != "qwen2_5_omni_thinker":
        raise ModelError(
            f"{directory / 'config.json'}: a testbed checkpoint is a 'qwen2_5_omni_thinker', "
            f"not {config.model_type!r}"
        )
    text_config = config.text_config
    _check_windows(
        meta.get("windows"),
        directory / META_FILE,
        text_config.num_hidden_layers,
        text_config.num_attention_heads,
    )
    tokenizer = load_tokenizer(directory)
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if largest >= text_config.vocab_size:
        raise ModelError(
            f"{directory / 'tokenizer.json'}: token id {largest} is beyond the model's "
            f"vocabulary of {text_config.vocab_size} (config.json)"
        )
    empty = checkpoint.build_empty(lambda: empty_model(Thinker, config), directory)
    if weights:
        if not checkpoint.weight_files(directory):
            raise ModelError(f"{directory}: no model.safetensors (a testbed checkpoint's weights)")
        checkpoint.check_weights(directory, empty, checkpoint.stored_tensors(directory))
    return Checkpoint(directory, meta, config, tokenizer, empty)


def load(
    checkpoint_dir: str | Path,
    attention: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
) -> tuple[torch.nn.Module, Tokenizer]:
    """Load a testbed checkpoint in eval mode, planted windows (if declared) installed.

    Every file is checked first (:func:`open_checkpoint`), and transformers' own report of the
    weights it did not find refuses the rest: a folder without the model's tensors never runs
    on random values; weights holding a NaN or an infinity are refused once loaded
    (:func:`~patchwork.models.checkpoint.check_finite`). Given the ``device`` it goes to, a
    model whose weights cannot fit there is refused before it is built
    (:func:`~patchwork.models.memory.refuse_beyond_device`).

    ``dtype`` is applied as transformers' ``from_pretrained`` applies it (rotary frequencies and
    other buffers it keeps in float32 stay float32).

    The windows are forward pre-hooks, so they stay active under ``nnsight.NNsight`` wrapping, for
    batches of several rows, and after ``set_attn_implementation``.
    """
    from safetensors import SafetensorError
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from patchwork.models import blocks
    from patchwork.models.checkpoint import check_finite, report_withheld
    from patchwork.models.memory import refuse_beyond_device
    from patchwork.testbed import windows

    checked = open_checkpoint(checkpoint_dir)
    directory = checked.directory
    if device is not None:
        refuse_beyond_device(checked.empty, dtype, device)
    try:
        with report_withheld():  # checked above: its table of names would say nothing more
            loaded: Any = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
                directory,
                config=checked.config,
                use_safetensors=True,
                local_files_only=True,
                attn_implementation=attention,
                dtype=dtype,
                output_loading_info=True,
            )
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        raise ModelError(f"cannot load testbed checkpoint {directory}: {error}") from None
    model, info = loaded
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # what transformers found missing; the header check above should have
        raise ModelError(
            f"testbed checkpoint {directory}: transformers found {len(missing)} of the model's "
            f"weights missing (e.g. {', '.join(missing[:3])})"
        )
    check_finite(model, directory)
    model.eval()
    text_config = checked.config.text_config
    rules = windows.rules_from_meta(
        checked.meta.get("windows"),
        text_config.num_hidden_layers,
        text_config.num_attention_heads,
    )
    if rules:
        blocks.install(model, rules, blocks.modality_token_ids(model.config))
    return model, checked.tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    """The word-level tokenizer saved beside a testbed checkpoint, with the testbed's specials.

    Raises:
        patchwork.errors.ModelError: naming ``tokenizer.json`` when it is missing, damaged,
            lacks a special token or does not read one as a single token.
    """
    from patchwork.models.checkpoint_files import read_tokenizer

    path = Path(directory) / "tokenizer.json"
    if not (path.exists() or path.is_symlink()):
        raise ModelError(f"testbed checkpoint {directory} has no tokenizer.json")
    tokenizer = read_tokenizer(path)
    missing = [token for token in SPECIALS.values() if tokenizer.token_to_id(token) is None]
    if missing:
        raise ModelError(f"{path}: the testbed's special tokens {missing} are missing")
    # in the vocabulary but not added as special: a text holding one reads it as other words
    split = [t for t in SPECIALS.values() if tokenizer.encode(t).ids != [tokenizer.token_to_id(t)]]
    if split:
        raise ModelError(
            f"{path}: the testbed's special tokens {split[:3]}{' …' if len(split) > 3 else ''} "
            "are not read as one token each (missing from its added_tokens)"
        )
    return tokenizer


def checkpoint_path(name: str = "testbed") -> Path:
    """The directory of a shipped checkpoint by name (see ``KNOWN_CHECKPOINTS``)."""
    if name not in KNOWN_CHECKPOINTS:
        known = ", ".join(f"{key} ({about})" for key, about in KNOWN_CHECKPOINTS.items())
        raise ModelError(f"unknown testbed checkpoint {name!r}; known: {known}")
    path = CHECKPOINTS / name
    if not (path / META_FILE).is_file():
        raise ModelError(f"testbed checkpoint {name!r} is not installed at {path}")
    return path


def outside_training(inputs: Mapping[str, Any], label: str) -> list[str]:
    """One line for each medium of a run whose size is far from what the testbed was trained on
    (clips of 0.4 s, pictures of 32×32): more than 2× longer or shorter, or another frame size.
    The model still runs; its answers there are untested."""
    notes = []
    if "feature_attention_mask" in inputs:
        seconds = inputs["feature_attention_mask"].sum(-1).float() * HOP_SECONDS
        trained = world.CLIP_SAMPLES / world.SAMPLING_RATE
        if bool(((seconds > 2 * trained) | (seconds < trained / 2)).any()):
            notes.append(
                f"{label}: audio of {float(seconds.max()):.2f} s; the testbed was trained on "
                f"{trained:.1f} s clips — its answers on these are untested"
            )
    for key in ("video_grid_thw", "image_grid_thw"):
        if key in inputs:
            sizes = {(int(h) * PATCH, int(w) * PATCH) for _, h, w in inputs[key].tolist()}
            if sizes != {(world.FRAME_SIZE, world.FRAME_SIZE)}:
                shown = ", ".join(f"{h}×{w}" for h, w in sorted(sizes))
                notes.append(
                    f"{label}: pictures of {shown} pixels; the testbed was trained on "
                    f"{world.FRAME_SIZE}×{world.FRAME_SIZE} — its answers on these are untested"
                )
    return notes
