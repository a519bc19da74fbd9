"""Qwen2.5-Omni: the thinker (audio encoder + vision encoder + TMRoPE decoder) and the full model.

Facts this adapter guards (transformers 5.x):

- the decoder is ``thinker.model.language_model``; a layer's output is a tensor, attention's a
  tuple ``(hidden, weights)``;
- one audio placeholder too few silently drops audio features: counts are checked here, from
  ``feature_attention_mask`` as audio tokens = ((T − 1) // 2 + 1 − 2) // 2 + 1 per clip, and
  video tokens = t·h·w / merge² per clip;
- without ``attention_mask`` the model silently falls back from TMRoPE to plain positions: it is
  required;
- a clip whose soundtrack is read *in* the video (``use_audio_in_video``) is laid out as
  ``vision_start audio_start [video chunk, audio chunk]… audio_end vision_end``: chunk ``j``
  holds the tokens whose time index (25 per second, video: frame-grid index × seconds per grid)
  falls in ``seconds_per_chunk`` window ``j``. Position groups follow the token ids, so they
  follow the interleaving; the forward gets ``use_audio_in_video=True`` whenever the ids show
  this layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from patchwork.data import media
from patchwork.data.conventions import Convention, VideoSampling, even_count
from patchwork.data.sample import ModelInputs, RunMedia
from patchwork.data.sizing import fit_frames, fitted_size  # noqa: F401 (fitted_size re-exported)
from patchwork.errors import DataError, ModelError
from patchwork.models.adapter import ModelAdapter, load_thinker, text_and_answer


def audio_token_count(mel_frames: int) -> int:
    """Audio placeholders the thinker's audio encoder yields for ``mel_frames`` log-mel frames."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


def interleaved_placeholders(
    video_times: Sequence[int], audio_tokens: int, window: int, ids: Mapping[str, int]
) -> list[int]:
    """The placeholders of one clip whose soundtrack is interleaved with its frames, as
    Qwen2.5-Omni lays it out: vision start, audio start, then per time chunk of ``window``
    positions its video tokens (at ``video_times``) and its audio tokens (one position each), then
    audio end, vision end. ``ids`` maps ``vision_start``, ``audio_start``, ``video``, ``audio``,
    ``audio_end`` and ``vision_end`` to token ids."""
    video_chunks = chunk_bounds(video_times, window)
    audio_chunks = chunk_bounds(list(range(audio_tokens)), window)
    placeholders = [ids["vision_start"], ids["audio_start"]]
    for chunk in range(max(len(video_chunks), len(audio_chunks))):
        for medium, chunks in (("video", video_chunks), ("audio", audio_chunks)):
            if chunk < len(chunks):
                placeholders += [ids[medium]] * (chunks[chunk][1] - chunks[chunk][0])
    return [*placeholders, ids["audio_end"], ids["vision_end"]]


def chunk_bounds(values: Sequence[int], tokens_per_chunk: int) -> list[tuple[int, int]]:
    """(start, stop) slices of increasing time indices, one per ``tokens_per_chunk`` window.

    As the model reads them: a new chunk starts at the first value at or past the next window's
    start (one window per step, as transformers' ``get_chunked_index`` does).
    """
    bounds, start, chunk = [], 0, 1
    for index, value in enumerate(values):
        if value >= chunk * tokens_per_chunk:
            bounds.append((start, index))
            start, chunk = index, chunk + 1
    bounds.append((start, len(values)))
    return bounds


