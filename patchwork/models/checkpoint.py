"""A checkpoint's weights checked against the model its config describes, from the safetensors
headers alone: every tensor the model expects is present, with its shape and a dtype of its kind.

transformers loads a folder that lacks some (or all) of a model's tensors with a warning and
random values in their place; a run on it would finish and store meaningless effects. These checks
read only the headers (``safetensors.safe_open``: names, shapes, dtypes; it also refuses a header
that does not cover the file), so ``patchwork validate`` can make them without loading anything.

The names a checkpoint uses are those transformers writes (``save_pretrained`` reverts its
renamings, e.g. Qwen2.5-Omni's ``model.language_model.*`` is stored as ``model.*``); a folder
written under the model's own names, or under a prefix transformers strips when it loads (a full
omni checkpoint's ``thinker.``), matches too. Where the check passed, transformers' own load
report (a table of missing and unexpected names) is withheld: :func:`report_withheld`.

:func:`read_config` and :func:`build_empty` turn what a damaged ``config.json`` makes transformers
raise into one :class:`ConfigError` (a :class:`~patchwork.errors.ModelError`) naming the file;
the folder's files and sizes are checked first (:mod:`patchwork.models.checkpoint_files`).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchwork.errors import ModelError
from patchwork.models.checkpoint_files import check_files, check_values, read_json, weight_files

#: How many names a refusal shows.
SHOWN = 3


def read_config(folder: Path, trust_remote_code: bool = False) -> Any:
    """The transformers config of a checkpoint folder's ``config.json``, once every file of the
    folder is known to be a regular file and every size ``config.json`` declares to lie within
    bounds (see :mod:`patchwork.models.checkpoint_files`).

    Raises:
        ConfigError: naming the file (and the field), when it is not JSON, a size is out of
            bounds, a number is NaN, a dtype unknown, or transformers cannot read it (an
            unknown ``model_type``, fields that contradict each other such as
            ``num_hidden_layers`` and ``layer_types``).
        patchwork.errors.ModelError: naming a file of the folder that is not a regular file.
    """
    import transformers

    check_files(folder)
    path = Path(folder) / "config.json"
    if path.exists():  # else transformers says that it is missing
        try:
            check_values(read_json(path), path)
        except RecursionError:
            raise ConfigError(f"{path} is nested too deeply for a config") from None
        except ModelError as error:
            raise ConfigError(str(error)) from None
    try:
        return transformers.AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except _config_errors() as error:
        raise ConfigError(f"cannot read {path} ({_reason(error)})") from None


def build_empty(build: Callable[[], nn.Module], folder: Path) -> nn.Module:
    """``build()`` — a model made from a folder's config on the meta device — with what
    transformers raises for a config it read but cannot realise (heads that do not divide the
    hidden size, sizes whose product overflows …) as one :class:`ConfigError`. A
    ``RuntimeError`` counts only where torch or transformers raised it, not patchwork's own code
    (a bug keeps its traceback)."""
    errors: tuple[type[BaseException], ...] = (*_config_errors(), RuntimeError)
    try:
        with warnings.catch_warnings():  # a size of 0: the error below, or a model without it
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            return build()
    except errors as error:
        if isinstance(error, RuntimeError) and _raised_in(error, Path(__file__).parents[1]):
            raise
        raise ConfigError(
            f"{Path(folder) / 'config.json'} describes a model transformers cannot build "
            f"({_reason(error)})"
        ) from None


def _raised_in(error: BaseException, package: Path) -> bool:
    """Whether the innermost frame of ``error``'s traceback lies in ``package``."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).is_relative_to(package)


def _config_errors() -> tuple[type[BaseException], ...]:
    """What transformers (and the strict dataclasses of huggingface_hub under its configs) raise
    for a config file's values; a config is a user's file, so each is the user's to fix."""
    from huggingface_hub.errors import StrictDataclassError

    return (
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        ZeroDivisionError,
        OverflowError,
        RecursionError,
        StrictDataclassError,
    )


