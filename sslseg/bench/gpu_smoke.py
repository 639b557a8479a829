"""`python -m sslseg.bench.gpu_smoke --json gpu_smoke.json`: what the GPU path does, in minutes.

One command (≤ 8 minutes on one H100-class GPU) that checks, on synthetic packs:
  attention   the fused SDPA kernel is enabled and ViNy's attention runs on it (forced to
              FLASH/EFFICIENT/cuDNN with `sdpa_kernel`; the kernels a profiler saw);
  syncs       host↔device syncs per training step between log points, counted by
              `torch.cuda.set_sync_debug_mode("warn")` over N steps of the real
              `train.train_step` on the real `Batches` + `make_transform` (target: 0);
  pretrain    a short SimMIM pretraining through the real `train.fit`: resident (pack on the
              GPU), streamed (pack above the memory budget) and with the batch multiplier;
              images/s (median of the epochs after the first, which compiles), recompiles
              (torch._dynamo counters) and peak memory per mode;
  data path   images/s of gather + augment alone, resident and streamed;
and writes a JSON `python -m sslseg plan --bench` reads (a_simmim: the resident mode;
a_finetune, evaluate and pack measured briefly beside it; compile_s; cuda_init_s).
Each check is a section: one that raises is reported (FAILED, its error; exit status 1) and the
others still run, and the JSON is rewritten after every section, so a first run on a GPU that
trips on one thing, or is cut off by a time limit, still brings back the rest.
Without CUDA it refuses in one line, unless `--device cpu --quick`: every code path, tiny,
on the CPU, so a test can keep the script from rotting (no sync count there).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

from sslseg.bench import run_cli
from sslseg.bench.data import cpu_count, write_images
from sslseg.bench.tasks import _forever, bench_eval, bench_pack, task_settings
from sslseg.bench.timing import count_flops, interleaved, peak_mb, reset_peak
from sslseg.config import load_config, runtime_settings
from sslseg.data.augment import make_transform
from sslseg.io import UserError, write_json
from sslseg.objectives import build_objective
from sslseg.optim import lr_at, make_optimizer, scale_for_device
from sslseg.train import autocast, compile_step, fit, make_generator, train_step, use_compile

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m sslseg.bench.gpu_smoke"
FULL = {"rows": 16_384, "steps": 1_024, "pets": 4_096, "jpegs": 128, "sync_steps": 50, "multiplier": 8, "seconds": 3.0}
QUICK = {"rows": 64, "steps": 16, "pets": 32, "jpegs": 8, "sync_steps": 3, "multiplier": 2, "seconds": 0.3}


# --- the calls into sslseg's loop: one place, to follow their API as it changes ---------------

def make_batches(pack: Path, batch_size: int, device: torch.device, keys: tuple[str, ...], resident: bool):
    """Batches over the whole pack: held on the device (resident) or streamed from HDF5 (a
    budget of 0 GB, as for packs above runtime.memory_gb / gpu_memory_gb)."""
    from sslseg.data.loader import Batches

    budget = 1e6 if resident else 0.0
    return Batches(pack, None, batch_size, device, keys, budget, gpu_memory_gb=budget)


def scaled(s: dict, multiplier: int, rows: int) -> dict:
    """Stage settings with the batch multiplier applied as on CUDA (device type only: nothing touches CUDA)."""
    return scale_for_device({**s, "cuda_batch_multiplier": multiplier}, torch.device("cuda"), rows)


def read_keys(s: dict) -> tuple[str | None, tuple[str, ...]]:
    """The label key the step `s` trains on (trimaps for a segmenter, else none) and the pack
    keys its batches read, as the training stage reads them."""
    label = "masks" if s["objective"] == "segment" else None
    return label, ("images", "aspect") + ((label,) if label else ())


def run_fit(s: dict, pack: Path, device: torch.device, runtime: dict, tmp: Path, resident: bool) -> dict:
    """The real loop, `fit`, on `pack` for s["iterations"] steps; returns its stats."""
    torch.manual_seed(0)
    objective = build_objective(s["objective"], s)
    label, keys = read_keys(s)
    batches = make_batches(pack, s["batch_size"], device, keys, resident)
    transform = make_transform(s["augment"], s["model"]["image_size"], label)
    tag = f"{s['objective']}-{s['batch_size']}-{'resident' if resident else 'streamed'}"
    return fit(objective, batches, transform, s, runtime=runtime, name=tag, resume_path=tmp / f".{tag}.resume",
               log_path=tmp / f"{tag}.csv")


# --- synthetic packs --------------------------------------------------------------------------

def write_pack(path: Path, rows: int, size: int, masks: bool, seed: int = 0) -> Path:
    """Random uint8 rows in pack_pretrain's / pack_pets' layout (images, aspect[, masks]): the
    data path's speed does not depend on the pixels, and writing JPEGs first would take minutes."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(rows, 2**20 // (size * size * 3)))
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (rows, size, size, 3), np.uint8, chunks=(chunk, size, size, 3))
        for a in range(0, rows, 4096):  # a few hundred MB at a time, never the whole pack in memory
            images[a:a + 4096] = rng.integers(0, 256, (min(4096, rows - a), size, size, 3), dtype=np.uint8)
        f.create_dataset("aspect", data=np.ones(rows, np.float32))
        if masks:
            f.create_dataset("masks", data=rng.integers(0, 3, (rows, size, size), dtype=np.uint8))
    return path