class Qwen25OmniAdapter(ModelAdapter):
    #: Decoder layers follow transformers' convention: patched runs may start mid-model.
    supports_resume = True
    attention_norm_name = "input_layernorm"
    plain_readout = True
    family = "qwen2_5_omni"
    layers_path = "model.language_model.layers"
    final_norm_path = "model.language_model.norm"
    unembed_path = "lm_head"
    #: Per-channel pixel mean and standard deviation of the image processor.
    pixel_mean: tuple[float, ...] = media.CLIP_MEAN
    pixel_std: tuple[float, ...] = media.CLIP_STD
    #: Most pixels per frame (the released processors' video budget, 768 merged patches of 28²).
    max_frame_pixels: int = 768 * 28 * 28

    official_processor = True
    #: The published vision tower's patch · merge: its official pixel budgets hold for it only.
    published_unit: int = 28
    #: The rate the processor assumes when the model card calls it without ``fps``.
    processor_fps: float = 2.0

    def video_sampling(self, convention: Convention = "model_card") -> VideoSampling:
        """How this family's official route (``convention``) takes and sizes video frames.

        Model card: qwen-omni-utils' counts, indices and budgets (its frames fitted to multiples
        of 28: it is called with its default ``image_patch_size``), then the processor.
        transformers: the video processor's ``do_sample_frames`` and its own per-frame budget.
        A checkpoint without processor files (``preprocessor_config.json``: no official
        processor to follow) or whose vision tower is not the published one (``patch · merge``
        other than :attr:`published_unit`) has no official budget: its frames keep their size,
        fitted to its own unit, at most 768 units² each.
        """
        vision = self.config.vision_config
        unit = vision.patch_size * vision.spatial_merge_size
        if unit != self.published_unit or not self._saved_processor:
            return VideoSampling(convention, unit=unit, min_tokens=None, total_tokens=None)
        if convention == "model_card":
            return VideoSampling(convention, unit=28, processor_fps=self.processor_fps)
        return VideoSampling(convention, unit=unit, total_tokens=None)

    def _fit_video(self, frames: np.ndarray, sampling: VideoSampling) -> np.ndarray:
        """Frames (n, H, W, 3) sized as the route sizes them: fitted to ``sampling``'s unit and
        budget (uint8, as torchvision resizes uint8 video), then — where the
        processor's unit differs (Qwen3-Omni's 32 after qwen-omni-utils' 28) — fitted again by
        the video processor (float, no rounding)."""
        vision = self.config.vision_config
        low, high = sampling.pixel_range(even_count(len(frames), vision.temporal_patch_size))
        # qwen-omni-utils resizes with torchvision's v1 resize (float, rounded to uint8); the
        # transformers video processor with v2's, torch's native uint8 kernel on CPU
        first = "round" if sampling.convention == "model_card" else "uint8"
        fitted = fit_frames(frames, sampling.unit, high, int(low), resize=first)
        unit = vision.patch_size * vision.spatial_merge_size
        if unit != sampling.unit:
            tokens = (128 * unit * unit, 768 * unit * unit)
            fitted = fit_frames(fitted, unit, tokens[1], tokens[0], resize="float")
        return fitted

    #: Longest clip (samples at 16 kHz) of the feature extractor when the checkpoint names none;
    #: None where the processor neither pads nor cuts clips.
    max_audio_samples: int | None = 30 * media.SAMPLING_RATE

    @cached_property
    def _saved_processor(self) -> dict[str, Any]:
        """The checkpoint's ``preprocessor_config.json`` (feature extractor and image processor
        settings), with ``video_preprocessor_config.json`` over it; empty without a checkpoint."""
        settings: dict[str, Any] = {}
        for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
            path = self.source / name if self.source is not None else None
            if path is not None and path.is_file():
                settings.update(json.loads(path.read_text(encoding="utf-8")))
        return settings

    @cached_property
    def _vision_settings(self) -> dict[str, Any]:
        """Pixel statistics and budget: the checkpoint's (video) preprocessor config, if any."""
        saved = self._saved_processor
        size = saved.get("size") or {}
        return {
            "mean": tuple(saved.get("image_mean", self.pixel_mean)),
            "std": tuple(saved.get("image_std", self.pixel_std)),
            "max_pixels": int(
                saved.get("max_pixels") or size.get("longest_edge") or self.max_frame_pixels
            ),
            "min_pixels": int(saved.get("min_pixels") or size.get("shortest_edge") or 0),
        }

    @cached_property
    def _audio_settings(self) -> dict[str, Any]:
        """The feature extractor's mel bins, window, hop and longest clip: the checkpoint's
        preprocessor config, else the model's mel bins and Whisper's defaults."""
        saved = self._saved_processor
        longest = self.max_audio_samples
        if longest is not None and (saved.get("n_samples") or saved.get("chunk_length")):
            longest = int(
                saved.get("n_samples") or int(saved["chunk_length"]) * media.SAMPLING_RATE
            )
        return {
            "n_mels": int(saved.get("feature_size", self.config.audio_config.num_mel_bins)),
            "n_fft": int(saved.get("n_fft", 400)),
            "hop_length": int(saved.get("hop_length", media.HOP_LENGTH)),
            "max_samples": longest,
        }

    @classmethod
    def from_pretrained(cls, path: Path, config: Any, **options: Any) -> nn.Module:
        """The thinker from a thinker checkpoint or from a full omni checkpoint.

        A full checkpoint's talker and vocoder are not needed for patching, and its
        ``from_pretrained`` would unpickle ``spk_dict.pt``; the thinker's weights are read from the
        safetensors instead (keys ``thinker.*``).
        """
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

        return load_thinker(Thinker, "qwen2_5_omni", "Qwen2.5-Omni", path, config, **options)

    @classmethod
    def empty(cls, path: Path, config: Any) -> nn.Module:
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

        return load_thinker(Thinker, "qwen2_5_omni", "Qwen2.5-Omni", path, config, weights=False)

    @classmethod
    def resolve_root(cls, model: nn.Module) -> nn.Module:
        thinker = getattr(model, "thinker", None)
        return thinker if thinker is not None else model

    token_fields = {
        "audio": "audio_token_index",
        "video": "video_token_index",
        "image": "image_token_index",
    }

    def _token_ids(self) -> dict[str, int]:
        return {name: getattr(self.config, field) for name, field in self.token_fields.items()}

    def position_groups(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = input_ids.reshape(-1)
        modality = {name: ids == token for name, token in self._token_ids().items()}
        return text_and_answer(modality, ids.numel())

    chat_media = ("audio", "video")

    def media_token_ids(self) -> list[int]:
        return [*self._token_ids().values(), *self._specials().values()]

    def _specials(self) -> dict[str, int]:
        config = self.config
        return {
            "audio_start": config.audio_start_token_id,
            "audio_end": config.audio_end_token_id,
            "vision_start": config.vision_start_token_id,
            "vision_end": config.vision_end_token_id,
        }

    def prompt_ids(
        self, text_ids: Sequence[int], audio_tokens: Sequence[int], video_tokens: Sequence[int]
    ) -> torch.Tensor:
        tokens, special = self._token_ids(), self._specials()
        ids: list[int] = []
        for count in audio_tokens:
            ids += [special["audio_start"], *[tokens["audio"]] * count, special["audio_end"]]
        for count in video_tokens:
            ids += [special["vision_start"], *[tokens["video"]] * count, special["vision_end"]]
        return torch.tensor([[*ids, *text_ids]])

    def audio_token_count(self, mel_frames: int) -> int:
        """Audio placeholders of one clip of ``mel_frames`` log-mel frames."""
        return audio_token_count(mel_frames)

    def interleaved_prompt_ids(
        self,
        text_ids: Sequence[int],
        audio_tokens: int,
        video_grid: Sequence[int],
        seconds_per_grid: float,
    ) -> torch.Tensor:
        """input_ids (1, seq) of one clip whose soundtrack is interleaved with its frames.

        ``video_grid`` is (t, h, w) in patches; audio tokens tick at ``position_id_per_seconds``.
        """
        config, tokens, special = self.config, self._token_ids(), self._specials()
        per_second = config.position_id_per_seconds
        grid_t, grid_h, grid_w = (int(v) for v in video_grid)
        merge = config.vision_config.spatial_merge_size
        per_frame = (grid_h // merge) * (grid_w // merge)
        times = (torch.arange(grid_t) * seconds_per_grid * per_second).long()
        video_times = times.repeat_interleave(per_frame).tolist()
        window = int(per_second * config.seconds_per_chunk)
        ids = interleaved_placeholders(video_times, audio_tokens, window, {**special, **tokens})
        return torch.tensor([[*ids, *text_ids]])

    def forward_kwargs(self, inputs: ModelInputs) -> dict[str, Any]:
        """Adds ``use_audio_in_video=True`` when a vision start is directly followed by an audio
        start (the interleaved layout); otherwise the run's tensors as they are."""
        ids = inputs["input_ids"]
        special = self._specials()
        starts = ids[..., :-1] == special["vision_start"]
        if bool((starts & (ids[..., 1:] == special["audio_start"])).any()):
            return {**inputs, "use_audio_in_video": True}
        return dict(inputs)

    def build_inputs(self, text_ids: Sequence[int], media_run: RunMedia) -> dict[str, torch.Tensor]:
        """Whisper log-mel audio and Qwen-VL video patches as the family's processors make them
        (frames fitted to patch·merge and the route's pixel budget as ``smart_resize`` fits them:
        :meth:`video_sampling`), prompt ids with each clip's placeholders — interleaved when
        ``media_run.audio_in_video``."""
        config = self.config
        vision = config.vision_config
        if media_run.waveform is None or media_run.frames is None:
            raise DataError(f"{self.family} runs need both audio and frames (or a video)")
        audio = media.clip_features(media_run.waveform, **self._audio_settings)
        mel_frames = audio["input_features"].shape[-1]
        # the budget is this family's for the route the frames were taken by
        route = media_run.sampling.convention if media_run.sampling else "model_card"
        sampling = self.video_sampling(route)
        settings = self._vision_settings
        video = media.video_patches(
            self._fit_video(media_run.frames, sampling),
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
            mean=settings["mean"],
            std=settings["std"],
        )
        seconds_per_grid = vision.temporal_patch_size / float(media_run.fps)
        audio_tokens = self.audio_token_count(mel_frames)
        if media_run.audio_in_video:
            input_ids = self.interleaved_prompt_ids(
                text_ids, audio_tokens, video["video_grid_thw"][0].tolist(), seconds_per_grid
            )
        else:
            video_tokens = int(video["video_grid_thw"].prod()) // vision.spatial_merge_size**2
            input_ids = self.prompt_ids(text_ids, [audio_tokens], [video_tokens])
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            **audio,
            **video,
            "video_second_per_grid": torch.tensor([seconds_per_grid]),
        }

    def check_inputs(self, inputs: ModelInputs, label: str) -> None:
        if "input_ids" not in inputs:
            raise ModelError(f"{label}: input_ids are required")
        if "attention_mask" not in inputs:
            raise ModelError(
                f"{label}: attention_mask is required (without it Qwen2.5-Omni silently drops "
                "TMRoPE positions)"
            )
        ids = inputs["input_ids"]
        tokens = self._token_ids()
        merge = self.config.vision_config.spatial_merge_size
        expected = {"audio": 0, "video": 0, "image": 0}
        if "input_features" in inputs:
            mask = inputs.get("feature_attention_mask")
            frames = (
                mask.sum(-1).tolist()
                if mask is not None
                else [inputs["input_features"].shape[-1]] * inputs["input_features"].shape[0]
            )
            expected["audio"] = sum(self.audio_token_count(int(t)) for t in frames)
        for key, grid_key in (("video", "video_grid_thw"), ("image", "image_grid_thw")):
            if grid_key in inputs:
                expected[key] = int(inputs[grid_key].prod(-1).sum()) // merge**2
        for name, count in expected.items():
            found = int((ids == tokens[name]).sum())
            if found != count:
                raise ModelError(
                    f"{label}: {found} {name} placeholder tokens but the {name} features need "
                    f"{count}; the model would silently misplace or drop them"
                )


def vision_patches(
    frames: np.ndarray,
    vision: Any,
    mean: Sequence[float],
    std: Sequence[float],
    max_pixels: int | None,
    min_pixels: int,
) -> dict[str, torch.Tensor]:
    """``pixel_values_videos`` and ``video_grid_thw`` of uint8 frames (n, H, W, 3) for a vision
    tower configured by ``vision`` (its patch, temporal patch and merge sizes): frames fitted by
    :func:`fit_frames`, scaled to [0, 1], normalized with ``mean``/``std`` and cut into patches —
    for one frame, equal to the Qwen-VL image processor's ``pixel_values`` (tested)."""
    fitted = fit_frames(
        frames, vision.patch_size * vision.spatial_merge_size, max_pixels, min_pixels
    )
    return media.video_patches(
        fitted,
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        mean=mean,
        std=std,
    )


def seeded_thinker(
    seed: int,
    *,
    audio: dict[str, Any],
    vision: dict[str, Any],
    text: dict[str, Any],
    specials: Mapping[str, int],
    user_token_id: int,
    attention: str = "sdpa",
    **attributes: Any,
) -> nn.Module:
    """A random-init ``Qwen2_5OmniThinkerForConditionalGeneration`` built under ``seed``.

    ``audio``, ``vision`` and ``text`` are the sub-configs; ``specials`` maps ``audio``,
    ``image``, ``video``, ``audio_start``, ``audio_end``, ``vision_start`` and ``vision_end`` to
    token ids (``vision_start_token_id`` is read by ``get_rope_index`` though not a declared
    field). Extra ``attributes`` are set on the config. The global random state is left as it was.
    """
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    config = Qwen2_5OmniThinkerConfig(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_index=specials["audio"],
        image_token_index=specials["image"],
        video_token_index=specials["video"],
        audio_start_token_id=specials["audio_start"],
        audio_end_token_id=specials["audio_end"],
        user_token_id=user_token_id,
    )
    for name, value in attributes.items():
        setattr(config, name, value)
    config.vision_start_token_id = specials["vision_start"]
    config.vision_end_token_id = specials["vision_end"]
    config._attn_implementation = attention
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return Qwen2_5OmniThinkerForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
