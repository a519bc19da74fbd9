"""Checkpoint folders as published (config, processor files, chat template, a tokenizer whose
special tokens sit at the real ids) and generated media for the reference tests.

The media come from ffmpeg's own test sources (``testsrc2`` pictures, ``sine`` tones): mp4 with
h264 video and AAC sound, wav and flac at several rates and channel counts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parents[1] / "fixtures" / "published_configs"
#: The Qwen tokenizer's special tokens at their real ids.
QWEN_SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
    "<|vision_bos|>": 151652,
    "<|vision_eos|>": 151653,
    "<|vision_pad|>": 151654,
    "<|IMAGE|>": 151655,
    "<|VIDEO|>": 151656,
}
#: Qwen3-Omni moves the audio tokens (its config's ids).
QWEN3_SPECIALS = {
    **{k: v for k, v in QWEN_SPECIALS.items() if "audio" not in k and k != "<|AUDIO|>"},
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<|audio_pad|>": 151675,
}
WORDS = "what do you hear see the sound ? in this clip".split()
#: The words the Qwen chat template writes around a user turn (its default system turn).
CHAT_WORDS = "system You are a helpful assistant. user assistant".split()


def _tokenizer(specials: dict[str, int], extra: dict[str, str], words: list[str] = WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{word: 10 + index for index, word in enumerate(words)}, **specials}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # every special token split off the words around it, as in the real tokenizer
    # ("<|im_start|>system" is two tokens)
    model.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(specials),
        extra_special_tokens=extra,
    )


def qwen2_5_omni_folder(folder: Path, words: list[str] = WORDS) -> Path:
    """Qwen2.5-Omni-7B's published config, preprocessor config and chat template, and a
    word-level tokenizer of ``words`` with the real special-token ids."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "qwen2_5_omni_7b.json", folder / "config.json")
    shutil.copy(
        FIXTURES / "qwen2_5_omni_preprocessor_config.json", folder / "preprocessor_config.json"
    )
    template = (FIXTURES / "qwen2_5_omni_chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    extra = {
        "image_token": "<|IMAGE|>",
        "audio_token": "<|AUDIO|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
    }
    _tokenizer(QWEN_SPECIALS, extra, words).save_pretrained(folder)
    return folder


def qwen3_omni_folder(folder: Path) -> Path:
    """Qwen3-Omni-30B-A3B's published config and preprocessor config, and a tokenizer with its
    special-token ids."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "qwen3_omni_30b_a3b.json", folder / "config.json")
    shutil.copy(
        FIXTURES / "qwen3_omni_preprocessor_config.json", folder / "preprocessor_config.json"
    )
    extra = {
        "image_token": "<|IMAGE|>",
        "audio_token": "<|audio_pad|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
    }
    _tokenizer(QWEN3_SPECIALS, extra).save_pretrained(folder)
    return folder


def _ffmpeg(*arguments: str) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *arguments],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def write_mp4(
    path: Path,
    width: int,
    height: int,
    fps: str,
    seconds: float,
    sound: tuple[int, int] | None,
) -> Path:
    """An h264 mp4 of ffmpeg's ``testsrc2`` at ``fps`` (a rational like ``30000/1001``), with an
    AAC soundtrack of two tones (``sound`` = (rate, channels)) or none."""
    arguments = ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:d={seconds}"]
    if sound is not None:
        rate, channels = sound
        tones = f"sine=frequency=440:sample_rate={rate}:d={seconds}"
        arguments += ["-f", "lavfi", "-i", tones]
        if channels == 2:
            arguments += ["-f", "lavfi", "-i", tones.replace("440", "660")]
            arguments += ["-filter_complex", "[1:a][2:a]join=inputs=2:channel_layout=stereo[a]"]
            arguments += ["-map", "0:v", "-map", "[a]"]
        arguments += ["-c:a", "aac", "-b:a", "96k"]
    arguments += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]
    _ffmpeg(*arguments, "-t", str(seconds), str(path))
    return path


def write_sound(path: Path, rate: int, channels: int, seconds: float, seed: int = 0) -> Path:
    """A wav (PCM 16) or flac of tones and a little noise, left and right different."""
    import soundfile

    rng = np.random.default_rng(seed)
    times = np.arange(int(rate * seconds)) / rate
    left = 0.4 * np.sin(2 * np.pi * 440 * times) + 0.05 * rng.standard_normal(len(times))
    right = 0.3 * np.sin(2 * np.pi * 1250 * times) * np.exp(-times)
    data = np.stack([left, right], axis=1)[:, :channels]
    soundfile.write(str(path), np.clip(data, -1, 1), rate, subtype="PCM_16")
    return path
