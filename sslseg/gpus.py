"""One device per job, and several small jobs per device, for local runs on a GPU machine.

Snakemake counts GPUs but does not assign them (snakemake issue 281): with `--resources gpu=N`
every job would open GPU 0. So a GPU job's process, before anything initialises CUDA, claims
slots on one device here and sets CUDA_VISIBLE_DEVICES to that device alone. Each device has
SLOTS slots, one lock file each in a lock folder; a job of a rule with
`resources.<rule>.gpu_share: s` takes SLOTS // s of them, all on one device, with flock on
descriptors held open for the life of the process, so the kernel frees them when the job ends
or is killed (-9 included).

Policy: best fit. The job goes to the device with the fewest free slots that still has enough
(ties: the first listed), so small jobs pack onto one device and leave the others whole for
the jobs that need a device to themselves. When no device has enough (the free slots are
split across devices), the job waits, saying so in its log, and retries every POLL_S seconds.

Nothing happens when the job's command asks for no slots (SSLSEG_GPU_SLOTS, which the workflow
sets for local runs on CUDA only, does not list it: not for jobs the SLURM executor submits,
where SLURM picks the GPU), or without GPUs. A local run inside a SLURM allocation (`salloc
--gpus=4`, then snakemake) does claim, among the devices SLURM gave it (CUDA_VISIBLE_DEVICES).
Standard library only: it runs before torch is imported.

Environment:
- SSLSEG_GPU_SLOTS: JSON {command: slots} (workflow/rules/common.smk); read once and removed, so
  processes the job starts share its device instead of claiming another.
- SSLSEG_GPU_LOCKS: the lock folder; default /tmp/sslseg-<uid>/gpus, one per machine and user,
  since the devices are the machine's (two studies running at once share them too), in a
  folder only the user can write to (sslseg.userdir: no one else can hold a slot's lock).
- CUDA_VISIBLE_DEVICES: when set, the devices to choose among (e.g. "2,3").
- SSLSEG_GPU_COUNT: a device count to use instead of asking `nvidia-smi -L` (tests).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import MutableMapping
from typing import TextIO

from sslseg.userdir import private_dir, private_path

SLOTS = 12  # per device; every allowed gpu_share divides it, so a device holds exactly `share` jobs of a rule
SHARES = (1, 2, 3, 4, 6, 12)  # the schema's enum for resources.<rule>.gpu_share
POLL_S = 1.0  # a fine-tune can end within seconds: look again soon
SAY_EVERY_S = 60.0  # repeat the waiting line this often, so a long wait stays visible in the log
LOCK_BASE = "/tmp"  # not $TMPDIR: the devices are the machine's, whatever a job's environment says
_held: list[int] = []  # this process's lock descriptors: open until it exits


def slots(share: int) -> int:
    """The slots a job of a rule with `gpu_share: share` takes on its device."""
    if share not in SHARES:
        raise ValueError(f"gpu_share {share!r}: must be one of {', '.join(map(str, SHARES))}")
    return SLOTS // share


def devices(environ: MutableMapping[str, str]) -> list[str]:
    """The devices to choose among, as CUDA_VISIBLE_DEVICES entries."""
    if "CUDA_VISIBLE_DEVICES" in environ:  # the user's choice
        listed = [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",")]
        return _until_invalid(listed)
    if "SSLSEG_GPU_COUNT" in environ:
        count = environ["SSLSEG_GPU_COUNT"]
        if not count.isdigit():
            raise SystemExit(f"sslseg: error: SSLSEG_GPU_COUNT={count!r}: expected a number of devices")
        return [str(i) for i in range(int(count))]
    return _nvidia_smi()


def _until_invalid(entries: list[str]) -> list[str]:
    # CUDA ignores the entries from the first invalid one on ("-1" hides every device)
    out = []
    for d in entries:
        if not d or d.startswith("-"):
            break
        out.append(d)
    return out


def _nvidia_smi() -> list[str]:
    """GPU indices from `nvidia-smi -L` (no CUDA context, unlike asking torch); a GPU split
    with MIG gives its instances' UUIDs instead. None when nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    gpus: list[list[str]] = []
    for line in out.stdout.splitlines():
        if m := re.match(r"GPU (\d+):", line):
            gpus.append([m.group(1)])
        elif (m := re.search(r"\(UUID: (MIG-[^)]+)\)", line)) and gpus:
            if gpus[-1][0].isdigit():
                gpus[-1] = []  # the GPU itself cannot run CUDA work once split
            gpus[-1].append(m.group(1))
    return [d for g in gpus for d in g]