# --- checks -----------------------------------------------------------------------------------

def check_attention(s: dict, device: torch.device) -> dict:
    """Whether ViNy's attention runs on a fused SDPA kernel: timm's switch, torch's switches, a
    forward forced onto FLASH/EFFICIENT/cuDNN (raises if none can run it), and the kernels seen."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]

    model = build_objective(s["objective"], s).to(device).eval()
    x = {"images": torch.randn(8, 3, s["model"]["image_size"], s["model"]["image_size"], device=device)}
    gen = make_generator(device, 0)
    blocks = [m for m in model.modules() if hasattr(m, "fused_attn")]
    out = {"flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(),
           "mem_efficient_sdp_enabled": torch.backends.cuda.mem_efficient_sdp_enabled(),
           "timm_fused_attn": bool(blocks) and all(m.fused_attn for m in blocks), "forced_fused_ran": False}
    with torch.no_grad(), autocast("auto" if device.type == "cuda" else "none", device):
        try:
            with sdpa_kernel(FUSED):
                model(x, gen)
            out["forced_fused_ran"] = True
        except RuntimeError as e:  # "No available kernel": the model would fall back to the math path
            out["error"] = str(e).splitlines()[0]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            model(x, gen)
    names = {e.key for e in prof.key_averages()}
    # (on Hopper, torch may prefer cuDNN's fused attention: aten::_scaled_dot_product_cudnn_attention)
    out["kernels"] = sorted(n for n in names if any(k in n.lower() for k in ("flash", "efficient_attention", "fmha",
                                                                           "cudnn_attention")))
    out["ok"] = out["timm_fused_attn"] and out["forced_fused_ran"] and bool(out["kernels"])
    return out


def count_syncs(s: dict, pack: Path, device: torch.device, steps: int, compiled: bool) -> dict:
    """Host syncs in `steps` training steps between two log points, as `fit` runs them (LR set per
    step, the step, the loss summed on the device; no .item()), after warm-up steps that compile."""

    torch.manual_seed(0)
    objective = build_objective(s["objective"], s).to(device).train()
    step_fn = compile_step(objective) if compiled else objective
    opt = make_optimizer(objective, s, device)
    batches = make_batches(pack, s["batch_size"], device, ("images", "aspect"), resident=True)
    transform, gen = make_transform(s["augment"], s["model"]["image_size"], None), make_generator(device, 0)
    raws, loss_sum = _forever(batches), torch.zeros((), device=device)

    def step(i: int) -> None:
        nonlocal loss_sum
        for group in opt.param_groups:
            group["lr"] = lr_at(i, len(batches), s)
        loss_sum += train_step(step_fn, opt, transform(next(raws), gen), gen, s["amp"], device)

    for i in range(3):
        step(i)
    loss_sum.item()  # the log point before the counted window
    frames = _dynamo_frames()
    if device.type != "cuda":  # set_sync_debug_mode is CUDA's: run the same steps, count nothing
        for i in range(steps):
            step(3 + i)
        return {"steps": steps, "syncs": None, "per_step": None, "note": "not counted off CUDA",
                "recompiles": _dynamo_frames() - frames}
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(steps):
                step(3 + i)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    kinds: dict[str, int] = {}  # where each sync was called from: the line to fix
    for w in syncs:
        where = f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:100]}"
        kinds[where] = kinds.get(where, 0) + 1
    return {"steps": steps, "syncs": len(syncs), "per_step": len(syncs) / steps, "kinds": kinds,
            "recompiles": _dynamo_frames() - frames}


def _dynamo_frames() -> int:
    """Frames torch.compile has compiled so far: a rise between steps of one shape is a recompile."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def pretrain_mode(s: dict, pack: Path, device: torch.device, runtime: dict, tmp: Path, resident: bool) -> dict:
    """One short SimMIM pretraining: images/s (median of the epochs after the first), the first
    epoch's extra seconds (compile and warm-up), frames compiled, peak memory."""
    frames, breaks = _dynamo_frames(), _graph_breaks()
    reset_peak(device)
    stats = run_fit(s, pack, device, runtime, tmp, resident)
    rows = stats["history"]
    steady = [r["images_per_s"] for r in rows[1:]] or [rows[0]["images_per_s"]]
    rate = statistics.median(steady)
    first = rows[0]["seconds"] - rows[0]["images_per_s"] * rows[0]["seconds"] / rate
    return {"images_per_s": rate, "epochs": len(rows), "steps": stats["steps"], "batch_size": s["batch_size"],
            "compiled": stats["compiled"], "first_epoch_extra_s": round(max(0.0, first), 2),
            "frames_compiled": _dynamo_frames() - frames, "graph_breaks": _graph_breaks() - breaks,
            "peak_mb": round(peak_mb(device, 0), 1)}


