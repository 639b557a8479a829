"""Issue 13, items 4 and 6: big batches only where they belong (and recorded), rows loaded in
chunks or streamed with a prefetching reader (the same batches either way), compiling only
jobs long enough to repay it, one compile cache per results folder. CPU only: `torch.device
("cuda")` is passed where a function only reads the device type."""

from __future__ import annotations

import json
import threading
import time
import weakref
from contextlib import closing
from itertools import islice
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import sslseg.data.loader as loader
import sslseg.train as train_module
from sslseg.config import compile_cache_env, merge, read_yaml, stage_multiplier, stage_settings, validate
from sslseg.data.loader import Batches, load_rows, prefetch
from sslseg.data.pack import read_pack
from sslseg.optim import device_scaling, scale_for_device

from test_engine import RUNTIME, Toy, same_weights, settings_for, transform

ROOT = Path(__file__).resolve().parents[1]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sslseg-prefetch"]


# --- item 4: the batch multiplier per stage ----------------------------------------------------

def config(train: dict) -> dict:
    return validate(merge(read_yaml(ROOT / "config.yaml"), {"train": train}))


def test_a_plain_multiplier_multiplies_pretraining_and_intermediate_only():
    from sslseg import grid

    cfg = config({"cuda_batch_multiplier": 8})
    run = grid.first_run(cfg, "pretrain")
    assert stage_settings(cfg, "pretrain", run)["cuda_batch_multiplier"] == 8
    assert stage_settings(cfg, "intermediate", run)["cuda_batch_multiplier"] == 8
    tuned = grid.first_run(cfg, "finetune")
    assert stage_settings(cfg, tuned.adaptation, tuned)["cuda_batch_multiplier"] == 1
    assert [stage_multiplier(8, s) for s in ("pretrain", "intermediate", "finetune", "probe")] == [8, 8, 1, 1]
    mapping = config({"cuda_batch_multiplier": {"pretrain": 4, "finetune": 2}})["train"]["cuda_batch_multiplier"]
    assert [stage_multiplier(mapping, s) for s in ("pretrain", "intermediate", "finetune", "probe")] == [4, 1, 2, 1]


@pytest.mark.parametrize("bad", [0, {"finetune": 0}, {"evaluate": 2}])
def test_a_bad_multiplier_is_a_one_line_error_naming_the_key(bad):
    from sslseg.io import UserError

    with pytest.raises(UserError, match=r"train\.cuda_batch_multiplier") as e:
        config({"cuda_batch_multiplier": bad})
    assert "\n" not in str(e.value)


def test_pretraining_is_multiplied_with_linear_or_sqrt_lr_on_cuda_only():
    s = settings_for(stage="pretrain", batch_size=64, lr=1e-3, cuda_batch_multiplier=8, lr_scaling="linear")
    assert scale_for_device(s, CPU, 20_000) is s
    assert device_scaling(s, CPU, 20_000) == {"multiplier": 1, "requested": 1, "base_batch_size": 64, "batch_size": 64,
                                              "lr_scaling": "linear", "lr_factor": 1, "base_lr": 1e-3, "lr": 1e-3,
                                              "base_iterations": 0, "iterations": 0}
    cuda = scale_for_device(s, CUDA, 20_000)
    assert cuda["batch_size"] == 512 and cuda["lr"] == pytest.approx(8e-3)
    sqrt = device_scaling({**s, "lr_scaling": "sqrt"}, CUDA, 20_000)
    assert sqrt["lr_factor"] == pytest.approx(8**0.5) and sqrt["lr"] == pytest.approx(1e-3 * 8**0.5)
    assert device_scaling({**s, "lr_scaling": "none"}, CUDA, 20_000)["lr"] == 1e-3
    assert scale_for_device(s, CUDA)["batch_size"] == 512  # no image count (the planner): no cap


