"""Dataset readers against what real downloads hold: macOS zip debris, empty files, bad archives."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import pytest

from conftest import need_shared
from sslseg.data.sources import INTEL_CLASSES
from test_errors import one_line_error, sslseg

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # an AppleDouble header: not an image


def pack_names(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [n.decode() if isinstance(n, bytes) else n for n in f["names"][()]]


def warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("sslseg: skipped")]


@pytest.fixture
def imagenet_sample(tmp_path: Path) -> Path:
    """Five classes of the real ImageNet sample in `<wnid>/*.JPEG` layout (one image each)."""
    src = need_shared() / "imagenet-sample"
    dst = tmp_path / "imagenet"
    for wnid in sorted(p.name for p in src.iterdir() if p.is_dir())[:5]:
        shutil.copytree(src / wnid, dst / wnid)
    return dst


def test_pretrain_pack_skips_macos_metadata_and_empty_files(imagenet_sample, tmp_path):
    real = sorted(p.relative_to(imagenet_sample).as_posix() for p in imagenet_sample.rglob("*") if p.is_file())
    assert len(real) == 5
    first, second = sorted(p for p in imagenet_sample.iterdir())[:2]
    (first / f"._{first.name}_1.JPEG").write_bytes(APPLEDOUBLE)  # what a Mac leaves beside each file
    (second / f"._{second.name}_2.JPEG").write_bytes(APPLEDOUBLE)
    (imagenet_sample / "__MACOSX" / first.name).mkdir(parents=True)  # what a Mac-made zip unpacks to
    (imagenet_sample / "__MACOSX" / first.name / f"._{first.name}_1.JPEG").write_bytes(APPLEDOUBLE)
    (second / f"{second.name}_9.JPEG").write_bytes(b"")  # an interrupted copy
    out = tmp_path / "pretrain.h5"
    proc = sslseg("pack_pretrain", "--root", str(imagenet_sample), "--out", str(out), "--settings",
                  json.dumps({"source": "folder", "download": False, "subset": "random", "subset_seed": 0,
                              "size": 5, "pack_size": 32, "resize": "whole"}))
    assert proc.returncode == 0, proc.stderr
    assert sorted(pack_names(out)) == real
    assert warnings(proc.stderr) == [
        f"sslseg: skipped 4 files below {imagenet_sample}: 3 macOS '._' metadata files, 1 empty file"]


def test_intermediate_pack_gives_no_class_to_macosx_or_hidden_folders(tmp_path):
    src = need_shared() / "intel-scenes" / "seg_train"
    root = tmp_path / "seg_train"
    for cls in INTEL_CLASSES:
        (root / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[:2]:
            shutil.copy(f, root / cls)
    (root / "__MACOSX" / "sea").mkdir(parents=True)
    (root / "__MACOSX" / "sea" / "._1.jpg").write_bytes(APPLEDOUBLE)
    (root / ".ipynb_checkpoints").mkdir()  # a real image in a hidden folder: not a class either
    shutil.copy(next((src / "sea").iterdir()), root / ".ipynb_checkpoints" / "copy.jpg")
    out = tmp_path / "intel.h5"
    proc = sslseg("pack_intermediate", "--root", str(root), "--out", str(out),
                  "--settings", json.dumps({"pack_size": 32}))
    assert proc.returncode == 0, proc.stderr
    names = pack_names(out)
    assert len(names) == 12 and {n.split("/")[0] for n in names} == set(INTEL_CLASSES)
    assert warnings(proc.stderr) == [
        f"sslseg: skipped 2 files below {root}: 1 macOS '._' metadata file, 1 image in a hidden or __MACOSX folder"]


def test_a_folder_of_only_metadata_files_is_one_line_error(tmp_path):
    (tmp_path / "pool" / "sea").mkdir(parents=True)
    (tmp_path / "pool" / "sea" / "._a.JPEG").write_bytes(APPLEDOUBLE)
    proc = sslseg("pack_intermediate", "--root", str(tmp_path / "pool"), "--out", str(tmp_path / "x.h5"),
                  "--settings", json.dumps({"pack_size": 32}))
    one_line_error(proc, "no images", "skipped 1 file: 1 macOS '._' metadata file")
    assert proc.returncode == 2 and not (tmp_path / "x.h5").exists()


def intel_zip(path: Path, splits: tuple[str, ...] = ("seg_train", "seg_test"), macosx: bool = False) -> Path:
    """A small archive in Kaggle's nested layout (seg_train/seg_train/<class>/), from the real sample."""
    src = need_shared() / "intel-scenes"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for split in splits:
            for cls in INTEL_CLASSES:
                for f in sorted((src / split / cls).iterdir())[:2]:
                    if macosx:  # a Mac-made zip: an AppleDouble twin of every file under __MACOSX/
                        z.writestr(f"__MACOSX/{split}/{split}/{cls}/._{f.name}", APPLEDOUBLE)
                    z.write(f, f"{split}/{split}/{cls}/{f.name}")
    return path


def corrupt_first_member(path: Path) -> Path:
    """Overwrite the first member's deflate data with 0xFF (an invalid block type): the central
    directory still reads, so the damage shows only while extracting (zlib.error)."""
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    data = bytearray(path.read_bytes())
    at = info.header_offset  # local header: 30 fixed bytes, then the name and extra field (lengths at 26, 28)
    start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
    data[start:start + info.compress_size] = b"\xff" * info.compress_size
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", ["garbage", "truncated", "corrupt_member", "no_seg_train", "no_seg_test"])
def test_bad_intel_archive_is_one_line_and_leaves_nothing(tmp_path, damage):
    archive = tmp_path / "archive.zip"
    if damage == "garbage":
        archive.write_bytes(b"PK\x03\x04" + b"not really a zip" * 100)
    elif damage == "truncated":  # an interrupted download: the central directory at the end is gone
        data = intel_zip(archive).read_bytes()
        archive.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt_member":
        corrupt_first_member(intel_zip(archive))
    elif damage == "no_seg_train":
        intel_zip(archive, ("seg_test",))
    else:  # seg_train is fine, seg_test missing: neither may land in --out
        intel_zip(archive, ("seg_train",))
    out = tmp_path / "results" / "intel"
    out.mkdir(parents=True)  # Snakemake makes the output's folder before the job runs
    proc = sslseg("extract_intel", "--archive", str(archive), "--out", str(out))
    line = one_line_error(proc, str(archive), "download it again")
    assert proc.returncode == 2, line
    assert not list(out.parent.glob("*.partial")), list(out.parent.iterdir())
    assert not list(out.iterdir())  # no half output either


def test_mac_made_intel_archive_extracts_the_real_folders(tmp_path):
    archive = intel_zip(tmp_path / "archive.zip", macosx=True)
    out = tmp_path / "intel"
    proc = sslseg("extract_intel", "--archive", str(archive), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for split in ("seg_train", "seg_test"):  # not __MACOSX/seg_train/, which sorts first
        files = sorted(p.name for p in (out / split).rglob("*") if p.is_file())
        assert len(files) == 12 and not any(f.startswith("._") for f in files), files
    assert not (tmp_path / "intel.partial").exists()
