"""Qwen3-Omni (MoE thinker): audio encoder, Qwen3-VL vision encoder with DeepStack, MoE decoder.

Facts this adapter guards (transformers 5.x, ``Qwen3OmniMoeThinkerForConditionalGeneration``):

- the decoder is ``thinker.model.language_model``; its MLPs are sparse MoE blocks whose output is
  one tensor (batch, seq, hidden), like a dense MLP's;
- **DeepStack**: after the output of each of the first ``len(deepstack_visual_indexes)`` layers,
  the language model adds multi-scale visual features at the image/video positions. The residual
  stream "after layer l" is therefore read and patched at the *input* of layer l+1 (the final
  norm's input after the last layer). Patching ``layers[l].output`` instead would let the target
  run's own visual features be added on top of the patched state — added twice;
- audio placeholders per clip, from its ``T`` log-mel frames: windows of ``2·n_window`` frames
  give 13 tokens each, the rest ((r − 1) // 2 + 1 − 1) // 2 + 1 … (three stride-2 convolutions);
- ``vision_start_token_id`` is read by the rope index although the thinker config does not
  declare it; pixels are normalized with mean = std = 0.5 (Qwen3-VL), patches of 16 merged 2×2;
- audio-in-video clips (``use_audio_in_video``) are laid out as ``vision_start audio_start …
  audio_end vision_end`` with the placeholders merged one by one in time order (video first on a
  tie): video token times are grid index × seconds per grid × ``position_id_per_seconds``, audio
  token ``i`` sits at time ``i`` — not in fixed chunks as in Qwen2.5-Omni.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from patchwork.models.adapter import _attribute, load_thinker
from patchwork.models.qwen2_5_omni import Qwen25OmniAdapter

#: Special token ids of the released checkpoints, used when a config does not name them.
RELEASED_SPECIALS = {
    "audio_start": 151669,
    "audio_end": 151670,
    "vision_start": 151652,
    "vision_end": 151653,
}


def qwen3_audio_token_count(mel_frames: int, n_window: int = 50) -> int:
    """Audio placeholders the Qwen3-Omni audio encoder yields for ``mel_frames`` frames."""
    window = 2 * n_window
    rest = mel_frames % window
    after_first = (rest - 1) // 2 + 1
    return ((after_first - 1) // 2 + 1 - 1) // 2 + 1 + (mel_frames // window) * 13


class Qwen3OmniAdapter(Qwen25OmniAdapter):
    #: A resumed run steps through the decoder layers itself and would skip DeepStack's additions.
    supports_resume = False
    family = "qwen3_omni"
    pixel_mean = (0.5, 0.5, 0.5)
    pixel_std = (0.5, 0.5, 0.5)
    max_frame_pixels = 768 * 32 * 32
    #: Its processor neither pads nor cuts clips (``padding=True``, ``truncation=False``).
    max_audio_samples = None
    #: Qwen3-VL patches of 16 merged 2 × 2; the model card still calls qwen-omni-utils with its
    #: default 14-pixel patches (frames fitted to 28), then the video processor fits them to 32.
    published_unit = 32
    #: ``Qwen3OmniMoeProcessor`` called without ``fps`` assumes 1 frame per second.
    processor_fps = 1.0

    @classmethod
    def from_pretrained(cls, path: Path, config: Any, **options: Any) -> nn.Module:
        """The thinker from a thinker checkpoint or from a full Qwen3-Omni checkpoint."""
        from transformers import Qwen3OmniMoeThinkerForConditionalGeneration as Thinker

        return load_thinker(Thinker, "qwen3_omni_moe", "Qwen3-Omni", path, config, **options)

    @classmethod
    def empty(cls, path: Path, config: Any) -> nn.Module:
        from transformers import Qwen3OmniMoeThinkerForConditionalGeneration as Thinker

        return load_thinker(Thinker, "qwen3_omni_moe", "Qwen3-Omni", path, config, weights=False)

    token_fields = {"audio": "audio_token_id", "video": "video_token_id", "image": "image_token_id"}

    def _specials(self) -> dict[str, int]:
        config = self.config
        return {
            name: int(getattr(config, f"{name}_token_id", None) or default)
            for name, default in RELEASED_SPECIALS.items()
        }

    def audio_token_count(self, mel_frames: int) -> int:
        return qwen3_audio_token_count(mel_frames, self.config.audio_config.n_window)

    def site(self, root: Any, index: int, component: str) -> tuple[Any, Literal["output", "input"]]:
        """The residual after layer ``index`` is the next layer's (or the final norm's) input,
        where DeepStack's visual features have been added already."""
        if component != "residual":
            return super().site(root, index, component)
        if index + 1 < self.num_layers:
            return self.layer(root, index + 1), "input"
        return _attribute(root, self.final_norm_path), "input"

    def interleaved_prompt_ids(
        self,
        text_ids: Sequence[int],
        audio_tokens: int,
        video_grid: Sequence[int],
        seconds_per_grid: float,
    ) -> torch.Tensor:
        config, tokens, special = self.config, self._token_ids(), self._specials()
        grid_t, grid_h, grid_w = (int(v) for v in video_grid)
        merge = config.vision_config.spatial_merge_size
        per_frame = (grid_h // merge) * (grid_w // merge)
        times = torch.arange(grid_t).float() * seconds_per_grid * config.position_id_per_seconds
        video_times = times.repeat_interleave(per_frame).tolist()
        merged, video, audio = [], 0, 0
        while video < len(video_times) and audio < audio_tokens:
            if video_times[video] <= audio:
                merged.append(tokens["video"])
                video += 1
            else:
                merged.append(tokens["audio"])
                audio += 1
        merged += [tokens["video"]] * (len(video_times) - video)
        merged += [tokens["audio"]] * (audio_tokens - audio)
        ids = [special["vision_start"], special["audio_start"], *merged]
        ids += [special["audio_end"], special["vision_end"]]
        return torch.tensor([[*ids, *text_ids]])