@pytest.mark.parametrize("m", [2, 4, 8])
def test_a_step_budget_at_a_multiplied_batch_trains_on_the_same_images(m):
    """The probe's 20k-step budget at m x the batch: 1/m of the steps (not m x the images at m x
    the LR), its step milestones and warm-up divided with it."""
    s = settings_for(stage="probe", batch_size=64, lr=1e-3, cuda_batch_multiplier=m, lr_scaling="linear",
                     iterations=20_000, epochs=0, milestones=[14_000, 18_000], warmup=1_000)
    cuda = scale_for_device(s, CUDA, 250)  # 250 pets: the cap allows up to x3
    applied = min(m, 250 // 64)
    assert cuda["batch_size"] == 64 * applied and cuda["iterations"] == round(20_000 / applied)
    assert abs(cuda["batch_size"] * cuda["iterations"] - 64 * 20_000) <= cuda["batch_size"] // 2  # the same images
    assert cuda["milestones"] == [round(14_000 / applied), round(18_000 / applied)]
    assert cuda["warmup"] == round(1_000 / applied)
    assert device_scaling(s, CUDA, 250)["base_iterations"] == 20_000
    epochs = {**s, "iterations": 0, "epochs": 100, "milestones": [70, 90], "warmup": 5}
    scaled = scale_for_device(epochs, CUDA, 250)  # an epoch budget already has 1/m of the steps per epoch
    assert (scaled["epochs"], scaled["milestones"], scaled["warmup"]) == (100, [70, 90], 5)


@pytest.mark.parametrize("images", [10, 63, 64, 127, 200, 250, 3680])
@pytest.mark.parametrize("m", [1, 2, 4, 8, 64])
def test_no_batch_is_multiplied_beyond_the_images_it_trains_on(images, m):
    s = settings_for(batch_size=64, lr=2e-3, cuda_batch_multiplier=m, lr_scaling="linear")
    d = device_scaling(s, CUDA, images)
    assert d["batch_size"] <= max(images, 64)  # a set smaller than the configured batch keeps it (fit says so)
    assert d["multiplier"] == max(1, min(m, images // 64)) and d["lr"] == pytest.approx(2e-3 * d["multiplier"])
    assert d["requested"] == m


def test_a_stage_sidecar_records_the_batch_multiplier_and_lr_scaling(tmp_path, monkeypatch):
    """The real pretrain stage, with the CUDA scaling forced onto a CPU run."""
    import sslseg.optim as optim
    import sslseg.stages.train as stages
    from sslseg import grid

    cfg = config({"cuda_batch_multiplier": 4, "lr_scaling": "sqrt"})
    settings = {**stage_settings(cfg, "pretrain", grid.first_run(cfg, "pretrain")), "device": "cpu", "batch_size": 4,
                "epochs": 0, "iterations": 2, "milestones": [], "compile": False}
    settings["model"] = {**settings["model"], "image_size": 32}
    with h5py.File(tmp_path / "pack.h5", "w") as f:
        f["images"] = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(stages, "device_scaling", lambda s, d, n=None: optim.device_scaling(s, CUDA, n))
    monkeypatch.setattr(stages, "scale_for_device", lambda s, d, n=None: optim.scale_for_device(s, CUDA, n))
    runtime = {"log_every": 1, "checkpoint_every": 10, "memory_gb": 1.0, "progress": False}
    stages.pretrain(str(tmp_path / "pack.h5"), 30, str(tmp_path / "m.pt"), str(tmp_path / "log.csv"), settings, runtime)
    meta = json.loads((tmp_path / "m.pt.json").read_text())
    # 30 images at batch 4: x4 would be 16 (fits); the LR follows sqrt(4) = 2
    assert meta["device_scaling"] == {"multiplier": 4, "requested": 4, "base_batch_size": 4, "batch_size": 16,
                                      "lr_scaling": "sqrt", "lr_factor": 2.0, "base_lr": settings["lr"],
                                      "lr": pytest.approx(2 * settings["lr"]), "base_iterations": 2, "iterations": 1}
    assert meta["batch_size"] == 16 and meta["lr"] == pytest.approx(2 * settings["lr"])
    assert meta["settings"]["batch_size"] == 4  # the configured settings, as the rule passed them


# --- item 4: rows loaded in chunks, streams prefetched -----------------------------------------

def write_pack(path: Path, n: int) -> Path:
    """Rows that hold their own index (images), its negative (masks) and a float per row."""
    with h5py.File(path, "w") as f:
        f["images"] = np.repeat(np.arange(n, dtype=np.int32)[:, None], 3, axis=1)
        f["masks"] = -np.arange(n, dtype=np.int32)[:, None]
        f["aspect"] = np.arange(n, dtype=np.float32) / 7
    return path


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, None])
def test_chunked_loading_equals_a_one_shot_read(tmp_path, chunk_rows):
    pack = write_pack(tmp_path / "p.h5", 50)
    keys = ("images", "masks", "aspect", "labels")  # a key the pack lacks is left out, as read_pack does
    rng = np.random.default_rng(0)
    for rows in (slice(0, 50), slice(5, 44), np.sort(rng.choice(50, 17, replace=False)), np.array([3, 4, 5, 9])):
        got = load_rows(pack, rows, keys, CPU, chunk_rows)
        want = read_pack(pack, rows, keys)
        assert got.keys() == want.keys() == {"images", "masks", "aspect"}
        assert all(torch.equal(got[k], torch.from_numpy(v)) for k, v in want.items())


def test_chunks_are_bounded_by_chunk_bytes(tmp_path, monkeypatch):
    pack = write_pack(tmp_path / "p.h5", 50)
    reads = []
    dataset_getitem = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, sel: reads.append(sel) or dataset_getitem(self, sel))
    monkeypatch.setattr(loader, "CHUNK_BYTES", 10 * (12 + 4 + 4))  # 10 rows of the three keys
    load_rows(pack, slice(0, 50), ("images", "masks", "aspect"), CPU)
    assert len(reads) == 3 * 5 and all(s.stop - s.start == 10 for s in reads)


