"""Warm start: import torch and the stages once, fork one child per job.

Every rule runs `python -m sslseg <command>`, and importing torch + timm + a stage costs
3-5 s of CPU (BENCHMARKS.md, per-job overhead), paid again by each of a grid's hundreds of jobs. With
`runtime.warm_start` (the default for local runs), a job's process is a thin client: it hands
its arguments, working directory, environment and stdin/stdout/stderr to a server that has
imported every command's module, and the server forks a child that runs the command exactly
as the job's own process would have (same argv, cwd, environment, open files). The fork
shares the imported modules, so the job starts in milliseconds.

The client stays the job as far as Snakemake can tell: it exits with the child's status (or
dies by the child's signal), forwards SIGTERM/SIGINT/SIGHUP to it, and if the client is
killed outright the server kills the child (SIGKILL, as the job's own process would have
died). The server starts on the first job (that job runs without it), serves one user, one
interpreter and one checkout (the socket's name is a hash of them, in a folder of the user's
own, sslseg.userdir; the peer's user id is checked both ways), takes no new job once a module
it imported has changed on disk (that job runs cold, the next one starts a fresh server;
running jobs finish), and exits after IDLE_S seconds without jobs. Linux only; not under
SLURM (a job per allocation: nothing to share), nor when SSLSEG_RUNTIME is not set (a stage
run by hand).

What changes for the user: Snakemake's `benchmark:` files of warm jobs hold the job's wall
time, but their CPU and memory columns measure the client (the child is the server's);
`runtime.warm_start: false` gives every job its own process again. Standard library only:
the client must not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from sslseg.userdir import private_dir

IDLE_S = 30.0  # a server with no job for this long exits: a workflow starts its next job within a second or so,
# and an idle server holds ~0.5 GB
REPLY_TIMEOUT_S = 30.0  # a server that does not fork within this is given up on (the job runs cold)
PACKAGE = Path(__file__).resolve().parent
SUN_PATH_MAX = 107  # Linux: sockaddr_un.sun_path is 108 bytes, with its terminating NUL


def socket_path(folder: str | None = None) -> str:
    """One server per user, interpreter and sslseg checkout (the package the client imported),
    its socket in the user's own folder in `folder` (default: the temporary folder, $TMPDIR or
    /tmp): sslseg-<uid>/warm-<hash>.sock. Raises userdir.NotPrivate when that folder is not
    safely the user's (sslseg.userdir says why it matters)."""
    # sys.prefix too: two venvs on one base interpreter share its real executable, not their packages
    key = hashlib.sha256(f"{os.path.realpath(sys.executable)}\0{sys.prefix}\0{PACKAGE}\0{sys.version}"
                         .encode()).hexdigest()[:16]
    path = os.path.join(private_dir(folder or tempfile.gettempdir()), f"warm-{key}.sock")
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise OSError(f"{path} is longer than a Unix socket's path may be ({SUN_PATH_MAX} bytes); "
                      "set TMPDIR to a shorter folder")
    return path


def wanted(environ: dict | None = None) -> bool:
    """Whether a job should go through the server: the workflow's runtime settings ask for it
    (runtime.warm_start, handed over in SSLSEG_RUNTIME) and the job is not a SLURM job."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):  # it relies on fork, SO_PEERCRED and PR_SET_PDEATHSIG
        return False
    if "SLURM_JOB_ID" in env or "SSLSEG_RUNTIME" not in env:
        return False
    try:
        return bool(json.loads(env["SSLSEG_RUNTIME"]).get("warm_start", False))
    except (json.JSONDecodeError, AttributeError):
        return False  # the job reports the bad value itself (sslseg.runtime)


# ---------------------------------------------------------------------------------------- client

def run(argv: list[str]) -> int | None:
    """Run `python -m sslseg <argv>` in a child of the server; its exit status, or None when
    no server took the job (none running: one is started for the next job; it refused: its
    code is stale; it went away before forking), and the caller runs the job itself. Once the
    server has the request the client waits for its answer, however long: giving up would let
    the job run twice, cold here and forked there."""
    try:
        path = socket_path()
    except OSError as e:  # NotPrivate, or a temporary folder we cannot write to
        print(f"sslseg: warm start is off for this job (it runs in its own process): {e}", file=sys.stderr)
        return None
    if _refused(path):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as e:  # no server (or a socket left by a dead one); or the path is unusable
        conn.close()
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            start_server(path)
        return None
    with conn:
        if _peer_uid(conn) != os.getuid():  # someone else's socket at our name: never hand them a job
            return None
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        reader = conn.makefile("r")
        try:
            socket.send_fds(conn, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
            first = json.loads(reader.readline() or "{}")
        except (OSError, json.JSONDecodeError):  # the server closed before forking (exiting)
            return None
        if "pid" not in first:
            return None  # stale: the server stops taking jobs, this one runs cold
        child = first["pid"]

        def forward(signum, _frame):
            _kill(child, signum)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        try:
            line = reader.readline()
        except OSError:
            line = ""
    if not line:  # the server died: its children die with it (PR_SET_PDEATHSIG); make sure
        _kill(child, signal.SIGKILL)
        print("sslseg: the warm-start server died while running this job; rerun it "
              "(runtime.warm_start: false runs every job in its own process)", file=sys.stderr)
        return 1
    status = json.loads(line)["status"]
    if status < 0:  # killed by a signal: die by the same one, as the job's own process would have
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def _peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (Linux SO_PEERCRED): a job's
    environment and open files go only to, and come only from, the same user."""
    import struct

    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return None
    return uid


