"""The testbed model: a small ``Qwen2_5OmniThinkerForConditionalGeneration``, its word-level
tokenizer, its token layout, and how checkpoints are written, found and loaded.

A checkpoint directory holds ``config.json`` + ``model.safetensors`` (transformers),
``tokenizer.json`` (tokenizers) and ``patchwork_testbed.json`` (world, planted windows, the
command that reproduces it, measured behaviour).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


def prompt_ids(tokenizer: Tokenizer, question: str) -> list[int]:
    """The token layout every testbed clip uses (the answer is predicted after the last token):

    ``<|audio_bos|> <|AUDIO|>×10 <|audio_eos|> <|vision_bos|> <|VIDEO|>×16 <|vision_eos|> question``
    """
    specials = special_ids(tokenizer)
    words = question.strip().rstrip("?").split()
    unknown = [w for w in words if tokenizer.token_to_id(w) is None]
    if unknown or not words:
        raise ModelError(
            f"question {question!r} has words the testbed does not know ({unknown}); "
            f"it was trained on {list(world.QUESTIONS)}"
        )
    return (
        [specials["audio_start"]]
        + [specials["audio"]] * AUDIO_TOKENS
        + [specials["audio_end"]]
        + [specials["vision_start"]]
        + [specials["video"]] * VIDEO_TOKENS
        + [specials["vision_end"]]
        + [word_id(tokenizer, w) for w in words]
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
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise ModelError(f"{directory} is not a testbed checkpoint (no {META_FILE})")
    return json.loads(path.read_text())


def load(
    checkpoint_dir: str | Path, attention: str = "sdpa", dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, Tokenizer]:
    """Load a testbed checkpoint in eval mode, planted windows (if declared) installed.

    ``dtype`` is applied as transformers' ``from_pretrained`` applies it (rotary frequencies and
    other buffers it keeps in float32 stay float32).

    The windows are forward pre-hooks, so they stay active under ``nnsight.NNsight`` wrapping, for
    batches of several rows, and after ``set_attn_implementation``.
    """
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from patchwork.models import blocks
    from patchwork.testbed import windows

    directory = Path(checkpoint_dir)
    meta = read_meta(directory)
    tokenizer = load_tokenizer(directory)
    try:
        model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            directory,
            use_safetensors=True,
            local_files_only=True,
            attn_implementation=attention,
            dtype=dtype,
        )
    except OSError as error:
        raise ModelError(f"cannot load testbed checkpoint {directory}: {error}") from None
    model.eval()
    config: Any = model.config
    text_config = config.text_config
    rules = windows.rules_from_meta(
        meta.get("windows"), text_config.num_hidden_layers, text_config.num_attention_heads
    )
    if rules:
        blocks.install(model, rules, blocks.modality_token_ids(model.config))
    return model, tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    """The word-level tokenizer saved beside a testbed checkpoint."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"testbed checkpoint {directory} has no tokenizer.json")
    return Tokenizer.from_file(str(path))


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