def test_the_gpu_budget_does_not_decide_anything_off_cuda(tmp_path):
    pack = write_pack(tmp_path / "p.h5", 50)
    assert not Batches(pack, None, 4, CPU, ("images",), memory_gb=8, gpu_memory_gb=1e-9).streamed
    assert Batches(pack, None, 4, CPU, ("images",), memory_gb=1e-9, gpu_memory_gb=8).streamed


@pytest.mark.parametrize("n", [258, 700])
@pytest.mark.parametrize("batch_size", [4, 5, 7])
def test_the_prefetching_stream_yields_the_in_memory_batches(tmp_path, monkeypatch, n, batch_size):
    # blocks of 32 rows (65,536 in real runs), so batches straddle blocks and n=258's 2-row tail
    # block, visited anywhere in the epoch, can hold fewer rows than a straddling batch lacks
    monkeypatch.setattr(loader, "MIN_BLOCK_ROWS", 32)
    monkeypatch.setattr(loader, "BLOCK_BATCHES", 1)
    pack = write_pack(tmp_path / "p.h5", 800)
    rows = np.arange(11, 11 + n)
    keys = ("images", "masks", "aspect")
    for drop_last in (True, False):
        held = Batches(pack, rows, batch_size, CPU, keys, 8.0, drop_last)
        streamed = Batches(pack, rows, batch_size, CPU, keys, 1e-9, drop_last)
        assert not held.streamed and streamed.streamed
        for seed in (0, 1, 2, 3, None):
            a, b = list(held.epoch(seed)), list(streamed.epoch(seed))
            assert len(a) == len(b) == len(held)
            assert all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))
    assert not prefetch_threads()


def test_a_stream_holds_two_blocks_at_most(tmp_path, monkeypatch):
    """The block training and the next one as read: a third (a permuted copy) would be 4 GB more
    for the 200k-image pack (blocks of 65,536 144-px rows) on a job asking for 16 GB."""
    monkeypatch.setattr(loader, "MIN_BLOCK_ROWS", 32)
    monkeypatch.setattr(loader, "BLOCK_BATCHES", 1)
    pack = write_pack(tmp_path / "p.h5", 320)  # 10 blocks
    block_bytes = 32 * np.prod(h5py.File(pack)["images"].shape[1:])
    live, most = set(), [0]

    def watched(make):
        def made(*a, **k):
            t = make(*a, **k)
            if t.numel() * t.element_size() >= block_bytes:  # a block's worth, however it was made
                live.add(id(t))
                most[0] = max(most[0], len(live))
                weakref.finalize(t, live.discard, id(t))
            return t
        return made

    for name in ("from_numpy", "empty", "index_select"):
        monkeypatch.setattr(loader.torch, name, watched(getattr(torch, name)))
    streamed = Batches(pack, None, 4, CPU, ("images",), 1e-9)
    for batch in streamed.epoch(0):
        time.sleep(0.002)  # a slow step: the reader is a block ahead
    assert most[0] == 2


