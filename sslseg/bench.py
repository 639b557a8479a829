"""`python -m sslseg.bench`: what sslseg's data path and training step buy, measured on this device.

Per task (SimMIM pretraining, segmentation fine-tune), images/s and peak memory of
  a  sslseg's real step: HDF5 pack → Batches → on-device augment → objective → AdamW,
     with the batch size, autocast and compile choice the workflow would use here;
  b  the loop a user would otherwise write: the same model, eager fp32, fed by PIL
     decode + per-image torchvision transforms from JPEGs in 2 DataLoader workers;
  c  the model step alone on a batch already on the device (the ceiling for a);
  d  the data path alone (read + transfer + augment, no model);
plus evaluation and pack (decode + resize) images/s. a, b, c, d run in interleaved
rounds so that load from other processes shifts them alike and the ratios stay honest.
Figures and targets: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from sslseg import stages
from sslseg.config import load_config, rule_resources, stage_settings
from sslseg.data.loader import Batches
from sslseg.data.pack import pack, read_pack
from sslseg.data.sources import Record
from sslseg.objectives import Segment, SimMIM
from sslseg.train import make_optimizer, pick_device, train_step, use_compile

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"simmim": "pretrain", "finetune": "finetune"}
# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment; the first match wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12),
             ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
             ("RTX 4090", 165e12), ("RTX 3090", 71e12)]
TARGETS = {"cpu": {"a/c": 0.95, "a/b": 1.15, "d/a": 10.0},
           "cuda": {"a": 20_000, "d": 200_000, "a/b": 5.0}}


# --- memory -----------------------------------------------------------------------------------

def _status_kb(field: str, pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak(device: torch.device) -> bool:
    """Start a new peak: CUDA's allocator counter, or Linux's VmHWM (writing 5 to clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:  # not Linux, or not allowed: fall back to the lifetime peak
        return False


def _peak_mb(device: torch.device, base_kb: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, hwm - base_kb) / 1024


def _children_hwm_mb() -> float:
    """Peak RSS of this process's children (DataLoader workers); counts pages shared with us."""
    try:
        pids = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    except OSError:
        return 0.0
    return sum(_status_kb("VmHWM", p) for p in pids) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- timing -----------------------------------------------------------------------------------

def interleaved(steps: dict[str, Callable[[], int]], seconds: float, rounds: int, device: torch.device,
                base_kb: int) -> dict[str, dict]:
    """Run each step (returns images done) for seconds/rounds per round, in turn, `rounds` times.

    images_per_s is the median over rounds: on a shared machine a burst of someone else's work
    stalls a multi-threaded step for seconds, and the median keeps one such round from deciding
    a ratio; mean_images_per_s and the per-round figures are kept beside it."""
    acc = {k: {"images": [], "seconds": [], "peak_mb": 0.0} for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            _reset_peak(device)
            images, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds:
                images += step()
            _sync(device)  # GPU work queued in the round belongs to it
            acc[name]["images"].append(images)
            acc[name]["seconds"].append(time.perf_counter() - t0)
            acc[name]["peak_mb"] = max(acc[name]["peak_mb"], _peak_mb(device, base_kb))
    out = {}
    for k, v in acc.items():
        rates = [i / t for i, t in zip(v["images"], v["seconds"])]
        out[k] = {"images_per_s": float(np.median(rates)), "mean_images_per_s": sum(v["images"]) / sum(v["seconds"]),
                  "round_images_per_s": [round(r, 2) for r in rates], "images": sum(v["images"]),
                  "seconds": round(sum(v["seconds"]), 2), "peak_mb": round(v["peak_mb"], 1)}
    return out


def count_flops(objective: torch.nn.Module, batch: dict, gen: torch.Generator) -> float:
    """Model FLOPs (forward + backward) per image, counted by FlopCounterMode on the eager module."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss, _ = objective(batch, gen)
        loss.backward()
    objective.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch["images"].shape[0]


def step_rate(objective: torch.nn.Module, batch: dict, settings: dict, device: torch.device, seconds: float,
              warmup: int = 2) -> float:
    """Images/s of the model step alone (eager) on `batch` already on `device`; used by the planner."""
    objective.to(device).train()
    opt, gen = make_optimizer(objective, settings, device), torch.Generator().manual_seed(0)
    for _ in range(warmup):
        train_step(objective, opt, batch, gen, settings.get("amp", "auto"), device)
    def step() -> int:
        train_step(objective, opt, batch, gen, settings.get("amp", "auto"), device)
        return len(batch["images"])

    return interleaved({"c": step}, seconds, 1, device, 0)["c"]["images_per_s"]


# --- synthetic data ---------------------------------------------------------------------------

def _natural(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like image (octaves of smooth noise, spectrum falling with frequency, so JPEG
    sizes and decode cost resemble real photos) with an elliptic 'pet' and its Oxford trimap."""
    img = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((4, 0.4), (30, 0.25), (120, 0.2), (500, 0.15)):
        small = rng.integers(0, 256, (max(2, cells * h // w), cells, 3), dtype=np.uint8)
        img += weight * np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.4) * h, rng.uniform(0.15, 0.4) * w
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    inside = r <= 1
    img[inside] = 0.6 * img[inside] + 0.4 * rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)  # with the finest octave: ~95 KB per 500x375 JPEG, as ImageNet's ~110 KB
    trimap = np.where(inside, 1, 2).astype(np.uint8)
    trimap[np.abs(r - 1) * min(rx, ry) < 2] = 3  # a 4-px border band, as in the real trimaps
    return np.clip(img, 0, 255).astype(np.uint8), trimap


def write_images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Record]:
    """n JPEGs in an ImageFolder layout (2 classes), a quarter portrait, with PNG trimaps (values 1-3)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        w, h = size if i % 4 else size[::-1]
        image, trimap = _natural(rng, w, h)
        path = root / "jpeg" / f"c{i % 2}" / f"{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
        tri = root / "trimaps" / f"{i:05d}.png"
        tri.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(trimap).save(tri)
        records.append(Record(f"{i:05d}", path, tri, i % 2))
    return records


# --- the user's loop (b) ----------------------------------------------------------------------

class _Pairs(torch.utils.data.Dataset):
    """JPEG + trimap PNG pairs through torchvision v2 transforms, which move the mask with the image."""

    def __init__(self, records: list[Record], transform: Callable):
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        r = self.records[i]
        image = Image.open(r.image).convert("RGB")
        mask = tv_tensors.Mask(torch.from_numpy(np.asarray(Image.open(r.trimap), np.int64) - 1))
        return self.transform(image, mask)


def user_loader(task: str, records: list[Record], root: Path, s: dict, device: torch.device) -> Iterator:
    """An endless DataLoader (sampling with replacement, so no epoch-boundary stalls count against it)."""
    from torchvision import datasets
    from torchvision.transforms import v2

    aug, size = s["augment"], s["model"]["image_size"]
    crop = (v2.Resize((size, size)) if tuple(aug["scale"]) == (1.0, 1.0) else
            v2.RandomResizedCrop(size, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"])))
    j = aug["jitter"]
    t = v2.Compose([crop, v2.RandomHorizontalFlip(aug["flip"]), v2.ColorJitter(j, j, j),
                    v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(str(root / "jpeg"), transform=t) if task == "simmim" else _Pairs(records, t)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**9)
    loader = torch.utils.data.DataLoader(ds, s["batch_size"], sampler=sampler, num_workers=2, drop_last=True,
                                         pin_memory=device.type == "cuda")
    for x, y in loader:
        batch = {"images": x.to(device, non_blocking=True)}
        if task == "finetune":
            batch["masks"] = y.to(device, non_blocking=True).long()
        yield batch


# --- one task ---------------------------------------------------------------------------------

def _forever(batches: Batches) -> Iterator[dict]:
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _threads(cfg: dict, rule: str, args: argparse.Namespace) -> int:
    """The rule's `threads` (what --threads gives its job), capped at this machine's cores. --quick
    uses 1: a 2-thread step on cores that others keep busy stalls at every OpenMP barrier."""
    n = 1 if args.quick else min(rule_resources(cfg, rule)["threads"], os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _settings(cfg: dict, task: str, device: torch.device, quick: bool) -> dict:
    s = stages.scale_for_device(stage_settings(cfg, TASKS[task]), device)
    if quick:
        s.update(model={**s["model"], "image_size": 32}, batch_size=8)
    return s


def bench_task(task: str, cfg: dict, device: torch.device, data: dict, args: argparse.Namespace) -> dict:
    s = _settings(cfg, task, device, args.quick)
    _threads(cfg, TASKS[task], args)
    gc.collect()
    base_kb = _status_kb("VmRSS")
    torch.manual_seed(0)
    def make() -> torch.nn.Module:
        return SimMIM(s["model"], s["mask_ratio"]) if task == "simmim" else Segment(s["model"], 3, s["dropout"])

    objective = make().to(device).train()
    opt = make_optimizer(objective, s, device)
    longest = s["epochs"] * (max(cfg["grid"]["pretrain_sizes"]) if task == "simmim" else max(cfg["grid"]["finetune_sizes"]))
    compiled = not args.quick and use_compile(s["compile"], device, longest)
    step_fn = torch.compile(objective) if compiled else objective
    label = None if task == "simmim" else "masks"
    batches = Batches(data[task], None, s["batch_size"], device, ("images",) + ((label,) if label else ()), s["memory_gb"])
    transform, gen = stages._transform(s["augment"], s["model"]["image_size"], label), torch.Generator().manual_seed(0)
    raws = _forever(batches)
    fixed = transform(next(raws), gen)
    flops = count_flops(objective, fixed, gen)
    amp, bs, log_every = s["amp"], s["batch_size"], s["log_every"]
    loss_sum, n = [torch.zeros((), device=device)], [0]

    def a() -> int:
        loss_sum[0] += train_step(step_fn, opt, transform(next(raws), gen), gen, amp, device)
        n[0] += 1
        if n[0] % log_every == 0:  # fit's one host sync
            loss_sum[0].item()
        return bs

    def c() -> int:
        train_step(step_fn, opt, fixed, gen, amp, device)
        return bs

    def d() -> int:
        transform(next(raws), gen)
        return bs

    base = make().to(device).train()  # the user's model: same architecture, eager, fp32, plain AdamW
    base_opt = torch.optim.AdamW(base.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    user = user_loader(task, data["records"], data["root"], s, device)

    def b() -> int:
        train_step(base, base_opt, next(user), None, "none", device)
        return bs

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # the first compiled call compiles; none of this is timed
        c()
    compile_s = time.perf_counter() - t0
    for step in (a, b, d):
        for _ in range(args.warmup):
            step()
    steps = {"a": a, "b": b, "c": c, "d": d}
    if task == "simmim":  # large pretraining packs (> train.memory_gb) are streamed from HDF5 instead
        streamed = _forever(Batches(data[task], None, bs, device, ("images",), memory_gb=0))
        steps["s"] = lambda: (transform(next(streamed), gen), bs)[1]
        steps["s"]()
    if compiled:  # the same step uncompiled: whether compiling pays on this device (train.use_compile)
        steps["e"] = lambda: (train_step(objective, opt, fixed, gen, amp, device), bs)[1]
        steps["e"]()
    out = interleaved(steps, args.seconds, args.rounds, device, base_kb)
    out["b"]["worker_rss_mb"] = round(_children_hwm_mb(), 1)
    user.close()
    del step_fn
    torch._dynamo.reset()
    return {"measurements": out, "flops_per_image": flops, "compile_s": round(compile_s, 1),
            "settings": {"batch_size": bs, "image_size": s["model"]["image_size"], "patch_size": s["model"]["patch_size"],
                         "preset": s["model"]["preset"], "pack_size": data["sizes"][task], "compile": compiled,
                         "amp": amp, "threads": torch.get_num_threads()}}


def bench_eval(cfg: dict, device: torch.device, data: dict, args: argparse.Namespace) -> dict:
    """stages.predict_classes over the packed pets (host uint8 → device → augment → forward), as evaluate runs."""
    s = {**cfg["evaluate"], "model": _settings(cfg, "finetune", device, args.quick)["model"], "amp": cfg["train"]["amp"]}
    threads = _threads(cfg, "evaluate", args)
    base_kb = _status_kb("VmRSS")
    model = Segment(s["model"], 3)
    images = read_pack(data["finetune"], None, ("images",))["images"]
    def run() -> int:
        return len(stages.predict_classes(model, images, s["model"]["image_size"], device, s["batch_size"], s["amp"]))

    run()
    return {**interleaved({"evaluate": run}, args.seconds, 1, device, base_kb)["evaluate"], "threads": threads}


def bench_pack(cfg: dict, records: list[Record], out: Path, size: int, args: argparse.Namespace) -> dict:
    """sslseg's pack of full-size JPEGs (decode + resize + HDF5 write) with the pack rule's threads."""
    threads = _threads(cfg, "pack", args)
    plain = [Record(r.name, r.image, None, r.label) for r in records]
    def run() -> int:
        pack(plain, out, size, "crop", threads)
        return len(plain)

    r = interleaved({"pack": run}, args.seconds, 1, torch.device("cpu"), _status_kb("VmRSS"))["pack"]
    return {**r, "threads": threads}


# --- report -----------------------------------------------------------------------------------

def peak_flops(device: torch.device, override: float | None) -> float | None:
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


NAMES = {"a": "sslseg step, data path included", "b": "user loop: PIL + torchvision, eager fp32",
         "c": "sslseg model step alone (ceiling)", "d": "sslseg data path alone (no model)",
         "s": "data path alone, streamed from HDF5", "e": "model step alone, not compiled"}


def render(result: dict) -> str:
    m = result["measurements"]
    lines = [f"sslseg.bench on {result['device_name']} ({result['device']}), torch {result['torch']}, "
             f"{result['cpus']} CPUs,"
             f" load average {result['load_average'][0]:.2f} at start; images/s: median of interleaved rounds",
             f"peak memory: {result['memory_kind']}",
             f"{'measurement':<50}{'img/s':>9}{'peak MB':>9}{'GFLOP/s':>9}"]
    for task in TASKS:
        st = result["settings"][task]
        lines.append(f"-- {task}: {st['preset']} {st['image_size']} px from {st['pack_size']} px packs, "
                     f"batch {st['batch_size']},"
                     f" compile={st['compile']}, amp={st['amp']}, threads={st['threads']},"
                     f" {result['flops_per_image'][task] / 1e9:.2f} GFLOP/image (fwd+bwd)")
        for k in "abcdse":
            if f"{k}_{task}" in m:
                r = m[f"{k}_{task}"]
                gflops = "" if k in "ds" else f"{r['images_per_s'] * result['flops_per_image'][task] / 1e9:.1f}"
                lines.append(f"({k}) {NAMES[k]:<46}{r['images_per_s']:>9.1f}{r['peak_mb']:>9.0f}{gflops:>9}")
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m sslseg.bench", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="the workflow config whose settings to use")
    p.add_argument("--configfile", default=None, help="extra config merged on top")
    p.add_argument("--device", default=None, help="override the config's device")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 20, quick 0.5)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of a, b, c, d")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, quick 1)")
    p.add_argument("--images", type=int, default=None, help="JPEGs written (default 512, quick 24)")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU, if the device is not known")
    p.add_argument("--quick", action="store_true", help="seconds-scale smoke run: tiny sizes, no compile")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (0.5 if args.quick else 20.0)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.rounds = 1 if args.quick else args.rounds
    cfg = load_config(args.config, args.configfile)
    device = pick_device(args.device or cfg["device"])
    jpeg_size = (160, 120) if args.quick else (500, 375)
    n = args.images or (24 if args.quick else 512)
    result = {"command": " ".join(["python -m sslseg.bench", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device.type,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "cpus": os.cpu_count(), "torch": torch.__version__, "load_average": list(os.getloadavg()),
              "memory_kind": ("torch.cuda.max_memory_allocated, reset per round" if device.type == "cuda" else
                              "peak RSS of this process (VmHWM, reset per round) above its RSS before the task's setup"
                              if _reset_peak(device) else "ru_maxrss (lifetime peak: cannot be reset here) above the "
                              "RSS before the task's setup"),
              "measurements": {}, "settings": {}, "flops_per_image": {}, "compile_s": {}}
    with tempfile.TemporaryDirectory(prefix="sslseg-bench-") as tmp:
        root = Path(tmp)
        records = write_images(root, n, jpeg_size)
        result["jpeg"] = {"count": n, "size": f"{jpeg_size[0]}x{jpeg_size[1]}",
                          "mean_kb": float(np.mean([r.image.stat().st_size for r in records])) / 1024}
        pack_size = 36 if args.quick else cfg["data"]["pretrain"]["pack_size"]
        result["measurements"]["pack"] = bench_pack(cfg, records, root / "pretrain.h5", pack_size, args)
        pets_size = _settings(cfg, "finetune", device, args.quick)["model"]["image_size"]
        pack(records, root / "pets.h5", pets_size, "squash", 1)  # as pack_pets: squashed to the model size
        data = {"simmim": root / "pretrain.h5", "finetune": root / "pets.h5", "records": records, "root": root,
                "sizes": {"simmim": pack_size, "finetune": pets_size}}
        for task in TASKS:
            r = bench_task(task, cfg, device, data, args)
            for k, v in r.pop("measurements").items():
                result["measurements"][f"{k}_{task}"] = v
            for k, v in r.items():
                result[k][task] = v
        result["measurements"]["evaluate"] = bench_eval(cfg, device, data, args)
    summarize(result, device, peak_flops(device, args.peak_tflops))
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
