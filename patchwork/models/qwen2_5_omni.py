"""Qwen2.5-Omni: the thinker (audio encoder + vision encoder + TMRoPE decoder) and the full model.

Facts this adapter guards (transformers 5.x):

- the decoder is ``thinker.model.language_model``; a layer's output is a tensor, attention's a
  tuple ``(hidden, weights)``;
- one audio placeholder too few silently drops audio features: counts are checked here, from
  ``feature_attention_mask`` as audio tokens = ((T − 1) // 2 + 1 − 2) // 2 + 1 per clip, and
  video tokens = t·h·w / merge² per clip;
- without ``attention_mask`` the model silently falls back from TMRoPE to plain positions: it is
  required.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchwork.data.sample import ModelInputs
from patchwork.errors import ModelError
from patchwork.models.adapter import ModelAdapter, text_and_answer


def audio_token_count(mel_frames: int) -> int:
    """Audio placeholders the thinker's audio encoder yields for ``mel_frames`` log-mel frames."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


class Qwen25OmniAdapter(ModelAdapter):
    family = "qwen2_5_omni"
    layers_path = "model.language_model.layers"
    final_norm_path = "model.language_model.norm"
    unembed_path = "lm_head"

    @classmethod
    def from_pretrained(cls, path: Path, config: Any, **options: Any) -> nn.Module:
        """The thinker from a thinker checkpoint or from a full omni checkpoint.

        A full checkpoint's talker and vocoder are not needed for patching, and its
        ``from_pretrained`` would unpickle ``spk_dict.pt``; the thinker's weights are read from the
        safetensors instead (keys ``thinker.*``).
        """
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration as Thinker

        if config.model_type == "qwen2_5_omni":
            return Thinker.from_pretrained(
                path, config=config.thinker_config, key_mapping={r"^thinker\.": ""}, **options
            )
        if config.model_type == "qwen2_5_omni_thinker":
            return Thinker.from_pretrained(path, config=config, **options)
        raise ModelError(
            f"{path} is a {config.model_type!r} model, not a Qwen2.5-Omni one "
            "('qwen2_5_omni' or 'qwen2_5_omni_thinker')"
        )

    @classmethod
    def resolve_root(cls, model: nn.Module) -> nn.Module:
        thinker = getattr(model, "thinker", None)
        return thinker if thinker is not None else model

    def _token_ids(self) -> dict[str, int]:
        config = self.config
        return {
            "audio": config.audio_token_index,
            "video": config.video_token_index,
            "image": config.image_token_index,
        }

    def position_groups(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = input_ids.reshape(-1)
        modality = {name: ids == token for name, token in self._token_ids().items()}
        return text_and_answer(modality, ids.numel())

    def prompt_ids(
        self, text_ids: Sequence[int], audio_tokens: Sequence[int], video_tokens: Sequence[int]
    ) -> torch.Tensor:
        config = self.config
        ids: list[int] = []
        for count in audio_tokens:
            ids += [
                config.audio_start_token_id,
                *[config.audio_token_index] * count,
                config.audio_end_token_id,
            ]
        for count in video_tokens:
            ids += [
                config.vision_start_token_id,
                *[config.video_token_index] * count,
                config.vision_end_token_id,
            ]
        return torch.tensor([[*ids, *text_ids]])

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
            expected["audio"] = sum(audio_token_count(int(t)) for t in frames)
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