def test_a_cuda_job_gathers_host_rows_into_pinned_memory(tmp_path, monkeypatch):
    """From pageable memory a copy to the GPU waits for the queued steps, so the host could never
    run ahead: every batch of a CUDA job whose rows are in host memory (streamed, or a subset too
    large for the GPU) is gathered into pinned memory. The batches are the CPU job's."""
    monkeypatch.setattr(loader, "MIN_BLOCK_ROWS", 32)
    monkeypatch.setattr(loader, "BLOCK_BATCHES", 1)
    pack = write_pack(tmp_path / "p.h5", 200)
    pinned, kept = set(), []  # where the tensors asked for as pinned memory are (kept: no address reused)
    real_empty = torch.empty

    def empty(*a, pin_memory=False, **k):  # (no CUDA here to pin with: record the request)
        t = real_empty(*a, **k)
        if pin_memory:
            pinned.add(t.data_ptr())
            kept.append(t)
        return t

    cuda = torch.device("cuda")
    for rows in (np.arange(10, 150), np.arange(0, 200, 3)):  # streamed; a subset held on the host
        for drop_last in (True, False):  # (batches of 5 straddle the streamed blocks of 32 rows; a tail)
            monkeypatch.setattr(loader.torch, "empty", real_empty)
            on_cpu = list(Batches(pack, rows, 5, CPU, ("images", "masks"), 1e-9, drop_last).epoch(3))
            job = Batches(pack, rows, 5, cuda, ("images", "masks"), 1e-9, drop_last, gpu_memory_gb=1e-9)
            assert job.streamed == (rows[1] - rows[0] == 1) and all(v.device == CPU for v in job.arrays.values())
            monkeypatch.setattr(job, "_to_device", lambda batch: batch)
            monkeypatch.setattr(loader.torch, "empty", empty)
            on_cuda = list(job.epoch(3))
            assert all(v.data_ptr() in pinned for batch in on_cuda for v in batch.values())
            assert len(on_cpu) == len(on_cuda)
            assert all(torch.equal(x[k], y[k]) for x, y in zip(on_cpu, on_cuda) for k in x)


def test_a_budget_ending_mid_epoch_stops_the_reader_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "MIN_BLOCK_ROWS", 32)
    monkeypatch.setattr(loader, "BLOCK_BATCHES", 1)
    pack = write_pack(tmp_path / "p.h5", 400)
    held = Batches(pack, None, 5, CPU, ("images", "masks"), 8.0)
    streamed = Batches(pack, None, 5, CPU, ("images", "masks"), 1e-9)
    for steps in (1, 6, 7, 33):  # in the first block, at a block's end, straddling, later
        with closing(streamed.epoch(4)) as raws:
            got = list(islice(raws, steps))
            assert len(prefetch_threads()) == 1  # the next block is being read in the background
        assert not prefetch_threads()  # stopped and joined
        assert all(torch.equal(x["images"], y["images"]) for x, y in zip(got, islice(held.epoch(4), steps)))


