"""What a study will cost before it runs: ``patchwork plan``.

The model is built from its config on the meta device (no weights, no memory) and the samples are
read as ``run`` reads them. Estimates, each stated with its rule:

- **weights**: every parameter in the study's dtype and every buffer in its own dtype (the rotary
  frequencies transformers keeps in float32); ``run`` refuses a model whose weights alone exceed
  the device's memory with this same estimate, before building it
  (:func:`~patchwork.models.memory.refuse_beyond_device`);
- **decoder FLOPs of one forward** of S tokens: 2·S·(active decoder parameters) for the matrix
  products (a mixture-of-experts layer counts its routed share of experts) plus 2·L·S²·d for the
  causal attention scores and mixing (d = heads × head dim); encoders and the unembedding are left
  out (they run once per baseline);
- **exact vs naive**: each method declares its work on a sample
  (:meth:`~patchwork.methods.method.Method.cost`): full forwards that change nothing (the
  unpatched runs) and its cells. Naive runs every cell as a full forward; the exact path runs each
  cell only from the first layer and position it changes, so a cell costs the share
  (L − l)/L · (S − p)/S of a forward (an upper bound on what it skips; patches that change
  nothing run not at all). Methods without cells (lens, attention share, probes, …) cost one
  forward per run they read;
- **peak accelerator memory**: weights + one sample's recorded activations (the source run's
  activations at every patched site, and the target run's layer inputs, keys and values that
  patched runs reuse) + the working set of one batch of patched rows (each row's hidden states,
  the widest MLP activation and its keys and values, for one layer at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from patchwork.engine.runner import Prepared, check_study
from patchwork.errors import ModelError
from patchwork.models.memory import device_memory, size_text, weight_bytes
from patchwork.study.schema import Study


@dataclass(frozen=True)
class Plan:
    """A study's size and estimated cost (see the module's rules)."""

    study: str
    model: str
    layers: int
    parameters: int
    weight_bytes: int
    samples: int
    tokens: dict[str, tuple[int, int]]
    """Positions per sample by group: (min, max) over samples and runs."""
    cells: int
    forwards_naive: float
    forwards_exact: float
    flops_naive: float
    flops_exact: float
    peak_bytes: int
    device: str
    device_bytes: int | None
    """Memory of the chosen device; None where it cannot be read here."""
    methods: dict[str, int] = field(default_factory=dict)
    """Cells per intervention kind."""

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.peak_bytes <= self.device_bytes

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) lines of the table ``patchwork plan`` prints."""
        fits = {True: "yes", False: "NO", None: "cannot tell here"}[self.fits]
        device = (
            f"{self.device} ({size_text(self.device_bytes)})" if self.device_bytes else self.device
        )
        groups = ", ".join(
            f"{name} {low}" if low == high else f"{name} {low}-{high}"
            for name, (low, high) in self.tokens.items()
        )
        methods = ", ".join(f"{kind} {count}" for kind, count in self.methods.items())
        return [
            ("model", f"{self.model}: {self.layers} decoder layers"),
            (
                "parameters",
                f"{self.parameters / 1e9:.2f} B"
                if self.parameters >= 1e9
                else f"{self.parameters / 1e6:.2f} M",
            ),
            ("samples", str(self.samples)),
            ("positions per sample", groups),
            ("cells per sample", f"{self.cells} ({methods})" if methods else str(self.cells)),
            (
                "forwards (full-forward equivalents)",
                f"exact {self.forwards_exact:,.0f} vs naive {self.forwards_naive:,.0f} "
                f"({_ratio(self.forwards_exact, self.forwards_naive)})",
            ),
            (
                "decoder FLOPs",
                f"exact {self.flops_exact:.3g} vs naive {self.flops_naive:.3g}",
            ),
            ("weights", size_text(self.weight_bytes)),
            ("peak accelerator memory", f"{size_text(self.peak_bytes)} (estimated)"),
            ("device", device),
            ("fits", fits),
        ]


def _ratio(part: float, whole: float) -> str:
    return f"{part / whole:.3f}x" if whole else "-"


