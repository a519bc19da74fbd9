"""Gemma 3n: audio conformer, MobileNet-v5 vision tower (timm), AltUp decoder.

Facts this adapter guards (transformers 5.x, ``Gemma3nForConditionalGeneration``):

- a decoder layer's output is ``(altup_num_inputs, batch, seq, hidden)``: AltUp keeps 4 streams
  of the residual, and the *second* axis holds the batch. Recording takes every stream of row 0;
  patching writes whole ``(streams, positions)`` of the chosen rows, never across rows;
  attention (``(hidden, weights)``) and MLP outputs are ordinary ``(batch, seq, hidden)``;
- the vision tower is a timm model; timm cannot be installed beside torch 2.13 here, and the
  model class cannot even be built without it. The model is built without its vision tower and
  takes **precomputed vision-tower outputs** as ``image_features`` (n_images, soft tokens,
  vision hidden), which the model's own ``embed_vision`` projects, exactly as
  ``get_image_features`` does after the tower;
- every audio clip fills exactly ``audio_soft_tokens_per_image`` placeholders (188: up to 30 s;
  shorter clips are padded by the model), every image ``vision_soft_tokens_per_image`` (256);
- placeholder ids live in the vision and audio vocabularies above the text vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchwork.data.sample import ModelInputs, RunMedia
from patchwork.errors import DataError, ModelError
from patchwork.models.adapter import ModelAdapter, _attribute, empty_model, text_and_answer


def gemma3n_without_vision_class() -> type[Any]:
    """``Gemma3nForConditionalGeneration`` built without its timm vision tower.

    ``forward`` takes ``image_features`` (n_images, soft tokens, vision hidden): outputs of the
    vision tower computed elsewhere. Calling the model with ``pixel_values`` is refused.
    """
    from transformers import AutoModel, Gemma3nForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.gemma3n import modeling_gemma3n as gemma

    class Gemma3nModelWithoutVision(gemma.Gemma3nModel):
        def __init__(self, config: Any) -> None:
            gemma.Gemma3nPreTrainedModel.__init__(self, config)
            self.vision_tower = None
            self.vocab_size = config.text_config.vocab_size
            self.language_model = AutoModel.from_config(config.text_config)
            self.vocab_size_per_layer_input = config.text_config.vocab_size_per_layer_input
            self.audio_tower = AutoModel.from_config(config.audio_config)
            self.embed_vision = gemma.Gemma3nMultimodalEmbedder(
                config.vision_config, config.text_config
            )
            self.embed_audio = gemma.Gemma3nMultimodalEmbedder(
                config.audio_config, config.text_config
            )
            self.post_init()

    class Gemma3nWithoutVision(Gemma3nForConditionalGeneration):
        _keys_to_ignore_on_load_unexpected = [r"vision_tower\."]

        def __init__(self, config: Any) -> None:
            gemma.Gemma3nPreTrainedModel.__init__(self, config)
            self.model = Gemma3nModelWithoutVision(config)
            text = config.text_config
            self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
            self.post_init()

        def forward(self, *args: Any, image_features: torch.Tensor | None = None, **kwargs: Any):
            if kwargs.get("pixel_values") is not None:
                raise ModelError(
                    "Gemma 3n's vision tower needs timm, which is not installed; give "
                    "precomputed image_features instead of pixel_values"
                )
            if image_features is not None:
                config: Any = self.config
                scale = config.vision_config.hidden_size**0.5
                features = image_features.to(self.model.embed_vision.embedding_projection.weight)
                embedded = self.model.embed_vision(inputs_embeds=features * scale)
                kwargs["mm_encoder_outputs"] = {
                    "image": BaseModelOutputWithPooling(pooler_output=embedded)
                }
            return super().forward(*args, **kwargs)

    return Gemma3nWithoutVision


class Gemma3nAdapter(ModelAdapter):
    family = "gemma3n"
    layers_path = "model.language_model.layers"
    final_norm_path = "model.language_model.norm"
    unembed_path = "lm_head"

    @classmethod
    def from_pretrained(cls, path: Path, config: Any, **options: Any) -> nn.Module:
        if config.model_type != "gemma3n":
            raise ModelError(f"{path} is a {config.model_type!r} model, not a Gemma 3n one")
        return gemma3n_without_vision_class().from_pretrained(path, config=config, **options)

    @classmethod
    def empty(cls, path: Path, config: Any) -> nn.Module:
        if config.model_type != "gemma3n":
            raise ModelError(f"{path} is a {config.model_type!r} model, not a Gemma 3n one")
        return empty_model(gemma3n_without_vision_class(), config)

    def batch_axis(self, component: str) -> int:
        return 1 if component == "residual" else 0

    def shares_key_values(self, layer: int) -> bool:
        """Decoder layer ``layer`` reuses the keys and values an earlier layer computed (KV
        sharing, the config's ``kv_sharing_modes``: 'reuse'), so its attention has no k_proj or
        v_proj (path patching: :mod:`patchwork.patching.paths`)."""
        modes = getattr(self.config.get_text_config(), "kv_sharing_modes", None) or ()
        return layer < len(modes) and modes[layer] == "reuse"

    def merge_streams(self, residual: torch.Tensor) -> torch.Tensor:
        """(streams, seq, hidden) → (seq, hidden), as the text model merges its AltUp streams
        after the last layer: streams 1… projected back and rescaled to stream 0's magnitude,
        then all averaged (the final norm follows)."""
        text_model = _attribute(self.root, "model.language_model")
        first = residual[0]
        magnitude = first.pow(2).mean(-1, keepdim=True).sqrt()
        merged = [first]
        for stream, projection in enumerate(text_model.altup_unembed_projections, start=1):
            projected = projection(residual[stream]).to(first.dtype)
            scale = projected.pow(2).mean(-1, keepdim=True).clamp(min=1e-5).sqrt()
            merged.append(projected * magnitude / scale)
        return torch.stack(merged).mean(0)

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """The unembedding, then the final soft cap (``cap · tanh(logits / cap)``) as the
        model's forward applies it."""
        logits = super().readout(hidden)
        cap = getattr(self.config.get_text_config(), "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _token_ids(self) -> dict[str, int]:
        return {"audio": self.config.audio_token_id, "image": self.config.image_token_id}

    def position_groups(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = input_ids.reshape(-1)
        modality = {name: ids == token for name, token in self._token_ids().items()}
        modality["video"] = torch.zeros_like(ids, dtype=torch.bool)
        return text_and_answer(modality, ids.numel())

    def prompt_ids(
        self, text_ids: Sequence[int], audio_tokens: Sequence[int], video_tokens: Sequence[int]
    ) -> torch.Tensor:
        """Audio clips, then images (``video_tokens``: one count per image), then the text."""
        config, tokens = self.config, self._token_ids()
        ids: list[int] = []
        for count in audio_tokens:
            ids += [config.boa_token_id, *[tokens["audio"]] * count, config.eoa_token_id]
        for count in video_tokens:
            ids += [config.boi_token_id, *[tokens["image"]] * count, config.eoi_token_id]
        return torch.tensor([[*ids, *text_ids]])

    def check_inputs(self, inputs: ModelInputs, label: str) -> None:
        config = self.config
        if "input_ids" not in inputs:
            raise ModelError(f"{label}: input_ids are required")
        if "pixel_values" in inputs:
            raise ModelError(
                f"{label}: Gemma 3n's vision tower needs timm; give precomputed image_features"
            )
        ids = inputs["input_ids"]
        expected = {"audio": 0, "image": 0}
        if "input_features" in inputs:
            if "input_features_mask" not in inputs:
                raise ModelError(f"{label}: input_features need input_features_mask")
            expected["audio"] = (
                inputs["input_features"].shape[0] * config.audio_soft_tokens_per_image
            )
        if "image_features" in inputs:
            features = inputs["image_features"]
            shape = (config.vision_soft_tokens_per_image, config.vision_config.hidden_size)
            if features.ndim != 3 or tuple(features.shape[1:]) != shape:
                raise ModelError(
                    f"{label}: image_features must be (images, {shape[0]}, {shape[1]}), "
                    f"got {tuple(features.shape)}"
                )
            expected["image"] = features.shape[0] * config.vision_soft_tokens_per_image
        for name, token in self._token_ids().items():
            found = int((ids == token).sum())
            if found != expected[name]:
                raise ModelError(
                    f"{label}: {found} {name} placeholder tokens but the {name} features need "
                    f"{expected[name]}"
                )

    @cached_property
    def _audio_extractor(self) -> Any:
        from transformers import Gemma3nAudioFeatureExtractor

        if self.source is not None and (self.source / "preprocessor_config.json").is_file():
            try:
                return Gemma3nAudioFeatureExtractor.from_pretrained(
                    self.source, local_files_only=True
                )
            except (OSError, ValueError, TypeError):
                pass
        return Gemma3nAudioFeatureExtractor(
            feature_size=self.config.audio_config.input_feat_size, sampling_rate=self.sampling_rate
        )

    def build_inputs(self, text_ids: Sequence[int], media_run: RunMedia) -> dict[str, torch.Tensor]:
        """Gemma 3n log-mel audio (the model's own extractor) and precomputed image features."""
        if media_run.waveform is None:
            raise DataError("Gemma 3n runs need audio")
        if media_run.image_features is None:
            raise DataError(
                "Gemma 3n runs need precomputed image_features (its vision tower needs timm)"
            )
        limit = 30 * self.sampling_rate  # the extractor cuts longer audio silently
        if len(media_run.waveform) > limit:
            seconds = len(media_run.waveform) / self.sampling_rate
            raise DataError(
                f"Gemma 3n reads at most 30 s of audio, got {seconds:.1f} s; cut it with the "
                "run's 'seconds'"
            )
        audio = self._audio_extractor(
            [media_run.waveform],
            sampling_rate=self.sampling_rate,
            max_length=limit,
            return_tensors="pt",
        )
        features = media_run.image_features.to(torch.float32)
        if features.ndim == 2:
            features = features[None]
        config = self.config
        input_ids = self.prompt_ids(
            text_ids,
            [config.audio_soft_tokens_per_image],
            [config.vision_soft_tokens_per_image] * features.shape[0],
        )
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "input_features": audio["input_features"].to(torch.float32),
            "input_features_mask": audio["input_features_mask"].bool(),
            "image_features": features,
        }