def test_fit_gives_the_same_weights_streamed_or_held_when_the_budget_ends_mid_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "MIN_BLOCK_ROWS", 8)
    monkeypatch.setattr(loader, "BLOCK_BATCHES", 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "pack.h5", "w") as f:
        f["images"], f["masks"] = images, (images[..., 0] // 86).astype(np.uint8)
    settings = settings_for(iterations=9, epochs=0, milestones=[])  # 7 steps an epoch: the second ends at step 2
    models = []
    for memory_gb in (8.0, 1e-9):
        batches = Batches(tmp_path / "pack.h5", None, 4, CPU, ("images", "masks"), memory_gb)
        assert batches.streamed == (memory_gb < 1)
        torch.manual_seed(0)
        model = Toy()
        train_module.fit(model, batches, transform, settings, runtime=RUNTIME, name="finetune",
                         resume_path=tmp_path / f"{memory_gb}.resume", log_path=tmp_path / f"{memory_gb}.csv")
        models.append(model)
    assert same_weights(*models)
    assert not prefetch_threads()


def test_prefetch_reads_ahead_closes_its_source_in_its_thread_and_stops_on_close():
    events, closed_in = [], []

    def source():
        try:
            for i in range(100):
                events.append(("read", i))
                yield i
        finally:
            closed_in.append(threading.current_thread().name)

    it = prefetch(source(), depth=1)
    assert next(it) == 0
    for _ in range(200):  # the thread reads item 1 while item 0 is in use, and not item 2
        if ("read", 1) in events:
            break
        threading.Event().wait(0.01)
    assert events == [("read", 0), ("read", 1)]
    closer = threading.Thread(target=it.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive() and not prefetch_threads()
    assert closed_in == ["sslseg-prefetch"]
    assert list(prefetch(range(5), depth=2)) == [0, 1, 2, 3, 4] and not prefetch_threads()


def test_an_error_in_the_reader_is_raised_in_the_consumer():
    def source():
        yield 1
        raise OSError("truncated block")

    it = prefetch(source())
    assert next(it) == 1
    with pytest.raises(OSError, match="truncated block"):
        next(it)
    assert not prefetch_threads()


# --- item 6: compile only when it pays; one compile cache per results folder --------------------

def test_auto_compiles_only_long_cuda_jobs():
    use = train_module.use_compile
    assert not use("auto", CPU, 10**9)
    assert not use("auto", CUDA, 250 * 100, 2_000_000)  # a 250-pet, 100-epoch fine-tune
    assert use("auto", CUDA, 20_000 * 100, 2_000_000)  # a 20k-image, 100-epoch pretraining
    assert not use("auto", CUDA, 1_999_999) and use("auto", CUDA, 2_000_000)  # the default threshold
    assert use("auto", CUDA, 1, 0) and not use("auto", CUDA, 0, 1)
    assert use(True, CPU, 0) and not use(False, CUDA, 10**9)
    schema = read_yaml(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    default = schema["properties"]["train"]["properties"]["compile_min_image_steps"]["default"]
    assert default == train_module.COMPILE_MIN_IMAGE_STEPS


def test_fit_asks_with_the_jobs_image_steps_and_the_configured_threshold(tmp_path, monkeypatch):
    from test_engine import train

    asked = []
    monkeypatch.setattr(train_module, "use_compile", lambda *a: asked.append(a) or False)
    train(tmp_path, settings_for(compile="auto", compile_min_image_steps=123))  # 12 images, batch 4, 3 epochs
    assert asked == [("auto", CPU, 3 * 3 * 4, 123)]


def test_a_resumed_job_decides_on_its_whole_length_as_its_first_start_did(tmp_path, monkeypatch):
    """Resumed near its end, a job must compile (or not) as it did at first: a compiled step rounds
    differently, and a resume is meant to give the uninterrupted run's numbers."""
    from test_engine import OPTIMIZERS, die_after, train

    asked = []
    monkeypatch.setattr(train_module, "use_compile", lambda *a: asked.append(a[2]) or False)
    s = settings_for(compile="auto", epochs=3)
    cls = OPTIMIZERS[s["optimizer"]]
    real = cls.step
    die_after(monkeypatch, cls, 7)  # killed in epoch 3 of 3, after epoch 2's checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, s, tag="cut")
    monkeypatch.setattr(cls, "step", real)
    train(tmp_path, s, tag="cut")
    assert asked == [3 * 3 * 4, 3 * 3 * 4]


def test_a_short_last_batch_gets_a_static_graph_of_its_own(tmp_path, monkeypatch):
    """drop_last false (the intermediate step, fine-tunes): the epoch's short last batch must not
    turn the compiled step into one dynamic-shape graph, slower for every batch after it."""
    from test_engine import make_pack

    from sslseg.train import fit

    shapes = []  # per compiled graph: whether any input size is symbolic

    def recording(gm, example_inputs):
        shapes.append(any(isinstance(t, torch.SymInt) for t in example_inputs))  # a dynamic size is an input
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **k: real(model, **{**k, "backend": recording}))
    torch._dynamo.reset()
    batches = Batches(make_pack(tmp_path / "pack.h5"), None, 5, CPU, ("images", "masks"), drop_last=False)
    s = settings_for(compile=True, epochs=2, batch_size=5, drop_last=False)  # 12 images: 5, 5, 2 a epoch
    fit(Toy(), batches, transform, s, runtime=RUNTIME, name="finetune", resume_path=tmp_path / "r",
        log_path=tmp_path / "log.csv")
    torch._dynamo.reset()
    assert len(shapes) >= 2 and not any(shapes)


def test_the_compile_cache_is_one_folder_per_results_folder(tmp_path):
    env = compile_cache_env({"name": "study-a"}, tmp_path)
    cache = (tmp_path / "results" / "study-a" / ".cache").resolve()
    assert env == {"TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
    assert compile_cache_env({"name": "other"}, tmp_path) != env
