"""How fast is an activation-patching sweep? One table from one run, every method on the same data.

Methods, each in a fresh process (so peak memory is its own):

- ``naive``: one full forward per condition with plain torch forward hooks (TransformerLens-style);
- ``exact``: patchwork's exact path (conditions batched as rows; each patched run starts at its
  patched layer and first patched position, reusing the target run's cached inputs, keys, values);
- ``attribution``: gradient × activation-difference estimates (one forward, two backward passes),
  once per set of corrections: the default (``readout``), none (plain AtP), AtP*'s QK fix and
  GradDrop (see :mod:`patchwork.patching.atp_star`).

Models: the shipped default model (``testbed``) and a larger random-init Qwen2.5-Omni thinker
(24 layers, hidden 512, > 512 tokens). Columns: wall time, ratio to naive, max |difference| of the
logit difference to naive, peak RSS, exact's ratio to the FLOP floor (the wall time naive would
need for the two unpatched runs plus, per condition, only the layers at or above its patch and the
positions at or after the first one its patch changes), and the
Spearman correlation of attribution's estimated logit differences with naive ones pooled over
every (sample, cell) — labelled pooled: samples' baselines differ, so a predictor blind to cells
already scores high there — and what an analyst uses, each sample's cells ranked alone: the
Spearman of the per-cell change (patched − conflict) per sample, as median and 10th percentile
over samples, and the mean top-5 / top-10 recall of each sample's truly largest |change| cells.
A ``cell-blind`` row (each sample's conflict baseline in every cell) gives the chance level. A
last line gives the share of a study's wall time spent writing the store.

Usage: ``python benchmarks/sweep.py [--quick] [--json PATH]``. JSON rows carry ``corrections``
(a list; null for naive and exact) beside the columns.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {
    "testbed": {"samples": 16, "layers": "all"},
    "large-random": {"samples": 1, "layers": "all"},
}
QUICK = {
    "testbed": {"samples": 2, "layers": "all"},
    "large-random": {"samples": 1, "layers": [0, 12, 23]},
}
GROUPS = ["audio", "video", "text", "answer"]
COMPONENTS = ["residual", "attention", "mlp"]
#: Rows after naive: method, corrections (None: the study's default) and verify_budget (None:
#: the default).
VARIANTS = [
    {"method": "exact"},
    {"method": "attribution"},
    {"method": "attribution", "verify_budget": 0.0},
    {"method": "attribution", "verify_budget": 0.2},
    {"method": "attribution", "verify_budget": 0.5},
    {"method": "attribution", "corrections": [], "verify_budget": 0.0},
    {"method": "attribution", "corrections": ["qk", "readout"], "verify_budget": 0.0},
    {"method": "attribution+verify"},
]


def study_text(
    model: str,
    layers: object,
    method: str,
    corrections: list | None = None,
    verify_budget: float | None = None,
) -> str:
    if model == "testbed":
        source = "checkpoint: testbed"
    else:
        source = "random_init: {layers: 24, hidden_size: 512, heads: 8, kv_heads: 4, seed: 0}"
    return f"""\
