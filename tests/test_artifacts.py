"""How artifacts are written: the umask's permissions, and write failures as one line naming the output."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from sslseg.io import UserError, atomic_path, write_json


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_an_artifact_gets_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mask, mode):
    umask(mask)
    write_json(tmp_path / "m.json", {"miou": 0.5})
    (tmp_path / "plain").write_text("x")
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == mode == (tmp_path / "plain").stat().st_mode & 0o777


def test_a_failed_write_names_the_output_not_the_temp_file(tmp_path):
    (tmp_path / "metrics.json").mkdir()  # the output path is taken by a folder
    with pytest.raises(UserError, match=r"metrics.json: cannot write \(Is a directory\)"):
        write_json(tmp_path / "metrics.json", {})
    with pytest.raises(UserError, match=r"model.pt: cannot write \(No space left on device\)"):
        with atomic_path(tmp_path / "model.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_an_input_error_inside_the_write_keeps_its_own_message(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "pack.h5"):
            open(tmp_path / "missing.jpg")
    assert not (tmp_path / "pack.h5").exists()


def test_the_cli_checks_its_outputs_before_any_work(tmp_path):
    np.savetxt(tmp_path / "pool.txt", np.arange(30), fmt="%d")
    (tmp_path / "taken").write_text("a file where a folder should be")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "sslseg", "subset", "--pool", str(tmp_path / "missing.txt"),
                           "--out", str(tmp_path / "taken" / "s.txt"), "--size", "4", "--seed", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    # the unwritable output is reported, not the missing input the work would have hit first
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"sslseg subset: error: {tmp_path / 'taken' / 's.txt'}: cannot write here, {tmp_path / 'taken'} is a file, "
        "not a folder; choose another output path"]
