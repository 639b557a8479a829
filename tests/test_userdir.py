"""The folder the warm-start socket and the GPU slot locks live in (sslseg/userdir.py): used only
when it is this user's alone, since whoever could write there could receive a job's environment
and open files, or hold a GPU's locks. Another user's folder at the name gets a one-line reason."""

from __future__ import annotations

import json
import os
import stat

import pytest

from sslseg import gpus, warm
from sslseg.userdir import NotPrivate, private_dir

OTHER_UID = 54321  # "someone else"


def squatted(monkeypatch, base) -> str:
    """Make base/sslseg-<uid> look like another user's folder (its lstat says OTHER_UID owns it),
    as a non-root test cannot chown. Returns its path."""
    path = os.path.join(str(base), f"sslseg-{os.getuid()}")
    os.mkdir(path, 0o700)
    real = os.lstat

    def lstat(p, *a, **k):
        st = real(p, *a, **k)
        if os.fspath(p) != path:
            return st
        fields = list(st)
        fields[stat.ST_UID] = OTHER_UID
        return os.stat_result(fields)

    monkeypatch.setattr(os, "lstat", lstat)
    return path


def test_the_folder_is_made_for_this_user_alone_and_found_again(tmp_path):
    path = private_dir(str(tmp_path))
    assert path == str(tmp_path / f"sslseg-{os.getuid()}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert private_dir(str(tmp_path)) == path  # every job of the user finds the same one


def test_another_users_folder_at_the_name_is_refused(tmp_path, monkeypatch):
    squatted(monkeypatch, tmp_path)
    with pytest.raises(NotPrivate, match=f"sslseg-{os.getuid()} belongs to user id {OTHER_UID}, not to you"):
        private_dir(str(tmp_path))


def test_a_link_or_a_folder_others_can_write_is_refused(tmp_path):
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    (tmp_path / f"sslseg-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(NotPrivate, match="not a folder"):
        private_dir(str(tmp_path))
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    (open_dir / f"sslseg-{os.getuid()}").mkdir()
    os.chmod(open_dir / f"sslseg-{os.getuid()}", 0o777)
    with pytest.raises(NotPrivate, match="written by other users .*mode 777"):
        private_dir(str(open_dir))


def test_a_squatted_folder_turns_warm_start_off_with_one_line(tmp_path, monkeypatch, capsys):
    folder = squatted(monkeypatch, tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(warm.tempfile, "tempdir", None)  # read TMPDIR again
    started = []
    monkeypatch.setattr(warm, "start_server", started.append)
    assert warm.run(["finetune"]) is None  # the job runs in its own process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warm start is off" in err[0] and f"{folder} belongs to user id {OTHER_UID}" in err[0], err
    assert started == [] and not os.listdir(folder)  # nothing put there


def test_a_squatted_lock_folder_stops_the_gpu_claim_naming_the_fix(tmp_path, monkeypatch):
    squatted(monkeypatch, tmp_path)
    monkeypatch.setattr(gpus, "LOCK_BASE", str(tmp_path))
    monkeypatch.setattr(gpus, "_held", [])
    environ = {"SSLSEG_GPU_SLOTS": json.dumps({"finetune": gpus.slots(4)}), "SSLSEG_GPU_COUNT": "1"}
    with pytest.raises(SystemExit, match="belongs to user id .*set SSLSEG_GPU_LOCKS to a folder of your own"):
        gpus.claim("finetune", environ)
    assert "CUDA_VISIBLE_DEVICES" not in environ


def test_the_gpu_locks_default_to_the_private_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus, "LOCK_BASE", str(tmp_path))
    monkeypatch.setattr(gpus, "_held", [])
    environ = {"SSLSEG_GPU_SLOTS": json.dumps({"finetune": gpus.slots(4)}), "SSLSEG_GPU_COUNT": "1"}
    try:
        assert gpus.claim("finetune", environ) == "0"
        locks = tmp_path / f"sslseg-{os.getuid()}" / "gpus"
        assert (locks / "claim.lock").exists() and stat.S_IMODE(os.stat(locks.parent).st_mode) == 0o700
    finally:
        for fd in gpus._held:
            os.close(fd)


def test_a_folder_in_a_shared_folder_without_the_sticky_bit_is_refused(tmp_path):
    """In a folder every user can write to, only the sticky bit (as /tmp has) stops them from
    renaming ours away and putting their own in its place."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(NotPrivate, match="lacks the sticky bit"):
        private_dir(str(shared))
    os.chmod(shared, 0o1777)
    assert private_dir(str(shared)) == str(shared / f"sslseg-{os.getuid()}")


def test_the_folder_is_0700_whatever_the_umask(tmp_path):
    old = os.umask(0o277)  # would leave mkdir's 0700 as 0400: not even ours to enter
    try:
        path = private_dir(str(tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_a_socket_path_too_long_turns_warm_start_off_with_one_line(tmp_path, monkeypatch, capsys):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(warm.tempfile, "tempdir", None)
    started = []
    monkeypatch.setattr(warm, "start_server", started.append)
    assert warm.run(["finetune"]) is None and started == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warm start is off" in err[0] and "set TMPDIR to a shorter folder" in err[0], err
