"""What patchwork needs to know about an architecture family, in one place per family.

An adapter maps a loaded model onto one shared vocabulary — decoder layers, attention, MLP, final
norm, unembedding — and reads which token positions belong to which position group. Everything
architecture-specific lives in the adapter; the engine and interventions only speak this vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from patchwork.data.conventions import Convention, VideoSampling
from patchwork.data.sample import ModelInputs, RunMedia
from patchwork.errors import ModelError

POSITION_GROUPS = ("audio", "video", "image", "text", "answer", "text_and_answer", "all")


def _attribute(root: Any, dotted: str) -> Any:
    node = root
    for part in dotted.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def load_thinker(
    thinker_class: Any,
    full_type: str,
    label: str,
    path: Path,
    config: Any,
    weights: bool = True,
    **options: Any,
) -> nn.Module:
    """The thinker of an omni model from a thinker checkpoint (``<full_type>_thinker``) or from a
    full one (``<full_type>``, thinker weights under ``thinker.*``; its talker and vocoder are not
    loaded — a full model's own ``from_pretrained`` would also unpickle speaker files).
    ``weights=False`` builds it from the config on the meta device (:meth:`ModelAdapter.empty`)."""
    if config.model_type not in (full_type, f"{full_type}_thinker"):
        raise ModelError(
            f"{path} is a {config.model_type!r} model, not a {label} one "
            f"({full_type!r} or '{full_type}_thinker')"
        )
    full = config.model_type == full_type
    thinker_config = config.thinker_config if full else config
    if not weights:
        return empty_model(thinker_class, thinker_config)
    mapping = {"key_mapping": {r"^thinker\.": ""}} if full else {}
    return thinker_class.from_pretrained(path, config=thinker_config, **mapping, **options)


def empty_model(model_class: Any, config: Any) -> nn.Module:
    """``model_class`` built from ``config`` on the meta device: its modules and shapes, no
    weights read and no memory."""
    with torch.device("meta"):
        return model_class._from_config(config)  # type: ignore[no-any-return]


class ModelAdapter(ABC):
    """One architecture family. Subclasses set the module paths and the position reading.

    Paths are dotted attribute paths from :attr:`root` (the module that is traced): they work on the
    plain torch module and on an nnsight wrapper of it alike.
    """

    family: ClassVar[str]
    layers_path: ClassVar[str]
    attention_name: ClassVar[str] = "self_attn"
    mlp_name: ClassVar[str] = "mlp"
    #: The decoder layer's norm in front of attention; None where queries and keys cannot be
    #: recomputed from a residual alone (attribution's attention correction needs them).
    attention_norm_name: ClassVar[str | None] = None
    #: The answer logits are the unembedding of the final norm of the last position's residual,
    #: one stream, nothing after (attribution's readout correction recomputes exactly that).
    plain_readout: ClassVar[bool] = False
    #: A decoder layer can be run alone from its input, positions, mask and a key/value cache of
    #: the earlier positions, so patched runs resume from their first changed layer and position
    #: (:mod:`patchwork.patching.partial_forward`); otherwise every patched run is a full trace.
    supports_resume: ClassVar[bool] = False
    final_norm_path: ClassVar[str]
    unembed_path: ClassVar[str]
    #: Audio sampling rate (Hz) the model's feature extractor expects.
    sampling_rate: ClassVar[int] = 16_000
    #: The chat template's content types of a user turn's media, in the order of the adapter's
    #: placeholder layout (empty: the adapter cannot render its prompt with a chat template).
    chat_media: ClassVar[tuple[str, ...]] = ()
    #: The family's official processor can build a run's inputs (``inputs: processor``).
    official_processor: ClassVar[bool] = False

    def __init__(self, model: nn.Module, source: Path | None = None) -> None:
        self.root = self.resolve_root(model)
        #: The checkpoint directory the model came from (its processor files live there).
        self.source = source

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: Path, config: Any, **options: Any) -> nn.Module:
        """Load a local checkpoint of this family (``options`` go to transformers)."""

    @classmethod
    def empty(cls, path: Path, config: Any) -> nn.Module:
        """The model of a checkpoint built from its config on the meta device, without reading
        its weights: enough for every check that needs only module paths and shapes
        (``patchwork validate``)."""
        raise ModelError(f"the {cls.family} adapter cannot build its model without the weights")

    def media_token_ids(self) -> list[int]:
        """Every token id of the media placeholders and their delimiters."""
        return []

    #: The config fields of the media placeholder ids (``{"audio": "audio_token_index"}``),
    #: each of which must lie in the text model's vocabulary (:meth:`config_problems`).
    token_fields: ClassVar[Mapping[str, str]] = {}

    def config_problems(self) -> list[str]:
        """``field: problem`` for each value of the parsed config of the model patchwork runs
        that its first forward would fail on (fields relative to that config, defaults filled in
        as transformers fills them): a multimodal rotary split (``mrope_section``) that does not
        cover half a head, a placeholder id (:attr:`token_fields`) beyond the vocabulary."""
        config = self.config
        text = getattr(config, "text_config", None) or config
        prefix = "text_config." if text is not config else ""
        problems = []
        rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None)
        sections = rope.get("mrope_section") if isinstance(rope, Mapping) else None
        if sections is not None:
            head_dim = (
                getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            )
            counts = isinstance(sections, list | tuple) and all(
                type(part) is int and part >= 0 for part in sections
            )
            if not counts or 2 * sum(sections) != head_dim:
                problems.append(
                    f"{prefix}rope_parameters.mrope_section: expected counts adding up to half "
                    f"the head dimension ({head_dim // 2}); got {str(sections)[:80]}"
                )
        vocabulary = getattr(text, "vocab_size", None)
        for field in self.token_fields.values():
            token = getattr(config, field, None)
            if isinstance(vocabulary, int) and (
                not isinstance(token, int) or not 0 <= token < vocabulary
            ):
                problems.append(
                    f"{field}: expected a token id of the vocabulary (0 to {vocabulary - 1}, "
                    f"{prefix}vocab_size {vocabulary}); got {str(token)[:40]}"
                )
        return problems

    @classmethod
    def resolve_root(cls, model: nn.Module) -> nn.Module:
        """The module to trace (e.g. the thinker inside a full omni model)."""
        return model

    @property
    def config(self) -> Any:
        return self.root.config

    @property
    def num_layers(self) -> int:
        return len(_attribute(self.root, self.layers_path))

    def layer(self, root: Any, index: int) -> Any:
        """Decoder layer ``index`` of ``root`` (the torch module or its nnsight envoy)."""
        return _attribute(root, self.layers_path)[index]

    def component(self, root: Any, index: int, component: str) -> Any:
        """The module whose output is ``component`` ('residual', 'attention', 'mlp'); for
        'heads', the attention output projection, whose *input* holds the heads' outputs."""
        layer = self.layer(root, index)
        if component == "residual":
            return layer
        if component == "attention":
            return getattr(layer, self.attention_name)
        if component == "mlp":
            return getattr(layer, self.mlp_name)
        if component == "heads":
            return getattr(layer, self.attention_name).o_proj
        raise ValueError(f"unknown component {component!r}")

    def site(self, root: Any, index: int, component: str) -> tuple[Any, Literal["output", "input"]]:
        """Where ``component`` of layer ``index`` is read and patched: a module and which of its
        values, ``'output'`` (default) or ``'input'`` (its first positional argument).

        Families that add something to the residual stream between layers (Qwen3-Omni's
        DeepStack) read the residual at the next module's input, after the addition. The heads'
        outputs are the output projection's input.
        """
        return self.component(root, index, component), "input" if component == "heads" else "output"

    def batch_axis(self, component: str) -> int:
        """Axis of the batch rows in ``component``'s hidden tensor (Gemma 3n's residual: 1)."""
        return 0

    def merge_streams(self, residual: torch.Tensor) -> torch.Tensor:
        """A recorded residual (…, seq, hidden) as the final norm would read it: one vector per
        position. Itself, but for families that keep several streams (Gemma 3n's AltUp)."""
        return residual

    def forward_kwargs(self, inputs: ModelInputs) -> dict[str, Any]:
        """Keyword arguments of one forward of a run (flags the tensors imply are added here)."""
        return dict(inputs)

    def processor_inputs(
        self, spec: Mapping[str, Any], base: Path, text_ids: Sequence[int], convention: Convention
    ) -> dict[str, torch.Tensor]:
        """A run's inputs made by the family's official processor from the files ``spec`` names
        (``inputs: processor``; :mod:`patchwork.models.official`)."""
        if not self.official_processor:
            raise ModelError(
                f"inputs: processor is not available for the {self.family} family; use the "
                "default builder"
            )
        from patchwork.models import official

        cache = self.__dict__.setdefault("_processors", {})
        if convention not in cache:
            cache[convention] = official.build_processor(self.source, convention)
        return official.processor_inputs(cache[convention], spec, base, text_ids, convention)

    def video_sampling(self, convention: Convention = "model_card") -> VideoSampling:
        """How video frames are taken for this family on the official route ``convention``
        (:mod:`patchwork.data.conventions`); default: the Qwen model cards'."""
        return VideoSampling(convention)

    def build_inputs(self, text_ids: Sequence[int], media: RunMedia) -> dict[str, torch.Tensor]:
        """A run's model inputs (batch of one) from its decoded media and question tokens."""
        raise ModelError(f"the {self.family} adapter cannot build inputs from media files")

    @staticmethod
    def output_tensor(component: str, output: Any) -> torch.Tensor:
        """The hidden-state tensor (batch, seq, hidden) inside a component's output."""
        return output[0] if isinstance(output, tuple) else output

    @abstractmethod
    def position_groups(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boolean masks of shape (seq,) for every name in POSITION_GROUPS, for one sample."""

    @abstractmethod
    def check_inputs(self, inputs: ModelInputs, label: str) -> None:
        """Raise ModelError when inputs would be silently misread by the model."""

    @abstractmethod
    def prompt_ids(
        self, text_ids: Sequence[int], audio_tokens: Sequence[int], video_tokens: Sequence[int]
    ) -> torch.Tensor:
        """input_ids (1, seq) of a prompt: each audio's and video's placeholders, then the text.

        The last text token is the answer position: its next-token prediction is the answer.
        """

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of (final-normed) hidden states as the model computes them from its last
        layer: the unembedding (an adapter adds what its model applies after it)."""
        return _attribute(self.root, self.unembed_path)(hidden)  # type: ignore[no-any-return]

    def answer_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) predicting the answer: those of the last prompt position."""
        return logits[:, -1, :]

    @staticmethod
    def stack_inputs(runs: Sequence[ModelInputs]) -> dict[str, torch.Tensor]:
        """Runs of one sample each, of one token layout, as the rows of one batch.

        Every tensor's first dimension lists that sample's items (tokens' row, audios, video
        patches, grids), so concatenating the runs along it is the batched layout.
        """
        return {key: torch.cat([run[key] for run in runs]) for key in runs[0]}

    @classmethod
    def repeat_inputs(cls, inputs: ModelInputs, rows: int) -> dict[str, torch.Tensor]:
        """A batch of ``rows`` identical copies of a one-sample run."""
        return cls.stack_inputs([inputs] * rows)


def text_and_answer(groups: Mapping[str, torch.Tensor], seq_len: int) -> dict[str, torch.Tensor]:
    """Complete modality masks with 'answer' (last position), 'text' (the rest), both together
    ('text_and_answer': every position that is not a media placeholder) and 'all'."""
    answer = torch.zeros(seq_len, dtype=torch.bool)
    answer[-1] = True
    modality = torch.zeros(seq_len, dtype=torch.bool)
    for mask in groups.values():
        modality |= mask
    return {
        **groups,
        "text": ~modality & ~answer,
        "answer": answer,
        "text_and_answer": ~modality,
        "all": torch.ones(seq_len, dtype=torch.bool),
    }
