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
- interleaved audio-in-video clips are not supported by this adapter yet (they are refused by
  :meth:`check_inputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.errors import ModelError
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
    family = "qwen3_omni"
    pixel_mean = (0.5, 0.5, 0.5)
    pixel_std = (0.5, 0.5, 0.5)

    @classmethod
    def from_pretrained(cls, path: Path, config: Any, **options: Any) -> nn.Module:
        """The thinker from a thinker checkpoint or from a full Qwen3-Omni checkpoint."""
        from transformers import Qwen3OmniMoeThinkerForConditionalGeneration as Thinker

        if config.model_type == "qwen3_omni_moe":
            return Thinker.from_pretrained(
                path, config=config.thinker_config, key_mapping={r"^thinker\.": ""}, **options
            )
        if config.model_type == "qwen3_omni_moe_thinker":
            return Thinker.from_pretrained(path, config=config, **options)
        raise ModelError(
            f"{path} is a {config.model_type!r} model, not a Qwen3-Omni one "
            "('qwen3_omni_moe' or 'qwen3_omni_moe_thinker')"
        )

    def _token_ids(self) -> dict[str, int]:
        config = self.config
        return {
            "audio": config.audio_token_id,
            "video": config.video_token_id,
            "image": config.image_token_id,
        }

    def _specials(self) -> dict[str, int]:
        config = self.config
        return {
            name: int(getattr(config, f"{name}_token_id", None) or default)
            for name, default in RELEASED_SPECIALS.items()
        }

    def audio_token_count(self, mel_frames: int) -> int:
        return qwen3_audio_token_count(mel_frames, self.config.audio_config.n_window)

    def site(self, root: Any, index: int, component: str) -> tuple[Any, Any]:
        """The residual after layer ``index`` is the next layer's (or the final norm's) input,
        where DeepStack's visual features have been added already."""
        if component != "residual":
            return super().site(root, index, component)
        if index + 1 < self.num_layers:
            return self.layer(root, index + 1), "input"
        node = root
        for part in self.final_norm_path.split("."):
            node = getattr(node, part)
        return node, "input"

    def forward_kwargs(self, inputs: ModelInputs) -> dict[str, Any]:
        return dict(inputs)

    def check_inputs(self, inputs: ModelInputs, label: str) -> None:
        super().check_inputs(inputs, label)
        special = self._specials()
        ids = inputs["input_ids"]
        starts = ids[..., :-1] == special["vision_start"]
        if bool((starts & (ids[..., 1:] == special["audio_start"])).any()):
            raise ModelError(
                f"{label}: interleaved audio-in-video clips are not supported for Qwen3-Omni yet; "
                "give the soundtrack as a separate audio"
            )

    def build_inputs(self, text_ids: Any, media_run: Any) -> dict[str, torch.Tensor]:
        if media_run.audio_in_video:
            raise ModelError(
                "interleaved audio-in-video clips are not supported for Qwen3-Omni yet"
            )
        return super().build_inputs(text_ids, media_run)