def _reason(error: BaseException) -> str:
    """An error's message in one short line (transformers' are long and multi-line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text[:300]


class ConfigError(ModelError):
    """A checkpoint's ``config.json`` cannot be read, or describes a model that cannot be built."""


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a safetensors header describes it."""

    shape: tuple[int, ...]
    dtype: str  # safetensors' name: F32, BF16, I64 …
    file: Path

    @property
    def floating(self) -> bool:
        return self.dtype.startswith(("F", "BF"))


def stored_tensors(folder: Path) -> dict[str, StoredTensor]:
    """Every tensor of the folder's safetensors files, from their headers (no data read).

    Raises:
        patchwork.errors.ModelError: naming a file whose header is damaged or does not cover
            the file (truncated, garbled, not safetensors at all), or that cannot be read.
    """
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, StoredTensor] = {}
    for file in weight_files(folder):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    part = handle.get_slice(name)
                    tensors[name] = StoredTensor(tuple(part.get_shape()), part.get_dtype(), file)
        except SafetensorError as error:
            raise ModelError(f"{file} is a damaged safetensors file ({error})") from None
        except OSError as error:
            raise ModelError(f"cannot read {file} ({error.strerror or error})") from None
    return tensors


def expected_tensors(model: nn.Module) -> list[dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """The tensors a checkpoint of ``model`` (built on the meta device is enough) must hold,
    name → (shape, dtype): as transformers' ``save_pretrained`` would name them, and as the
    model names them (the two are equal for most models). Tied copies and what transformers
    tolerates missing (``_keys_to_ignore_on_load_missing``) are left out."""
    state = dict(model.state_dict())
    for name in getattr(model, "_keys_to_ignore_on_save", None) or ():
        state.pop(name, None)
    tolerated = [
        re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()
    ]
    state = _untied(state, model)
    namings = [state]
    saved = _as_saved(state, model)
    if saved is not None and set(saved) != set(state):
        namings.insert(0, saved)
    return [
        {
            name: (tuple(tensor.shape), tensor.dtype)
            for name, tensor in naming.items()
            if not any(pattern.search(name) for pattern in tolerated)
        }
        for naming in namings
    ]


def _untied(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` without the tied copies safetensors cannot store (transformers' own rule)."""
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError:  # another transformers: keep the names the model itself declares
        tied = getattr(model, "_tied_weights_keys", None) or {}
        return {name: tensor for name, tensor in state.items() if name not in tied}
    return remove_tied_weights_from_state_dict(state, model)  # type: ignore[arg-type]


