"""From measurements to conclusions: ratios, MFU, the targets they are held to, and the table.

The targets and their reasons are in BENCHMARKS.md; the JSON keys written here
(ratios, targets, mfu, compile_speedup) are read by people and by the planner's users.
"""

from __future__ import annotations

import torch

from sslseg.bench.tasks import TASKS

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment; the first match wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12),
             ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
             ("RTX 4090", 165e12), ("RTX 3090", 71e12)]
TARGETS = {"cpu": {"a/c": 0.95, "a/b": 1.15, "d/a": 10.0},
           "cuda": {"a": 20_000, "d": 200_000, "a/b": 5.0}}
NAMES = {"a": "sslseg step, data path included", "b": "user loop: PIL + torchvision, eager fp32",
         "c": "sslseg model step alone (ceiling)", "d": "sslseg data path alone (no model)",
         "s": "data path alone, streamed from HDF5", "e": "model step alone, not compiled"}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """The device's dense bf16 peak in FLOP/s: `override` (TFLOP/s), the table's, or None."""
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None  # no meaningful bf16 peak for a CPU
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16 if k in name), None)


def summarize(result: dict, device: torch.device, peak: float | None) -> None:
    """Ratios, MFU, compile speed-up and the target checks, added to `result` in place."""
    m = result["measurements"]
    for key in ("ratios", "targets", "mfu", "compile_speedup"):
        result[key] = {}
    for task in TASKS:
        ips = {k: m[f"{k}_{task}"]["images_per_s"] for k in "abcde" if f"{k}_{task}" in m}
        result["ratios"][task] = {"a/b": ips["a"] / ips["b"], "a/c": ips["a"] / ips["c"], "d/a": ips["d"] / ips["a"]}
        result["compile_speedup"][task] = ips["c"] / ips["e"] if "e" in ips else None
        result["mfu"][task] = ips["a"] * result["flops_per_image"][task] / peak if peak else None
        for key, target in TARGETS.get(device.type, {}).items():
            value = result["ratios"][task].get(key, ips.get(key))
            result["targets"][f"{key} {task}"] = {"value": value, "target": target, "met": value >= target}


def baseline_name(how: dict | None) -> str:
    """b's row label: what its loop ran with (sslseg.bench.data.baseline_settings)."""
    if not how or (how["amp"] == "none" and not how["compile"] and not how["pre_resize"]):
        return NAMES["b"]  # the CPU loop, named as BENCHMARKS.md has always named it
    parts = [how["amp"], "fused" if how["fused"] else "", "compiled" if how["compile"] else "eager",
             f"{how['workers']} wkrs", "resized" if how["pre_resize"] else ""]  # fits the 46-character column
    return "user loop: " + " ".join(p for p in parts if p)


def render(result: dict) -> str:
    """The table BENCHMARKS.md quotes: one line per measurement, then ratios and targets."""
    m = result["measurements"]
    lines = [f"sslseg.bench on {result['device_name']} ({result['device']}), torch {result['torch']}, "
             f"{result['cpus']} CPUs,"
             f" load average {result['load_average'][0]:.2f} at start; images/s: median of interleaved rounds",
             f"peak memory: {result['memory_kind']}",
             f"{'measurement':<50}{'img/s':>9}{'peak MB':>9}{'GFLOP/s':>9}"]
    for task in TASKS:
        st = result["settings"][task]
        lines.append(f"-- {task}: {st['backbone']} {st['image_size']} px from {st['pack_size']} px packs, "
                     f"batch {st['batch_size']},"
                     f" compile={st['compile']}, amp={st['amp']}, threads={st['threads']},"
                     f" {result['flops_per_image'][task] / 1e9:.2f} GFLOP/image (fwd+bwd)")
        for k in "abcdse":
            if f"{k}_{task}" in m:
                r = m[f"{k}_{task}"]
                gflops = "" if k in "ds" else f"{r['images_per_s'] * result['flops_per_image'][task] / 1e9:.1f}"
                name = baseline_name(result.get("baseline", {}).get(task)) if k == "b" else NAMES[k]
                lines.append(f"({k}) {name:<46}{r['images_per_s']:>9.1f}{r['peak_mb']:>9.0f}{gflops:>9}")
    j = result["jpeg"]
    for key, label in (("evaluate", "evaluate (predict_classes, finetune model)"),
                       ("pack", "pack (JPEG decode + resize + HDF5 write)")):
        lines.append(f"{label:<50}{m[key]['images_per_s']:>9.1f}{m[key]['peak_mb']:>9.0f}")
    lines[-1] += f"   {j['count']} JPEGs {j['size']}, {j['mean_kb']:.0f} KB mean, {m['pack']['threads']} threads"
    for task in TASKS:
        r, mfu, sp = result["ratios"][task], result["mfu"][task], result["compile_speedup"][task]
        lines.append(f"{task}: a/b {r['a/b']:.2f}  a/c {r['a/c']:.3f}  d/a {r['d/a']:.1f}"
                     + ("" if sp is None else f"  compiled/eager step {sp:.2f}")
                     + (f"  MFU {100 * mfu:.1f}% of bf16 peak" if mfu is not None else "  MFU n/a (no bf16 peak known)"))
    lines += [f"target {k} >= {t['target']:g}: {t['value']:.3g} {'met' if t['met'] else 'MISSED'}"
              for k, t in result["targets"].items()]
    return "\n".join(lines)