def _slot_file(lock_dir: str, device: str, k: int) -> str:
    return os.path.join(lock_dir, f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.{k}")


def _try_lock(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def try_acquire(lock_dir: str, devices: list[str], need: int,
                owner: str = "") -> tuple[str | None, list[int], dict[str, int]]:
    """One attempt: (the device, the `need` lock descriptors now held on it, each device's free
    slots before this claim); the device is None, and nothing held, when none has `need` free.
    Claims take turns on claim.lock, so the free counts are not changed by another claim while
    this one looks (holders only ever free slots)."""
    os.makedirs(lock_dir, exist_ok=True)
    guard = os.open(os.path.join(lock_dir, "claim.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        got = {d: [fd for k in range(SLOTS) if (fd := _try_lock(_slot_file(lock_dir, d, k))) is not None]
               for d in devices}
        free = {d: len(fds) for d, fds in got.items()}
        fits = [d for d in devices if free[d] >= need]
        best = min(fits, key=free.__getitem__) if fits else None  # min keeps the first of equals
        keep = got[best][:need] if best is not None else []
        for fd in (fd for fds in got.values() for fd in fds if fd not in keep):
            os.close(fd)
    finally:
        os.close(guard)  # releases the turn
    for fd in keep:  # who holds the slot, for whoever looks at the lock folder
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner}\n".encode())
    return best, keep, free


def _need(table: str, command: str) -> int:
    try:
        need = json.loads(table).get(command, 0)
    except (json.JSONDecodeError, AttributeError):
        raise SystemExit(f"sslseg: error: SSLSEG_GPU_SLOTS={table!r}: expected JSON {{command: slots}}") from None
    if not isinstance(need, int) or not 0 <= need <= SLOTS:
        raise SystemExit(f"sslseg: error: SSLSEG_GPU_SLOTS: {command}: {need!r} is not 0 to {SLOTS} slots")
    return need


def claim(command: str, environ: MutableMapping[str, str] = os.environ, poll_s: float = POLL_S,
          log: TextIO | None = None) -> str | None:
    """Before CUDA starts: take `command`'s slots on one device and set CUDA_VISIBLE_DEVICES to
    it; the device, or None where there is nothing to do (see above). Waits while no device has
    room."""
    log = log or sys.stderr
    table = environ.pop("SSLSEG_GPU_SLOTS", None)
    if _held:  # claimed already in this process
        return environ.get("CUDA_VISIBLE_DEVICES")
    if not table:  # (the workflow sets it for local runs only, not for jobs SLURM submits)
        return None
    need = _need(table, command)
    listed = devices(environ) if need else []
    if not listed:
        return None
    chosen = environ.get("SSLSEG_GPU_LOCKS")
    lock_dir = chosen or os.path.join(private_path(LOCK_BASE), "gpus")
    start = said = time.monotonic()
    first = True
    while True:
        try:
            if not chosen:
                private_dir(LOCK_BASE)
            device, fds, free = try_acquire(lock_dir, listed, need, f"{os.getpid()} {command}")
        except OSError as e:  # NotPrivate included
            fix = "fix it, or unset SSLSEG_GPU_LOCKS" if chosen else "or set SSLSEG_GPU_LOCKS to a folder of your own"
            raise SystemExit(f"sslseg: error: GPU lock folder {lock_dir}: {e}; {fix}") from None
        if device is not None:
            break
        if first or time.monotonic() - said >= SAY_EVERY_S:
            busy = ", ".join(f"GPU {d}: {n}" for d, n in free.items())
            print(f"sslseg: waiting for a GPU: {command} needs {need} of a device's {SLOTS} slots,"
                  f" free now {busy} (lock files in {lock_dir})", file=log, flush=True)
            first, said = False, time.monotonic()
        time.sleep(poll_s)
    _held.extend(fds)
    environ["CUDA_VISIBLE_DEVICES"] = device
    waited = f", after waiting {time.monotonic() - start:.0f} s" if not first else ""
    print(f"sslseg: {command} on GPU {device} ({need} of its {SLOTS} slots{waited})", file=log, flush=True)
    return device
