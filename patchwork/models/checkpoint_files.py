"""The files of a checkpoint folder, checked before transformers reads any of them.

transformers opens what a folder holds without asking what it is: a FIFO named ``config.json`` or
``model.safetensors`` makes it wait for ever, a negative size in ``config.json`` fails deep inside
torch, a billion layers take hours to build even on the meta device, a damaged ``tokenizer.json``
raises a bare ``KeyError``, and a shard index naming a missing shard is found only at loading.
Each check here reads headers and small JSON files alone, with bounds, and refuses in one
:class:`~patchwork.errors.ModelError` naming the file (and the field):

- :func:`check_files`: every entry of the folder a regular file or a folder, from ``stat``;
- :func:`check_values`: every size and count of ``config.json`` within bounds, every number a
  number, every dtype one torch knows;
- :func:`weight_files`: the safetensors files transformers loads, as it chooses them;
- :func:`read_tokenizer`: a ``tokenizer.json`` that the tokenizers library reads.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from pathlib import Path
from typing import Any

from patchwork import files
from patchwork.errors import ModelError

#: The weights transformers loads from a folder: this file, else the shards this index names.
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
#: Bounds of a whole-file read: ``config.json`` and the shard index; ``tokenizer.json``.
MAX_JSON_BYTES, MAX_TOKENIZER_BYTES = 64 * 2**20, 512 * 2**20
#: Bounds of the sizes a ``config.json`` declares: any size or count below 2³¹, and a count of
#: modules (layers, blocks; each one is built, even on the meta device) at most this.
MAX_SIZE, MAX_MODULES = 2**31 - 1, 1024
#: The keys of ``config.json`` (at any depth) that hold sizes or counts: none is below -1 (some
#: configs write -1 for "unset", e.g. Phi-4's ``chunk_size``) …
SIZE_KEY = re.compile(
    r"(^|_)(size|dim|layers|depth|heads|experts|blocks|positions|embeddings|bins)(_|$)"
    r"|^(num|n)_|^d_model$"
)
#: … the widths and counts a model is built from are never negative (a model without shared
#: experts has ``shared_expert_intermediate_size`` 0) …
BUILT_KEY = re.compile(
    r"(^|_)(layers|depth|heads|experts|blocks|vocab_size|hidden_size|intermediate_size|ffn_dim"
    r"|head_dim|output_dim)$|^d_model$"
)
#: … its main widths at least 1 …
WIDTH_KEY = re.compile(r"^(vocab_size|hidden_size|intermediate_size|d_model|num_mel_bins)$")
#: … and counts of modules are at most :data:`MAX_MODULES`.
MODULES_KEY = re.compile(r"(^|_)(layers|depth|blocks)$")
#: The keys whose values may be infinite (transformers' own default of ``time_step_limit`` is
#: ``(0.0, inf)``); no number anywhere may be NaN.
UNBOUNDED_KEY = re.compile(r"(^|_)limit$")
#: The keys that name a torch dtype (``float32``, ``bfloat16`` …); transformers looks the name up
#: on ``torch`` and fails on an unknown one with an ``AttributeError``.
DTYPE_KEY = re.compile(r"^(torch_)?dtype$")


def check_files(folder: Path) -> None:
    """Refuse a folder holding anything but regular files (links followed) and folders, or a
    folder named as a weights or JSON file. Nothing is opened, so a FIFO cannot make it wait.

    Raises:
        patchwork.errors.ModelError: naming the first such entry and what it is.
    """
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError as error:
        raise ModelError(f"cannot read the folder {folder} ({error.strerror or error})") from None
    for entry in entries:
        problem = files.not_regular(entry)
        if problem is not None and (
            not problem.startswith("is a directory") or entry.suffix in (".json", ".safetensors")
        ):
            raise ModelError(f"{entry} {problem}")


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """A checkpoint's JSON file (``config.json``, the shard index), at most ``limit`` bytes.

    Raises:
        patchwork.errors.ModelError: naming the file, when it is not a regular file, is over
            the limit, or is not JSON.
    """
    try:
        data = files.read_bounded(path, limit)
    except files.Unreadable as problem:
        raise ModelError(f"{path} {problem}; not a checkpoint's JSON file") from None
    try:
        return json.loads(data)
    except RecursionError:
        raise ModelError(f"{path} is nested too deeply for a checkpoint's JSON file") from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer of over 4,300 digits
        raise ModelError(f"{path} is not readable JSON ({str(error)[:200]})") from None


def check_values(config: object, path: Path, field: str = "", key: str = "") -> None:
    """Refuse a value of ``config`` (``config.json`` parsed; any depth, lists included) that no
    model means: a size or count outside the bounds above (:data:`SIZE_KEY`, :data:`BUILT_KEY`,
    :data:`WIDTH_KEY`, :data:`MODULES_KEY`), a NaN, an infinity (but in :data:`UNBOUNDED_KEY`),
    a dtype torch does not know (:data:`DTYPE_KEY`). A NaN ``rms_norm_eps`` would run and make
    every activation NaN.

    Raises:
        patchwork.errors.ModelError: naming the file and the field (``text_config.vocab_size``).
    """
    if isinstance(config, dict):
        for name, value in config.items():
            check_values(value, path, f"{field}.{name}" if field else str(name), str(name))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            check_values(value, path, f"{field}[{index}]", key)
    elif isinstance(config, float) and not math.isfinite(config):
        if math.isnan(config) or not UNBOUNDED_KEY.search(key):
            raise ModelError(f"{path}: {field}: expected a finite number; got {config}")
    elif DTYPE_KEY.search(key) and config is not None:
        import torch

        if not isinstance(config, str) or not isinstance(getattr(torch, config, None), torch.dtype):
            raise ModelError(
                f"{path}: {field}: expected the name of a torch dtype (float32, bfloat16 …); "
                f"got {reprlib.repr(config)}"
            )
    elif SIZE_KEY.search(key) and isinstance(config, int) and not isinstance(config, bool):
        low = 1 if WIDTH_KEY.search(key) else 0 if BUILT_KEY.search(key) else -1
        high = MAX_MODULES if MODULES_KEY.search(key) else MAX_SIZE
        if not low <= config <= high:
            shown = str(config) if abs(config) < 10**30 else f"{len(str(config)):,} digits"
            raise ModelError(f"{path}: {field}: expected a size in [{low}, {high:,}]; got {shown}")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers loads from ``folder``, as it chooses them:
    ``model.safetensors``, else the shards ``model.safetensors.index.json`` names (each once, in
    order); [] for a folder with neither and no other safetensors file (its weights are not there
    yet, or are pickled). Each is a regular file; none is opened.

    Raises:
        patchwork.errors.ModelError: naming the index when it is damaged or names a shard that is
            missing or not a regular file, or the folder when it holds safetensors files that
            transformers would not load.
    """
    folder = Path(folder)
    single, index = folder / SINGLE_FILE, folder / INDEX_FILE
    if single.exists() or single.is_symlink():
        chosen = [single]
    elif index.exists() or index.is_symlink():
        chosen = [folder / shard for shard in _shards(index)]
    else:
        others = sorted(path.name for path in folder.glob("*.safetensors"))
        if others:
            raise ModelError(
                f"{folder} holds {', '.join(others[:3])} but neither {SINGLE_FILE} nor "
                f"{INDEX_FILE}; transformers loads only those"
            )
        return []
    for path in chosen:
        problem = files.not_regular(path)
        if problem is not None and path != single:
            problem = "is missing" if problem == "not found" else problem
            raise ModelError(f"{index} names the shard {path.name}, which {problem}")
        if problem is not None:
            raise ModelError(f"{path} {problem}")
    return chosen


