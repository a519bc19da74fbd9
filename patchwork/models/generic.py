"""Any model by declared facts: module paths and placeholder token ids, written in the study file.

A model without a built-in adapter still works when the study declares (``model.generic``):

- ``architecture``: the transformers class to load (a name exported by ``transformers``);
- ``layers``, ``attention``, ``mlp``, ``final_norm``, ``unembed``: dotted module paths from the
  traced root (``root``, default the loaded model itself);
- ``position_groups``: for audio / video / image, the token ids or id ranges ``"a-b"`` of its
  placeholders (text and answer follow: answer = last position, text = the rest);
- ``prompt``: the text given to the checkpoint's own processor, with ``{question}``; the
  processor expands placeholders and extracts features (``media``: which decoded media it gets).

Placeholder counts cannot be checked without knowing the family; the processor is trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from patchwork.data.sample import ModelInputs, RunMedia
from patchwork.errors import DataError, ModelError
from patchwork.models.adapter import ModelAdapter, _attribute, empty_model, text_and_answer
from patchwork.study.specs import GenericSpec, parse_id_ranges


class GenericAdapter(ModelAdapter):
    """Base of the adapter classes :meth:`declare` makes from a study's ``model.generic``."""

    family = "generic"
    spec: ClassVar[GenericSpec]
    trust_remote_code: ClassVar[bool] = False

    @classmethod
    def declare(cls, spec: GenericSpec, trust_remote_code: bool = False) -> type[GenericAdapter]:
        """An adapter class carrying ``spec``'s paths."""
        attributes = {
            "spec": spec,
            "sampling_rate": spec.sampling_rate,
            "trust_remote_code": trust_remote_code,
            "layers_path": spec.layers,
            "attention_name": spec.attention,
            "mlp_name": spec.mlp,
            "final_norm_path": spec.final_norm,
            "unembed_path": spec.unembed,
        }
        return type(f"Declared{spec.architecture}Adapter", (cls,), attributes)

    @classmethod
    def model_class(cls) -> Any:
        """The transformers class the study names (``generic.architecture``)."""
        import transformers

        model_class = getattr(transformers, cls.spec.architecture, None)
        if not isinstance(model_class, type) or not hasattr(model_class, "from_pretrained"):
            raise ModelError(
                f"generic.architecture: transformers has no model class {cls.spec.architecture!r}"
            )
        return model_class

    @classmethod
    def from_pretrained(cls, path: Path, config: Any, **options: Any) -> nn.Module:
        return cls.model_class().from_pretrained(path, config=config, **options)  # type: ignore[no-any-return]

    @classmethod
    def empty(cls, path: Path, config: Any) -> nn.Module:
        return empty_model(cls.model_class(), config)

    @classmethod
    def resolve_root(cls, model: nn.Module) -> nn.Module:
        return _attribute(model, cls.spec.root) if cls.spec.root else model

    @property
    def config(self) -> Any:
        return getattr(self.root, "config", None)

    def check_paths(self) -> None:
        """ModelError naming the first declared path that does not exist in the model."""
        for field, path in (
            ("layers", self.layers_path),
            ("final_norm", self.final_norm_path),
            ("unembed", self.unembed_path),
        ):
            try:
                _attribute(self.root, path)
            except (AttributeError, IndexError) as error:
                raise ModelError(
                    f"generic.{field}: no module {path!r} in the model ({error})"
                ) from None
        first = self.layer(self.root, 0)
        for field, name in (("attention", self.attention_name), ("mlp", self.mlp_name)):
            if not hasattr(first, name):
                raise ModelError(f"generic.{field}: decoder layers have no submodule {name!r}")

    def position_groups(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = input_ids.reshape(-1)
        modality = {}
        for name in ("audio", "video", "image"):
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for first, last in parse_id_ranges(self.spec.position_groups.get(name, ())):
                mask |= (ids >= first) & (ids <= last)
            modality[name] = mask
        return text_and_answer(modality, ids.numel())

    def prompt_ids(
        self, text_ids: Sequence[int], audio_tokens: Sequence[int], video_tokens: Sequence[int]
    ) -> torch.Tensor:
        raise ModelError("generic models build prompts with their own processor")

    def check_inputs(self, inputs: ModelInputs, label: str) -> None:
        if "input_ids" not in inputs:
            raise ModelError(f"{label}: input_ids are required")
        if "attention_mask" not in inputs:
            raise ModelError(f"{label}: attention_mask is required")

    @cached_property
    def processor(self) -> Any:
        from transformers import AutoProcessor

        if self.source is None:
            raise ModelError("generic models need a checkpoint directory with a processor")
        try:
            return AutoProcessor.from_pretrained(
                self.source, local_files_only=True, trust_remote_code=self.trust_remote_code
            )
        except (OSError, ValueError, TypeError) as error:
            raise ModelError(f"cannot load the processor in {self.source} ({error})") from None

    def build_inputs(self, text_ids: Sequence[int], media_run: RunMedia) -> dict[str, torch.Tensor]:
        """The checkpoint's processor applied to ``prompt`` and the media named in ``media``.

        ``text_ids`` are ignored: the processor tokenizes the prompt (with the question) itself;
        the question reaches here through :attr:`RunMedia.question`.
        """
        arguments: dict[str, Any] = {}
        for kind in self.spec.media:
            if kind == "audio":
                if media_run.waveform is None:
                    raise DataError("this model's runs need audio")
                arguments["audio"] = [media_run.waveform]
                arguments["sampling_rate"] = self.sampling_rate
            else:
                if media_run.frames is None:
                    raise DataError("this model's runs need frames (or a video)")
                frames = list(media_run.frames)
                arguments[kind] = frames if kind == "images" else [frames]
        prompt = self.spec.prompt.format(question=media_run.question)
        try:
            batch = self.processor(text=prompt, return_tensors="pt", **arguments)
        except (ValueError, TypeError, KeyError) as error:
            raise DataError(f"the model's processor refused the run ({error})") from None
        return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
