"""``inputs: processor``: a run's inputs made by the family's official processor itself.

Where the processor can be built from the checkpoint folder (``AutoProcessor.from_pretrained``;
torchvision and torchcodec installed, and qwen-omni-utils for the model-card route), the
manifest's files are handed to the official route as its documentation calls it:

- ``model_card``: ``qwen_omni_utils.process_mm_info`` reads the video (its ``fps``,
  ``max_frames`` and ``video_end`` = the run's ``seconds``) and the audio, then the processor;
- ``transformers``: the processor loads the video itself (``do_sample_frames=True`` at the run's
  ``fps``, default 2); the audio is read as ``librosa.load(sr=16000)`` reads it.

The processor expands the media placeholders; patchwork puts the question's tokens after them,
exactly where its own builder puts them, so the rows, runs and position groups are the same.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from patchwork.data import containers
from patchwork.errors import DataError, ModelError

#: The tensors of a processor's output that the thinker's forward takes.
MODEL_KEYS = (
    "input_ids",
    "attention_mask",
    "input_features",
    "feature_attention_mask",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
)
NEEDED: dict[str, tuple[str, ...]] = {
    "model_card": ("torchvision", "torchcodec", "qwen_omni_utils", "librosa"),
    "transformers": ("torchvision", "torchcodec"),
}


def build_processor(folder: Path | None, convention: str) -> Any:
    """The official processor of the checkpoint ``folder``, refused in one line when a package
    the route needs is missing or the folder holds no processor files."""
    absent = [name for name in NEEDED[convention] if importlib.util.find_spec(name) is None]
    if absent:
        raise ModelError(
            f"inputs: processor ({convention}) needs {', '.join(absent)} installed (see the docs' "
            "'Your own clips': the reference environment); or use the default builder"
        )
    if folder is None or not (folder / "preprocessor_config.json").is_file():
        raise ModelError(
            f"inputs: processor needs the checkpoint's processor files "
            f"(preprocessor_config.json, tokenizer) in {folder}"
        )
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ModelError(f"cannot build the processor of {folder}: {error}") from None


def processor_inputs(
    processor: Any,
    spec: Mapping[str, Any],
    base: Path,
    text_ids: Sequence[int],
    convention: str,
) -> dict[str, torch.Tensor]:
    """One run's inputs (batch of one) from the files ``spec`` names, made by ``processor``."""
    unsupported = sorted({"frames", "frame_size", "image_features"} & set(spec))
    if unsupported or "video" not in spec:
        raise DataError(
            f"inputs: processor takes a 'video' (and 'audio') per run; {unsupported or 'frames'} "
            "need the default builder"
        )
    video = str(base / spec["video"])
    interleaved = bool(spec.get("audio_in_video", False))
    sound = str(base / spec["audio"]) if spec.get("audio") else (None if interleaved else video)
    tokenizer = processor.tokenizer
    text = f"{tokenizer.vision_bos_token}{tokenizer.video_token}{tokenizer.vision_eos_token}"
    if sound is not None:
        text = (
            f"{tokenizer.audio_bos_token}{tokenizer.audio_token}{tokenizer.audio_eos_token}" + text
        )
    kwargs: dict[str, Any] = {}
    if interleaved:
        kwargs = {"use_audio_in_video": True, "audio_from_video_indices": [0]}
    if convention == "model_card":
        audios, videos = _model_card_media(video, sound, spec, interleaved)
    else:
        audios = [containers.load_sound(sound or video, 16_000)]
        videos = [video]
        kwargs.update(do_sample_frames=True, fps=float(spec.get("fps") or 2.0))
        if spec.get("seconds") is not None:
            raise DataError("inputs: processor on the transformers route cannot cut 'seconds'")
    try:
        made = processor(text=text, audio=audios, videos=videos, return_tensors="pt", **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        raise DataError(f"the processor cannot read {video}: {error}") from None
    inputs = {key: torch.as_tensor(made[key]) for key in MODEL_KEYS if key in made}
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([list(text_ids)])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["video_second_per_grid"] = inputs["video_second_per_grid"].to(torch.float32)
    return inputs


def _model_card_media(
    video: str, sound: str | None, spec: Mapping[str, Any], interleaved: bool
) -> tuple[list[Any], list[Any]]:
    """qwen-omni-utils' audio and frames for one run, as the model cards call it."""
    from qwen_omni_utils import process_mm_info

    element: dict[str, Any] = {"type": "video", "video": video}
    for field, key in (("fps", "fps"), ("max_frames", "max_frames"), ("seconds", "video_end")):
        if spec.get(field) is not None:
            element[key] = float(spec[field]) if field != "max_frames" else int(spec[field])
    content = [element]
    if sound is not None:
        audio: dict[str, Any] = {"type": "audio", "audio": sound}
        if spec.get("seconds") is not None:
            audio["audio_end"] = float(spec["seconds"])
        content.append(audio)
    try:
        audios, _, videos = process_mm_info(
            [{"role": "user", "content": content}], use_audio_in_video=interleaved
        )
    except (OSError, RuntimeError, ValueError, AssertionError) as error:
        raise DataError(f"qwen-omni-utils cannot read {video}: {error}") from None
    return list(audios or []), list(videos or [])