def _as_saved(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor] | None:
    """``state`` renamed (and, for merged tensors, split) as ``save_pretrained`` writes it;
    None where this transformers has no such step."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return None
    return revert_weight_conversion(model, state)  # type: ignore[arg-type,no-any-return]


def check_folder(folder: Path, empty: nn.Module | None) -> None:
    """Check a checkpoint folder's weights from their headers alone, before anything is
    allocated: the headers are whole (:func:`stored_tensors`); and, given the ``empty`` model
    (built from the folder's config on the meta device), the config describes no far larger model
    than the files hold (a typo'd or foreign config would exhaust memory) and the files hold every
    tensor of it (:func:`check_weights`).

    Raises:
        patchwork.errors.ModelError: naming the file or folder and what is wrong.
    """
    stored = stored_tensors(folder)
    if empty is None:
        return
    size = sum(file.stat().st_size for file in weight_files(folder))
    parameters = sum(parameter.numel() for parameter in empty.parameters())
    if parameters > 4 * size:  # under 2 bits a weight, even 4-bit packing is far above
        raise ModelError(
            f"{folder}/config.json describes {parameters:,} parameters but its weight files hold "
            f"{size:,} bytes; the config does not belong to these weights"
        )
    check_weights(folder, empty, stored)


def check_weights(folder: Path, model: nn.Module, stored: Mapping[str, StoredTensor]) -> None:
    """Refuse a checkpoint folder whose ``stored`` tensors (see :func:`stored_tensors`) miss a
    tensor ``model`` expects, hold one in another shape, or hold a floating-point one as integers
    (or the reverse). Other floating-point dtypes are fine: loading casts them.

    Raises:
        patchwork.errors.ModelError: naming the folder and its weight files, how many tensors
            are missing and a few of them, and a few of the stored names the model does not
            expect (a renamed checkpoint shows its renaming there).
    """
    expected, prefix = _best_match(expected_tensors(model), stored, _load_prefixes(model))
    missing = sorted(prefix + name for name in expected if prefix + name not in stored)
    if missing:
        names = sorted({tensor.file.name for tensor in stored.values()})
        files = f" ({', '.join(names[:SHOWN])}{', …' if len(names) > SHOWN else ''})"
        known = {prefix + name for name in expected}
        others = sorted(name for name in stored if name not in known)
        unexpected = (
            f"; it holds {len(others)} tensors the model does not expect, e.g. "
            f"{', '.join(others[:SHOWN])}"
            if others
            else ""
        )
        raise ModelError(
            f"{len(missing)} of the model's {len(expected)} weights are not in the safetensors "
            f"files of {folder}{files if names else ''}: missing e.g. "
            f"{', '.join(missing[:SHOWN])}{unexpected}; the model would run on random values in "
            "their place — does config.json belong to these weights?"
        )
    for name, (shape, dtype) in sorted(expected.items()):
        found = stored[prefix + name]
        if found.shape != shape:
            raise ModelError(
                f"{found.file}: mismatched sizes: tensor {prefix + name} has shape "
                f"{list(found.shape)}, the model config.json describes {list(shape)}"
            )
        if found.floating != dtype.is_floating_point:
            kind = "floating-point" if dtype.is_floating_point else "integer"
            raise ModelError(
                f"{found.file}: tensor {prefix + name} is stored as {found.dtype}; the model "
                f"needs {kind} values there ({str(dtype).removeprefix('torch.')})"
            )


#: Elements of a weight checked at a time by :func:`check_finite` (its transient mask: 16 MiB).
FINITE_STEP = 2**24


def check_finite(model: nn.Module, folder: Path) -> None:
    """Refuse a model loaded from ``folder`` whose weights hold a NaN or an infinity: every
    effect of a run on it would be NaN, or every answer the same. The headers cannot tell, so
    this is checked once, where the weights are loaded: each floating-point parameter in steps
    of :data:`FINITE_STEP` elements (``torch.isfinite``), on the device it was loaded to.

    Raises:
        patchwork.errors.ModelError: naming the weight file and the tensor as it is stored there
            (the folder and the model's name for it where no stored name matches one alone).
    """
    for name, parameter in model.named_parameters():
        if not parameter.is_floating_point() or parameter.is_meta:
            continue
        flat = parameter.detach().reshape(-1)
        if all(bool(torch.isfinite(part).all()) for part in flat.split(FINITE_STEP)):
            continue
        stored = _stored_as(name, stored_tensors(folder))
        where = f"{stored[1].file}: tensor {stored[0]}" if stored else f"{folder}: weight {name}"
        raise ModelError(
            f"{where} holds NaN or infinite values; every result of the model would be "
            "meaningless — the weights are damaged"
        )


def _stored_as(name: str, stored: Mapping[str, StoredTensor]) -> tuple[str, StoredTensor] | None:
    """The stored tensor of the model's weight ``name``: the one stored name that ends with the
    longest dotted suffix of ``name`` (a checkpoint may store it renamed, e.g. Qwen2.5-Omni's
    ``model.language_model.layers.0…`` as ``model.layers.0…``); None where none or several do."""
    parts = name.split(".")
    for start in range(len(parts)):
        suffix = ".".join(parts[start:])
        found = [key for key in stored if key == suffix or key.endswith(f".{suffix}")]
        if found:
            return (found[0], stored[found[0]]) if len(found) == 1 else None
    return None


def missing_tensors(model: nn.Module, stored: Mapping[str, StoredTensor]) -> list[str]:
    """The names (as a checkpoint stores them, sorted) of the tensors ``model`` expects that are
    not among ``stored``: what transformers would fill with random values."""
    expected, prefix = _best_match(expected_tensors(model), stored, _load_prefixes(model))
    return sorted(prefix + name for name in expected if prefix + name not in stored)


def _load_prefixes(model: nn.Module) -> list[str]:
    """The prefixes transformers strips from every stored name when it loads ``model`` (a full
    omni checkpoint's ``thinker.``), from its conversion mapping; none where this transformers
    has no such mapping. Any other prefix (a renamed checkpoint's ``x.``) leaves every tensor
    missing, as transformers would."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange
    except ImportError:
        return []
    if not isinstance(model, PreTrainedModel):
        return []
    return sorted(
        {
            f"{conversion.prefix_to_remove}."
            for conversion in get_model_conversion_mapping(model)  # type: ignore[arg-type]
            if isinstance(conversion, PrefixChange)
            and conversion.prefix_to_remove
            and not conversion.model_prefix
            and not conversion.scope_prefix
        }
    )


def _best_match(
    namings: list[dict[str, Any]], stored: Mapping[str, StoredTensor], prefixes: list[str]
) -> tuple[dict[str, Any], str]:
    """The naming under which most expected tensors are stored, and the prefix (none, or one of
    ``prefixes``) they are stored under; ties go to no prefix and to the first naming."""
    scored = [
        (sum(prefix + name in stored for name in naming), -p, -n, prefix)
        for p, prefix in enumerate(["", *prefixes])
        for n, naming in enumerate(namings)
    ]
    _, _, index, prefix = max(scored)
    return namings[-index], prefix


@contextmanager
def report_withheld() -> Iterator[None]:
    """transformers' load report (its table of missing and unexpected names, over a hundred
    lines for a renamed checkpoint) withheld: for loads patchwork has checked beforehand
    (:func:`check_weights`), whose own refusal is one line. Its other messages still show (a
    filter, not a level: transformers logs more, not less, above the warning level)."""
    logger = logging.getLogger("transformers.modeling_utils")
    report = _LoadReport()
    logger.addFilter(report)
    try:
        yield
    finally:
        logger.removeFilter(report)


class _LoadReport(logging.Filter):
    """Drops transformers' load report, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


#: Values of each tensor that :func:`weights_fingerprint` reads, evenly spread.
FINGERPRINT_VALUES = 4096


def weights_fingerprint(model: nn.Module) -> str:
    """A SHA-256 of the model's weights as loaded: every parameter's and buffer's name, shape,
    dtype and :data:`FINGERPRINT_VALUES` evenly spread values. Another checkpoint put in the same
    folder changes it (a store recording it then refuses to mix two models); moving the same
    weights to another device does not."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_VALUES)
        picked = flat[::step][:FINGERPRINT_VALUES].contiguous().cpu()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
        digest.update(picked.view(torch.uint8).numpy().tobytes() if picked.numel() else b"")
    return digest.hexdigest()