def plan_study(study: Study) -> Plan:
    """Check ``study`` as ``validate`` does, from the checkpoint's config alone (its weight files
    need not be there yet), and estimate its cost; nothing is run or written."""
    prepared = check_study(study, config_only=True)
    loaded = prepared.loaded
    adapter = loaded.adapter
    dtype = getattr(torch, study.model.dtype)
    weights = weight_bytes(loaded.model, dtype)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    shape = _decoder_shape(prepared)
    samples = prepared.samples.load(0, len(prepared.samples))
    tokens: dict[str, tuple[int, int]] = {}
    flops_naive = flops_exact = forwards_naive = forwards_exact = 0.0
    peak_activations = 0
    cells = 0
    methods: dict[str, int] = {}
    for sample in samples:
        sample_cells = 0
        for inputs in sample.runs.values():
            for name, mask in adapter.position_groups(inputs["input_ids"]).items():
                count = int(mask.sum())
                low, high = tokens.get(name, (count, count))
                tokens[name] = (min(low, count), max(high, count))
        for method in prepared.methods:
            cost = method.cost(sample)
            length = int(sample.runs[cost.run]["input_ids"].shape[-1])
            full = _forward_flops(shape, length)
            layers = shape["layers"]
            shares = [
                (layers - layer) / layers * (length - position) / length
                for layer, position in cost.cells
            ]
            forwards_naive += cost.baselines + len(shares)
            forwards_exact += cost.baselines + sum(shares)
            flops_naive += (cost.baselines + len(shares)) * full
            flops_exact += (cost.baselines + sum(shares)) * full
            peak_activations = max(
                peak_activations,
                _activation_bytes(shape, length, cost.sites, study.execution.batch_size, dtype),
            )
            sample_cells += len(shares)
            methods[method.kind] = len(shares)
        cells = max(cells, sample_cells)
    device, device_bytes = device_memory(study.model.device)
    return Plan(
        study=study.name,
        model=loaded.name,
        layers=adapter.num_layers,
        parameters=parameters,
        weight_bytes=weights,
        samples=len(samples),
        tokens=tokens,
        cells=cells,
        forwards_naive=forwards_naive,
        forwards_exact=forwards_exact,
        flops_naive=flops_naive,
        flops_exact=flops_exact,
        peak_bytes=weights + peak_activations,
        device=device,
        device_bytes=device_bytes,
        methods=methods,
    )


def _decoder_shape(prepared: Prepared) -> dict[str, Any]:
    """Decoder layers, widths and active parameters per layer, read from the built model (every
    module path of every patched layer and component is resolved on the way)."""
    loaded, adapter = prepared.loaded, prepared.loaded.adapter
    root = adapter.root
    for method in prepared.methods:
        for layer, component in sorted(method.sites):
            try:
                adapter.component(root, layer, component)
            except (AttributeError, IndexError) as error:
                raise ModelError(
                    f"layer {layer} {component}: the module path does not resolve "
                    f"on {loaded.name} ({error})"
                ) from None
    config = getattr(adapter.config, "text_config", adapter.config)
    first = adapter.layer(root, 0)
    named = dict(first.named_parameters())
    total = sum(p.numel() for p in named.values())
    experts = sum(p.numel() for name, p in named.items() if ".experts." in f".{name}")
    routed = getattr(config, "num_experts_per_tok", None)
    count = getattr(config, "num_experts", None) or getattr(config, "n_routed_experts", None)
    active = total - experts + (experts * routed / count if experts and routed and count else 0)
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    widths = getattr(config, "intermediate_size", hidden * 4)
    widest = max(widths) if isinstance(widths, list | tuple) else int(widths)
    return {
        "layers": adapter.num_layers,
        "active": active,
        "hidden": hidden,
        "attention": heads * head_dim,
        "kv": kv_heads * head_dim,
        "intermediate": widest,
    }


def _forward_flops(shape: dict[str, Any], length: int) -> float:
    matmuls = 2.0 * length * shape["layers"] * shape["active"]
    attention = 2.0 * shape["layers"] * length * length * shape["attention"]
    return matmuls + attention


def _activation_bytes(
    shape: dict[str, Any], length: int, sites: int, batch: int, dtype: torch.dtype
) -> int:
    recorded = sites * length * shape["hidden"]
    reused = shape["layers"] * length * (shape["hidden"] + 2 * shape["kv"])
    working = batch * length * (2 * shape["hidden"] + shape["intermediate"] + 2 * shape["kv"])
    return int((recorded + reused + working) * dtype.itemsize)