def _kill(pid: int, sig: int) -> None:
    """Signal a job's child and whatever it started (its own process group, set right after the
    fork; before that, the child alone)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, sig)
            return
        except ProcessLookupError:
            continue
        except PermissionError:
            return


def _refused(path: str) -> bool:
    """Whether a server found it could not serve safely (`<socket>.refused`, its reason inside)
    with the code as it is now: then no job starts another, until a source file changes."""
    marker = Path(path + ".refused")
    try:
        since = marker.stat().st_mtime_ns
    except OSError:
        return False
    newest = max((f.stat().st_mtime_ns for f in PACKAGE.rglob("*.py")), default=0)
    return newest < since


def server_pids(log: str | Path) -> list[int]:
    """The pids of the servers that have written to a socket's log (`<socket>.log`), in order:
    each says `warm: serving <socket> (pid N, ...)` once it listens. For stopping them (tests, the
    benchmark)."""
    try:
        text = Path(log).read_text()
    except FileNotFoundError:
        return []
    return [int(m) for m in re.findall(r"^warm: serving .* \(pid (\d+),", text, re.M)]


def wait_listening(logs: Callable[[], Iterable[Path]], timeout: float) -> int | None:
    """The pid of the newest server of the first of `logs()` (polled) whose server listens, or None
    after `timeout` seconds: the benchmark and the tests wait for the server a first job started."""
    end = time.time() + timeout
    while time.time() < end:
        for log in logs():
            pids = server_pids(log)
            if pids and Path(str(log)[:-len(".log")]).exists():  # the socket file is there
                return pids[-1]
        time.sleep(0.2)
    return None


def stop_servers(log: str | Path) -> None:
    """SIGTERM the servers of a socket's log that still run (`server_pids`; a pid now held by
    another program, reused since, is left alone): the benchmark and the tests stop theirs."""
    for pid in server_pids(log):
        try:
            if b"sslseg.warm" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            pass


def start_server(path: str) -> None:
    """Start a server in the background (its own session, so a job's kill does not reach it)."""
    log = open(path + ".log", "ab")
    subprocess.Popen([sys.executable, "-m", "sslseg.warm", path], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=log, start_new_session=True, close_fds=True)
    log.close()


# ---------------------------------------------------------------------------------------- server

def _loaded_files() -> dict[str, int]:
    """The sslseg source files imported so far, with their modification times."""
    out = {}
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f and f.endswith(".py") and Path(f).resolve().is_relative_to(PACKAGE):
            try:
                out[f] = os.stat(f).st_mtime_ns
            except OSError:
                out[f] = -1
    return out


def _stale(files: dict[str, int]) -> str | None:
    for f, mtime in files.items():
        try:
            if os.stat(f).st_mtime_ns != mtime:
                return f
        except OSError:
            return f
    return None


def _preload() -> None:
    """Import torch, every command's module and every objective (what the jobs would import),
    never touching CUDA: a CUDA context does not survive fork, so the children must be the
    first to open one."""
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # torch.cuda.is_available() without cuInit
    import importlib

    from sslseg import objectives
    from sslseg.cli import COMMANDS

    modules = [t.split(":")[0] for t in COMMANDS.values()] + [f"sslseg.objectives.{o}" for o in objectives.available()]
    for name in dict.fromkeys(modules):
        try:
            importlib.import_module(name)
        except Exception as e:  # a module that cannot import here fails in its own job, cold
            print(f"warm: not preloaded: {name}: {e}", flush=True)


def _die_with_server(server: int) -> None:
    """Linux: the kernel kills this child if the server dies (PR_SET_PDEATHSIG), so a crashed
    server never leaves a job running that Snakemake believes failed, to collide with its rerun."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != server:  # it died before the line above took effect
        os._exit(1)


def _child(request: dict, fds: list[int], inherited: list, server: int) -> None:
    """In the forked child: become the job's process, run the command, exit with its status.
    `inherited`: the server's sockets, selector and lock file, which the job must not hold."""
    try:
        _die_with_server(server)
        for obj in inherited:
            os.close(obj if isinstance(obj, int) else obj.fileno())
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has them
        os.setsid()  # the job's own process group, apart from the server's
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin, sys.stdout, sys.stderr = (open(0, "r", closefd=False), open(1, "w", closefd=False),
                                             open(2, "w", closefd=False))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [str(PACKAGE / "__main__.py"), *request["argv"]]
        from sslseg.cli import main

        code = 0
        try:
            main(list(request["argv"]), warm=False)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 128 + signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        import atexit
        import threading

        # what the interpreter does at the end of a job's own process: join non-daemon threads,
        # run the exit handlers, flush
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A client's request and its stdin/stdout/stderr; a client that stalls for 5 s is dropped
    (the server is one thread: it must not wait on one client)."""
    conn.settimeout(5.0)
    head, fds, _, _ = socket.recv_fds(conn, 8 + 65536, 3)
    while len(head) < 8:
        more = conn.recv(8 - len(head))
        if not more:
            raise ConnectionError("client closed")
        head += more
    size = int.from_bytes(head[:8], "big")
    body = bytearray(head[8:])
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("client closed")
        body += chunk
    conn.settimeout(None)
    if len(fds) != 3:
        raise ConnectionError("no stdin/stdout/stderr passed")
    return json.loads(body), fds


def _send(conn: socket.socket, message: dict) -> bool:
    """Send one line; False when the client is gone (its job is then killed, never its server)."""
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
        return True
    except OSError:
        return False


def _safe_to_fork() -> str | None:
    """Why forking jobs from this process would be unsafe, or None: a CUDA context does not
    survive fork, and a Python thread (holding a lock, say) would not be in the child."""
    import threading

    import torch

    if torch.cuda.is_initialized():
        return "CUDA was initialised while importing the stages"
    if threading.active_count() > 1:
        return f"{threading.active_count() - 1} Python thread(s) started while importing the stages"
    return None


def serve(path: str, idle_s: float = IDLE_S) -> None:
    """Accept jobs on the socket `path` until IDLE_S seconds pass with none running. Once a
    source file it imported changes, it takes no new job (they run cold: the next one starts a
    fresh server) and exits when its running jobs have ended."""
    import fcntl

    lock = open(path + ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another server for this socket is starting or running
    _preload()
    files = _loaded_files()
    unsafe = _safe_to_fork()
    if unsafe:  # jobs run cold, and start no server again until the code changes
        print(f"warm: not serving: {unsafe}", flush=True)
        Path(path + ".refused").write_text(unsafe + "\n")
        return
    Path(path + ".refused").unlink(missing_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # we hold the lock: a socket file left here belongs to a dead server
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    jobs: dict[int, socket.socket] = {}  # child pid → its client's connection
    started: dict[int, tuple[float, str]] = {}  # child pid → (start, command), for the log
    last, accepting, server = time.monotonic(), True, os.getpid()

    def stop_accepting() -> None:
        """No new job: the socket's name goes (new clients start their own server, or run cold),
        and clients already queued on it are told to run cold."""
        nonlocal accepting
        if not accepting:
            return
        accepting = False
        if os.path.exists(path):
            os.unlink(path)
        sel.unregister(listener)
        listener.setblocking(False)
        while True:
            try:
                queued, _ = listener.accept()
            except (BlockingIOError, OSError):
                break
            _send(queued, {"stale": True})
            queued.close()
        listener.close()

    print(f"warm: serving {path} (pid {os.getpid()}, {len(files)} sslseg modules)", flush=True)
    try:
        while jobs or (accepting and time.monotonic() - last < idle_s and PACKAGE.is_dir()):
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is listener:
                    conn = None
                    try:
                        conn, _ = listener.accept()
                        if _peer_uid(conn) != os.getuid():
                            raise ConnectionError("another user's client")
                        request, fds = _receive(conn)
                    except (ConnectionError, ValueError, OSError):
                        if conn is not None:
                            conn.close()
                        continue
                    changed = _stale(files)
                    if changed:
                        print(f"warm: {changed} changed since it was imported; no new jobs, exiting after "
                              f"{len(jobs)} running", flush=True)
                        _send(conn, {"stale": True})
                        conn.close()
                        for fd in fds:
                            os.close(fd)
                        stop_accepting()
                        break
                    pid = os.fork()
                    if pid == 0:
                        _child(request, fds, [listener, conn, *jobs.values(), sel.fileno(), lock], server)
                    for fd in fds:
                        os.close(fd)
                    jobs[pid] = conn
                    started[pid] = (time.monotonic(), request["argv"][0])
                    sel.register(conn, selectors.EVENT_READ, pid)
                    if not _send(conn, {"pid": pid}):
                        _kill(pid, signal.SIGKILL)  # the client gave up: its job must not run unseen
                else:  # a client sends nothing after its request: readable means it is gone
                    sel.unregister(key.fileobj)
                    _kill(key.data, signal.SIGKILL)
            for pid in list(jobs):
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    conn = jobs.pop(pid)
                    code = os.waitstatus_to_exitcode(status)
                    t0, command = started.pop(pid)
                    # the job's own CPU (what its Snakemake benchmark file cannot see): sslseg.bench reads it
                    print(f"warm: job {pid} {command} status {code} cpu_s {usage.ru_utime + usage.ru_stime:.3f} "
                          f"wall_s {time.monotonic() - t0:.3f} maxrss_mb {usage.ru_maxrss / 1024:.0f}", flush=True)
                    _send(conn, {"status": code})
                    try:
                        sel.unregister(conn)
                    except (KeyError, ValueError):
                        pass
                    conn.close()
                    last = time.monotonic()
        stop_accepting()
    finally:
        if accepting and os.path.exists(path):
            os.unlink(path)
        print("warm: exiting", flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else IDLE_S)