def _shards(index: Path) -> list[str]:
    """The shard file names a ``model.safetensors.index.json`` maps tensors to."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index}: expected an object with a non-empty 'weight_map' object")
    shards = []
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise ModelError(
                f"{index}: weight_map.{name}: expected a file name in this folder; got {shard!r}"
            )
        shards.append(shard)
    return list(dict.fromkeys(shards))


def read_tokenizer(path: Path) -> Any:
    """The ``tokenizers.Tokenizer`` of a ``tokenizer.json``, read at most
    :data:`MAX_TOKENIZER_BYTES` bytes.

    Raises:
        patchwork.errors.ModelError: naming the file, when it is not a regular file, is over
            the limit or is not a tokenizer the tokenizers library reads.
    """
    from tokenizers import Tokenizer

    try:
        text = files.read_bounded(path, MAX_TOKENIZER_BYTES).decode("utf-8")
    except files.Unreadable as problem:
        raise ModelError(f"{path} {problem}; not a tokenizer") from None
    except UnicodeDecodeError as error:
        raise ModelError(f"{path} is not UTF-8 text ({error}); not a tokenizer") from None
    try:
        return Tokenizer.from_str(text)
    except Exception as error:  # noqa: BLE001 - tokenizers raises plain Exception, nothing finer
        if type(error) is not Exception:
            raise  # a subclass is not the parser's report: keep its traceback
        raise ModelError(f"{path}: not a readable tokenizer ({str(error)[:200]})") from None