name: bench
model: {{{source}}}
dataset: {{generator: random, samples: 1}}
interventions:
  - kind: activation_patching
    layers: {json.dumps(layers)}
    position_groups: {json.dumps(GROUPS)}
    components: {json.dumps(COMPONENTS)}
    method: {"exact" if method == "naive" else method}
    noise_floor: none{"" if corrections is None else f"{chr(10)}    corrections: {corrections}"}\
{"" if verify_budget is None else f"{chr(10)}    verify_budget: {verify_budget}"}
execution: {{batch_size: 32, unit_size: 8}}
"""


def samples_for(model: str, count: int, study, loaded):
    from patchwork.loading.generators import random_sample

    if model == "testbed":
        from patchwork import testbed

        runs = {name: run.model_dump() for name, run in study.runs.items()}
        with tempfile.TemporaryDirectory() as media:
            return testbed.make_samples(
                testbed.checkpoint_path("testbed"), count, 0, runs, study.question, Path(media)
            )
    # > 512 tokens: 400 audio tokens (1600 mel frames) + 121 video tokens (88×88 frames) + text
    return [
        random_sample(i, 0, study.runs, study.question, loaded, mel_frames=1600, frame_size=88)
        for i in range(count)
    ]


def naive_effects(method, samples) -> np.ndarray:
    """Logit differences (samples, conditions) from one hooked full forward per condition."""
    import torch

    adapter, spec = method.loaded.adapter, method.spec
    model = adapter.root
    results = np.zeros((len(samples), len(method.conditions)))
    for row, sample in enumerate(samples):
        saved: dict = {}
        handles = []
        for layer, component in method.sites:

            def keep(module, args, output, key=(layer, component), saved=saved):
                saved[key] = adapter.output_tensor(key[1], output)[0].detach().clone()

            handles.append(adapter.component(model, layer, component).register_forward_hook(keep))
        with torch.no_grad():
            model(**sample.runs[spec.source])
        for handle in handles:
            handle.remove()
        target = sample.runs[spec.target]
        masks = adapter.position_groups(target["input_ids"])
        for column, condition in enumerate(method.conditions):
            handles = []
            for layer in condition.layers:
                site = (layer, condition.component)

                def patch(
                    module,
                    args,
                    output,
                    site=site,
                    mask=masks[condition.position_group],
                    source=saved[site],
                ):
                    value = adapter.output_tensor(site[1], output).clone()
                    value[0, mask] = source[mask]
                    return (value, *output[1:]) if isinstance(output, tuple) else value

                module = adapter.component(model, layer, condition.component)
                handles.append(module.register_forward_hook(patch))
            with torch.no_grad():
                logits = model(**target).logits[0, -1]
            for handle in handles:
                handle.remove()
            results[row, column] = float(
                logits[sample.audio_answer_id] - logits[sample.visual_answer_id]
            )
    return results


def child(model: str, method_name: str, variant: str, out: str, quick: bool) -> None:
    """Run one (model, method) and save its logit differences; print wall time and peak RSS."""
    import torch

    torch.set_num_threads(1)
    from patchwork.loading.model import load_model
    from patchwork.methods.activation_patching import ActivationPatchingMethod
    from patchwork.patching.patcher import Patcher
    from patchwork.study import parse_study

    config = (QUICK if quick else MODELS)[model]
    options = json.loads(variant)
    study = parse_study(
        study_text(
            model,
            config["layers"],
            method_name,
            options.get("corrections"),
            options.get("verify_budget"),
        )
    )
    loaded = load_model(study.model)
    method = ActivationPatchingMethod(study.patching, 0, study, loaded)
    samples = samples_for(model, config["samples"], study, loaded)
    started = time.perf_counter()
    if method_name == "naive":
        values = naive_effects(method, samples)
    else:
        arrays = method.compute(samples, Patcher(loaded.adapter))
        effect = arrays["effect"][..., 0]  # logit_diff
        values = np.stack(
            [
                [effect[(row, *method.cell[c])] for c in method.conditions]
                for row in range(len(samples))
            ]
        )
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    floor_fraction = (
        float(np.mean([floor_share(method, sample) for sample in samples]))
        if method_name == "exact"
        else None
    )
    np.save(out, values)
    if method_name == "exact":  # each sample's conflict logit difference: the cells' zero
        np.save(out.replace(".npy", "-conflict.npy"), arrays["baseline"][:, 1, 0])
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_mem_mb": peak_mb,
                "floor_fraction": floor_fraction,
                "conditions": len(method.conditions),
                "samples": len(samples),
                "tokens": samples[0].runs["conflict"]["input_ids"].shape[1],
            }
        )
    )


def floor_share(method, sample) -> float:
    """The share of naive's layer × position work that the patches can change: two full runs,
    then per condition the layers from its first and the positions from the first its patch
    changes (a patch that changes nothing: none)."""
    from patchwork.methods.activation_patching import first_change
    from patchwork.patching.patcher import Patcher

    patcher = Patcher(method.loaded.adapter)
    runs = {run: patcher.record(sample.runs[run], method.sites)[1] for run in method.runs()}
    target = sample.runs[method.spec.target]
    masks = method.loaded.adapter.position_groups(target["input_ids"])
    layers, seq_len = method.loaded.adapter.num_layers, target["input_ids"].shape[1]
    changed = sum(
        (layers - min(c.layers))
        * (seq_len - first_change(c, runs[method.spec.source], runs[method.spec.target], masks))
        for c in method.conditions
    )
    return (2 * layers * seq_len + changed) / ((len(method.conditions) + 2) * layers * seq_len)


def store_share(quick: bool) -> dict[str, float]:
    """Share of a whole study run's wall time spent writing its store (testbed, exact)."""
    import torch

    torch.set_num_threads(1)
    from patchwork import parse_study, run_study

    text = study_text("testbed", "all", "exact").replace(
        "{generator: random, samples: 1}", f"{{generator: testbed, samples: {8 if quick else 32}}}"
    )
    with tempfile.TemporaryDirectory() as root:
        summary = run_study(parse_study(text), root)
    return {"store_s": summary.store_seconds, "wall_s": summary.seconds}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from patchwork.patching.attribution import spearman as rank_correlation

    return rank_correlation(a.ravel(), b.ravel())