def data_path(s: dict, pack: Path, device: torch.device, seconds: float) -> dict:
    """Gather + transfer + augment alone (no model), resident and streamed: images/s."""

    transform, gen = make_transform(s["augment"], s["model"]["image_size"], None), make_generator(device, 0)
    bs, steps = s["batch_size"], {}
    for name, resident in (("d_simmim", True), ("s_simmim", False)):
        raws = _forever(make_batches(pack, bs, device, ("images", "aspect"), resident))
        steps[name] = lambda raws=raws: (transform(next(raws), gen), bs)[1]
        steps[name]()
    return interleaved(steps, seconds, 1, device, 0)


# --- the command ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "config.yaml"), help="the workflow config whose settings to use")
    p.add_argument("--configfile", default=None, help="extra config merged on top")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only with --quick")
    p.add_argument("--quick", action="store_true", help="tiny sizes, no compile: a seconds-scale check of the script")
    p.add_argument("--multiplier", type=int, default=None, help="batch multiplier of the third mode (default 8)")
    p.add_argument("--json", default=None, help="write the results here (python -m sslseg plan --bench reads it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.quick:
        raise UserError("needs a CUDA device; --device cpu runs only with --quick (a check of the script)")
    if device.type != "cpu" and not torch.cuda.is_available():
        raise UserError("needs a CUDA device (none here); --device cpu --quick checks the script on the CPU")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device}: cuda, or cpu with --quick")
    sizes = QUICK if args.quick else FULL
    mult = args.multiplier or sizes["multiplier"]
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.zeros(1, device=device)  # the CUDA context: part of every GPU job's start-up
        torch.cuda.synchronize(device)
    cuda_init_s = time.perf_counter() - t0
    cfg = load_config(args.config, args.configfile)
    runtime = {**runtime_settings(cfg), "progress": False, "checkpoint_every": 10**9}
    out = {"command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device.type,
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "cpus": cpu_count(), "torch": torch.__version__, "quick": args.quick, "cuda_init_s": round(cuda_init_s, 2),
           "measurements": {}, "settings": {}, "flops_per_image": {}, "compile_s": {}, "smoke": {}}
    out["errors"] = {}

    def save() -> None:  # after every section: a run cut short (a time limit) keeps what it measured
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        if args.json:
            write_json(args.json, out)  # atomically: a reader never sees half a file

    with tempfile.TemporaryDirectory(prefix="sslseg-gpu-smoke-") as tmp_name:
        smoke(cfg, device, sizes, mult, runtime, Path(tmp_name), out, save)
    save()
    print(render(out))
    return out


