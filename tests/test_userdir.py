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

OTHER_UID = 54321  # a user id the test pretends to be, so the folders it made belong to "someone else"


def test_the_folder_is_made_for_this_user_alone_and_found_again(tmp_path):
    path = private_dir(str(tmp_path))
    assert path == str(tmp_path / f"sslseg-{os.getuid()}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert private_dir(str(tmp_path)) == path  # every job of the user finds the same one


def test_another_users_folder_at_the_name_is_refused(tmp_path, monkeypatch):
    (tmp_path / f"sslseg-{OTHER_UID}").mkdir(mode=0o700)  # made by "someone else": us, not OTHER_UID
    monkeypatch.setattr(os, "getuid", lambda: OTHER_UID)
    with pytest.raises(NotPrivate, match=f"sslseg-{OTHER_UID} belongs to user id .*, not to you"):
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
    (tmp_path / f"sslseg-{OTHER_UID}").mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(warm.tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.setattr(os, "getuid", lambda: OTHER_UID)
    started = []
    monkeypatch.setattr(warm, "start_server", started.append)
    assert warm.run(["finetune"]) is None  # the job runs in its own process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warm start is off" in err[0] and f"sslseg-{OTHER_UID}" in err[0], err
    assert started == [] and not list((tmp_path / f"sslseg-{OTHER_UID}").iterdir())  # nothing put there


def test_a_squatted_lock_folder_stops_the_gpu_claim_naming_the_fix(tmp_path, monkeypatch):
    (tmp_path / f"sslseg-{OTHER_UID}").mkdir(mode=0o700)
    monkeypatch.setattr(gpus, "LOCK_BASE", str(tmp_path))
    monkeypatch.setattr(gpus, "_held", [])
    monkeypatch.setattr(os, "getuid", lambda: OTHER_UID)
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