def within_sample(values: np.ndarray, naive: np.ndarray, conflict: np.ndarray) -> dict:
    """How an estimate ranks the cells of each sample against naive patching: Spearman of the
    per-cell change (patched − conflict) per sample, its median and 10th percentile over
    samples, and the mean share of each sample's truly largest |change| cells (k = 5, 10) among
    the estimate's top k. A constant estimate (every cell alike) ranks nothing: its correlation
    is undefined and its recall is chance, k / cells."""
    change, truth = values - conflict[:, None], naive - conflict[:, None]
    constant = np.ptp(change, axis=1).max() == 0
    rhos = [np.nan if constant else spearman(a, b) for a, b in zip(change, truth, strict=True)]
    row = {
        "spearman_sample_median": None if constant else round(float(np.median(rhos)), 4),
        "spearman_sample_p10": None if constant else round(float(np.percentile(rhos, 10)), 4),
    }
    for k in (5, 10):
        if constant:
            recall = k / change.shape[1]
        else:
            recall = np.mean(
                [
                    len(set(np.argsort(-np.abs(a))[:k]) & set(np.argsort(-np.abs(b))[:k])) / k
                    for a, b in zip(change, truth, strict=True)
                ]
            )
        row[f"recall_top{k}"] = round(float(recall), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and layers")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--child",
        nargs=4,
        metavar=("MODEL", "METHOD", "VARIANT", "OUT"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, quick=args.quick)
        return
    from patchwork.study.entries import ActivationPatching

    default_budget = ActivationPatching.model_fields["verify_budget"].default
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in MODELS:
            measured = []
            for variant in [{"method": "naive"}, *VARIANTS]:
                method = variant["method"]
                out = f"{scratch}/{model}-{len(measured)}.npy"
                command = [sys.executable, __file__, "--child", model, method, json.dumps(variant)]
                command.append(out)
                result = subprocess.run(
                    command + (["--quick"] if args.quick else []),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                info = json.loads(result.stdout.strip().splitlines()[-1])
                measured.append((variant, info, np.load(out)))
            _, naive_info, naive_values = measured[0]
            conflict = np.load(f"{scratch}/{model}-1-conflict.npy")  # from the exact child
            # the cell-blind predictor: each sample's conflict baseline in every cell
            blind = np.repeat(conflict[:, None], naive_values.shape[1], axis=1)
            measured.append(({"method": "cell-blind"}, {**naive_info, "wall_s": 0.0}, blind))
            for variant, info, values in measured:
                method = variant["method"]
                attribution = method.startswith("attribution")
                row = {
                    "model": model,
                    "method": method,
                    "corrections": variant.get("corrections", ["readout"]) if attribution else None,
                    "verify_budget": variant.get("verify_budget", default_budget)
                    if attribution
                    else None,
                    "wall_s": round(info["wall_s"], 3),
                    "ratio_to_naive": round(info["wall_s"] / naive_info["wall_s"], 4),
                    "max_abs_diff": float(np.abs(values - naive_values).max()),
                    "peak_mem_mb": round(info["peak_mem_mb"], 1),
                    "floor_ratio": None,
                    "spearman": None,
                    "spearman_sample_median": None,
                    "spearman_sample_p10": None,
                    "recall_top5": None,
                    "recall_top10": None,
                    "detail": f"{info['samples']} samples x {info['conditions']} conditions, "
                    f"{info['tokens']} tokens",
                }
                if method == "exact":
                    floor_s = naive_info["wall_s"] * info["floor_fraction"]
                    row["floor_ratio"] = round(info["wall_s"] / floor_s, 3)
                if attribution or method == "cell-blind":
                    row["spearman"] = round(spearman(values, naive_values), 4)  # pooled
                    row.update(within_sample(values, naive_values, conflict))
                rows.append(row)
    share = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; sys.path.insert(0, 'benchmarks'); import sweep;"
            f"print(json.dumps(sweep.store_share({args.quick})))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    store = json.loads(share.stdout.strip().splitlines()[-1])
    header = [
        "model",
        "method",
        "corrections",
        "verify_budget",
        "wall_s",
        "ratio_to_naive",
        "max_abs_diff",
        "peak_mem_mb",
        "floor_ratio",
        "spearman",
        "spearman_sample_median",
        "spearman_sample_p10",
        "recall_top5",
        "recall_top10",
        "detail",
    ]
    widths = [14, 19, 19, 14, 9, 15, 13, 12, 12, 9, 23, 20, 12, 13, 40]
    print("  ".join(name.ljust(width) for name, width in zip(header, widths, strict=True)))
    for row in rows:
        cells = [
            ""
            if row[key] is None
            else f"{row[key]:.3g}"
            if isinstance(row[key], float)
            else "[" + ", ".join(row[key]) + "]"
            if isinstance(row[key], list)
            else str(row[key])
            for key in header
        ]
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)))
    print(
        f"store writes: {store['store_s']:.2f} s of a {store['wall_s']:.1f} s testbed study "
        f"({100 * store['store_s'] / store['wall_s']:.1f}% of wall time)"
    )
    if args.json:
        args.json.write_text(
            json.dumps([{k: v for k, v in row.items() if k != "detail"} for row in rows], indent=2)
        )


if __name__ == "__main__":
    main()