def section(out: dict, name: str, save, fn) -> bool:
    """Run one check or measurement; an exception is recorded under out["errors"][name] (its
    traceback on stderr) and the next section runs: a first run on a GPU that trips on one thing
    still brings back everything else. Saves `out` either way. Whether it succeeded."""
    try:
        fn()
        return True
    except Exception as e:  # noqa: BLE001 - recorded and reported; KeyboardInterrupt still stops the run
        traceback.print_exc()
        e.__traceback__ = None  # (its frames hold the section's tensors: free them for the next one)
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # an out-of-memory section must not leave the next one short
        out["errors"][name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        print(f"{PROG}: {name} FAILED: {out['errors'][name]}", file=sys.stderr, flush=True)
        return False
    finally:
        save()


def smoke(cfg: dict, device: torch.device, sizes: dict, mult: int, runtime: dict, tmp: Path, out: dict,
          save=lambda: None) -> None:
    """Every check and measurement, into `out` (see the module doc), each a `section`."""
    quick, smk, m = out["quick"], out["smoke"], out["measurements"]
    s = task_settings(cfg, "simmim", device, quick)  # the workflow's settings here (its multiplier included)
    base = task_settings(cfg, "simmim", torch.device("cpu"), quick)  # before any multiplier
    pack_size = 36 if quick else cfg["data"]["pretrain"]["pack_size"]
    pre = write_pack(tmp / "pretrain.h5", sizes["rows"], pack_size, masks=False)
    compiled = not quick and compiles(s, device, 200_000 * 100)  # as the grid's longest: 200k images x 100 epochs
    s = {**s, "compile": compiled, "iterations": sizes["steps"]}
    describe(out, "simmim", s, pack_size)  # first: the planner needs the model it times, whatever fails
    fine = finetune_settings(cfg, device, sizes, quick)
    describe(out, "finetune", fine, fine["model"]["image_size"])
    save()  # before the first, longest section (the cold compile): a cut-off run still leaves a file
    modes = {"resident": (s, True), "streamed": (s, False),
             f"multiplier_x{mult}": ({**scaled(base, mult, sizes["rows"]), "compile": compiled,
                                      "iterations": max(2, sizes["steps"] // mult)}, True)}
    # resident first: its first epoch pays the cold compile, which is the planner's compile_s
    smk["pretrain"] = {}
    for name, (ms, resident) in modes.items():
        if section(out, f"pretrain_{name}", save,
                   lambda ms=ms, resident=resident, name=name: smk["pretrain"].__setitem__(
                       name, pretrain_mode(ms, pre, device, runtime, tmp, resident))) and name == "resident":
            r = smk["pretrain"]["resident"]
            m["a_simmim"] = {"images_per_s": r["images_per_s"], "peak_mb": r["peak_mb"],
                             "source": "gpu_smoke pretrain resident: median epoch after the first"}
            out["compile_s"]["simmim"] = r["first_epoch_extra_s"] if compiled else 0.0
    section(out, "syncs", save, lambda: smk.__setitem__("syncs", count_syncs(s, pre, device, sizes["sync_steps"],
                                                                             compiled)))
    section(out, "attention", save, lambda: smk.__setitem__("attention", check_attention(s, device)))
    section(out, "data_path", save, lambda: m.update(data_path(s, pre, device, sizes["seconds"])))
    finetune(cfg, device, sizes, runtime, tmp, out, fine, save)
    for task, st, pack in (("simmim", s, pre), ("finetune", fine, tmp / "pets.h5")):
        section(out, f"flops_{task}", save,
                lambda task=task, st=st, pack=pack: out["flops_per_image"].__setitem__(task, flops(st, pack, device)))


def describe(out: dict, task: str, st: dict, pack_size: int) -> None:
    """The model and settings a task's figures are for (what `plan --bench` scales by)."""
    out["settings"][task] = {"batch_size": st["batch_size"], "image_size": st["model"]["image_size"],
                             "patch_size": st["model"]["patch_size"], "backbone": st["model"]["backbone"],
                             "objective": st["objective"], "compile": st["compile"], "amp": st["amp"],
                             "pack_size": pack_size}


def compiles(s: dict, device: torch.device, image_steps: int) -> bool:
    """train.use_compile's answer for a job of `image_steps` with these settings."""
    least = [s["compile_min_image_steps"]] if "compile_min_image_steps" in s else []
    return use_compile(s["compile"], device, image_steps, *least)


def flops(s: dict, pack: Path, device: torch.device) -> float:
    """FLOPs per image (forward + backward) of the step `s` trains, on 8 augmented rows of `pack`."""
    label, keys = read_keys(s)
    gen = make_generator(device, 0)
    raw = next(_forever(make_batches(pack, 8, device, keys, True)))
    batch = make_transform(s["augment"], s["model"]["image_size"], label)(raw, gen)
    return count_flops(build_objective(s["objective"], s).to(device), batch, gen)


def finetune_settings(cfg: dict, device: torch.device, sizes: dict, quick: bool) -> dict:
    """The fine-tune the smoke test times: the workflow's, three epochs of a pets-sized pack."""
    s = task_settings(cfg, "finetune", device, quick)
    compiled = not quick and compiles(s, device, 6000 * s["epochs"])  # the grid's largest fine-tune: 6,000 pets
    return {**s, "compile": compiled, "iterations": 3 * (sizes["pets"] // s["batch_size"])}


def finetune(cfg: dict, device: torch.device, sizes: dict, runtime: dict, tmp: Path, out: dict, s: dict,
             save=lambda: None) -> None:
    """The fine-tune step (a short fit on a pets-sized pack), evaluation and packing, briefly:
    what the planner needs beside the pretraining rate."""
    quick, m = out["quick"], out["measurements"]
    pets = write_pack(tmp / "pets.h5", sizes["pets"], s["model"]["image_size"], masks=True, seed=1)

    def fit_finetune() -> None:
        frames = _dynamo_frames()
        history = run_fit(s, pets, device, runtime, tmp, resident=True)["history"]
        rate = statistics.median(r["images_per_s"] for r in history[1:])
        m["a_finetune"] = {"images_per_s": rate, "source": "gpu_smoke: median epoch after the first"}
        first = history[0]
        extra = first["seconds"] - first["images_per_s"] * first["seconds"] / rate
        out["compile_s"]["finetune"] = round(max(0.0, extra), 2) if s["compile"] else 0.0
        out["smoke"]["finetune"] = {"compiled": s["compile"], "frames_compiled": _dynamo_frames() - frames,
                                    "batch_size": s["batch_size"], "images_per_s": rate}

    def pack() -> None:
        records = write_images(tmp, sizes["jpegs"], (160, 120) if quick else (500, 375))
        m["pack"] = bench_pack(cfg, records, tmp / "packed.h5", 36 if quick else cfg["data"]["pretrain"]["pack_size"],
                               seconds=sizes["seconds"], quick=quick)

    section(out, "finetune", save, fit_finetune)
    section(out, "evaluate", save, lambda: m.__setitem__(
        "evaluate", bench_eval(cfg, device, {"finetune": pets}, seconds=sizes["seconds"], quick=quick)))
    section(out, "pack", save, pack)


def render(out: dict) -> str:
    """The report; a section that failed says so (its error) where its line would be."""
    smk, m, errors = out["smoke"], out["measurements"], out.get("errors", {})

    def failed(name: str) -> str:
        return f"FAILED ({errors[name]})" if name in errors else "not run"

    lines = [f"{PROG} on {out['device_name']}, torch {out['torch']}, {out['cpus']} CPUs"
             + (" (--quick: tiny sizes, not figures)" if out["quick"] else "")]
    att = smk.get("attention")
    lines.append("fused attention: " + (failed("attention") if att is None else
                 f"{'ok' if att['ok'] else 'NOT USED'} (timm fused_attn {att['timm_fused_attn']}, forced "
                 f"FLASH/EFFICIENT/cuDNN ran {att['forced_fused_ran']}, kernels {', '.join(att['kernels']) or 'none'})"))
    syn = smk.get("syncs")
    lines.append("host syncs per step: " + (failed("syncs") if syn is None else
                 ("not counted off CUDA" if syn["per_step"] is None else
                  f"{syn['per_step']:.2f} over {syn['steps']} steps (target 0)")
                 + f"; recompiles in those steps: {syn['recompiles']}"))
    lines += [f"  {n} x {k}" for k, n in (syn or {}).get("kinds", {}).items()]
    lines.append(f"{'SimMIM pretraining':<24}{'batch':>7}{'img/s':>11}{'compiled':>10}{'frames':>8}{'breaks':>8}"
                 f"{'peak MB':>9}{'1st epoch +s':>13}")
    for name in [*smk.get("pretrain", {}), *(e[len("pretrain_"):] for e in errors if e.startswith("pretrain_"))]:
        r = smk.get("pretrain", {}).get(name)
        lines.append(f"  {name:<22}" + (failed(f"pretrain_{name}") if r is None else
                     f"{r['batch_size']:>7}{r['images_per_s']:>11.0f}{str(r['compiled']):>10}"
                     f"{r['frames_compiled']:>8}{r['graph_breaks']:>8}{r['peak_mb']:>9.0f}"
                     f"{r['first_epoch_extra_s']:>13.1f}"))

    def rate(key: str, name: str) -> str:
        return f"{m[key]['images_per_s']:,.0f} img/s" if key in m else failed(name)

    lines += [f"data path alone, resident {rate('d_simmim', 'data_path')}; streamed from HDF5 "
              f"{rate('s_simmim', 'data_path')} (target >= 200,000 resident)",
              f"fine-tune step {rate('a_finetune', 'finetune')} (batch {out['settings']['finetune']['batch_size']}, "
              f"compiled {out['settings']['finetune']['compile']}); evaluate {rate('evaluate', 'evaluate')}; "
              f"pack {rate('pack', 'pack')}",
              "SimMIM " + (f"{out['flops_per_image']['simmim'] / 1e9:.2f} GFLOP/image" if "simmim" in
                           out["flops_per_image"] else f"FLOPs {failed('flops_simmim')}")
              + f"; CUDA init {out['cuda_init_s']:.1f} s; wall {out['wall_s']:.0f} s"]
    if errors:
        lines.append(f"{len(errors)} section(s) FAILED: {', '.join(errors)} (tracebacks above; the JSON has the rest)")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> dict:
    """`main`, with a problem in the input (no CUDA, flags) as one line on stderr and exit status 2,
    and exit status 1 after the report when a section failed."""
    out = run_cli(main, PROG, argv, prefix="")
    if out["errors"]:  # measured what it could; the failures are in the report and the JSON
        sys.exit(1)
    return out


if __name__ == "__main__":
    cli()
