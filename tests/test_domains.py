"""Pretraining subsets by class domain (seed 003): in-domain, out-of-domain, 50/50 mixed.

On the real ImageNet sample (one image for each of the 1,000 classes: 398 animals, 602
not) and on small generated wnid folders for the edge cases."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, need_shared
from sslseg.data import domains, sources
from sslseg.io import UserError

FIRST, LAST, NEXT = "n01440764", "n02655020", "n02666196"  # tench, puffer (index 397), abacus (398)


def make_pool(root: Path, counts: dict[str, int]) -> Path:
    """`root/<wnid>/<wnid>_<i>.png`: tiny real PNGs, `counts[wnid]` per folder."""
    for wnid, n in counts.items():
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (i * 10 % 256, 0, 0)).save(root / wnid / f"{wnid}_{i}.png")
    return root


def write_list(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def inside(records: list[sources.Record], classes: domains.ClassList) -> list[bool]:
    return [domains.class_of(r) in classes.names for r in records]


@pytest.fixture(scope="module")
def imagenet() -> list[sources.Record]:
    return sources.image_folder(need_shared() / "imagenet-sample")


# --- the shipped class list ------------------------------------------------------------------

def test_shipped_list_is_imagenets_first_398_classes_with_a_derivation_header():
    text = domains.ANIMALS.read_text()
    entries = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    entries = [e for e in entries if e]
    assert len(entries) == len(set(entries)) == 398
    assert all(re.fullmatch(r"n\d{8}", e) for e in entries)
    assert entries == sorted(entries) and (entries[0], entries[-1]) == (FIRST, LAST)
    header = text.split(f"\n{FIRST}", 1)[0]
    assert all(ln.startswith("#") or not ln.strip() for ln in header.splitlines())
    for needle in ("398", "0-397", "sorted", FIRST, LAST, "imagenet-sample"):
        assert needle in header, needle
    assert domains.read_class_list().names == frozenset(entries)
    assert domains.read_class_list("").path == domains.ANIMALS.resolve()


def test_shipped_list_matches_the_real_sample_and_holds_no_non_animal():
    root = need_shared() / "imagenet-sample"
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(wnids) == 1000  # the sample has every class, so it fixes the standard order
    animals = domains.read_class_list().names
    assert sorted(animals) == wnids[:398] and wnids[397] == LAST and wnids[398] == NEXT
    # the class names in the sample's file names: the boundary and the look-alikes out of the list
    name = {w: next((root / w).iterdir()).stem.split("_", 1)[1] for w in wnids}
    assert (name[FIRST], name[LAST], name[NEXT]) == ("tench", "puffer", "abacus")
    for wnid, word in (("n02704792", "amphibian"), ("n03126707", "crane"), ("n03793489", "mouse"),
                       ("n09835506", "ballplayer"), ("n13054560", "bolete")):
        assert name[wnid] == word and wnid not in animals  # a vehicle, a machine, a device, a person, a fungus
    for wnid, word in (("n02012849", "crane"), ("n01704323", "triceratops"), ("n01914609", "sea_anemone")):
        assert name[wnid] == word and wnid in animals  # the bird, an extinct reptile, a cnidarian


def test_shipped_list_is_package_data():
    """The list must travel with a wheel install, not only with a source checkout."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = conf.get("package-data", {}).get("sslseg.data", []) + conf.get("package-data", {}).get("*", [])
    assert any(fnmatch.fnmatch(domains.ANIMALS.name, p) for p in patterns), (
        'pyproject.toml needs [tool.setuptools.package-data] "sslseg.data" = ["*.txt"]')


# --- subsets on the real sample ---------------------------------------------------------------

@pytest.mark.parametrize("size", [100, 101])
def test_real_sample_domains_are_pure_equal_sized_nested_and_seeded(imagenet, size):
    animals = domains.read_class_list()
    subsets = {}
    for mode in domains.MODES:
        small = sources.subset_records(imagenet, size, 0, mode)
        large = sources.subset_records(imagenet, 300, 0, mode)
        assert len(small) == size and len(large) == 300
        assert small == large[:size]  # nested: the pack holds the largest size, stages take a prefix
        assert sources.subset_records(imagenet, size, 0, mode) == small  # deterministic
        assert sources.subset_records(imagenet, size, 1, mode) != small  # the seed draws
        assert len(set(small)) == size
        subsets[mode] = large
    assert all(inside(subsets["in_domain"], animals))
    assert not any(inside(subsets["out_domain"], animals))
    flags = inside(subsets["mixed"], animals)
    assert flags[0::2] == [True] * 150 and flags[1::2] == [False] * 150  # interleaved: every prefix ~50/50
    mixed = sources.subset_records(imagenet, size, 0, "mixed")
    assert sum(inside(mixed, animals)) == (size + 1) // 2  # an odd size: the in-domain side has the extra one
    # one generator for every mode: the settings differ only in the mix, not in which images of a domain
    assert mixed[0::2] == subsets["in_domain"][:(size + 1) // 2]
    assert mixed[1::2] == subsets["out_domain"][:size // 2]


def test_real_sample_sizes_beyond_a_domain_are_one_line_errors(imagenet):
    assert len(sources.subset_records(imagenet, 398, 0, "in_domain")) == 398
    assert len(sources.subset_records(imagenet, 602, 0, "out_domain")) == 602
    assert len(sources.subset_records(imagenet, 796, 0, "mixed")) == 796  # 398 + 398
    cases = {("in_domain", 399): "grid.pretrain_sizes: 399 is larger than the 398 in-domain images",
             ("out_domain", 603): "grid.pretrain_sizes: 603 is larger than the 602 out-of-domain images",
             ("mixed", 797): "grid.pretrain_sizes: 797 mixed needs 399 in-domain and 398 out-of-domain"}
    for (mode, size), message in cases.items():
        with pytest.raises(UserError) as e:
            sources.subset_records(imagenet, size, 0, mode)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
        assert "data.pretrain.domain_classes" in str(e.value) and "398" in str(e.value)


def test_random_and_stratified_are_unchanged(imagenet):
    order = np.random.default_rng(3).permutation(len(imagenet))[:40]
    assert sources.subset_records(imagenet, 40, 3, "random") == [imagenet[i] for i in order]
    bogus = domains.ClassList(Path("/nowhere"), frozenset())  # a class list is ignored by these modes
    for mode in ("random", "stratified"):
        assert sources.subset_records(imagenet, 40, 3, mode, bogus) == sources.subset_records(imagenet, 40, 3, mode)
    with pytest.raises(UserError, match="use one of random, stratified, in_domain, out_domain, mixed"):
        sources.subset_records(imagenet, 40, 3, "animals")


# --- edge cases on generated folders ----------------------------------------------------------

def test_class_list_format_comments_and_errors(tmp_path):
    listed = write_list(tmp_path / "list.txt", "# header", "", "n00000001  # a trailing comment", "  n00000002",
                        "n00000001")
    assert domains.read_class_list(listed).names == {"n00000001", "n00000002"}
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81")
    write_list(tmp_path / "comments.txt", "# nothing", "   ")
    for path, message in ((tmp_path / "missing.txt", "class list not found"),
                          (tmp_path / "folder", "cannot read the class list"),
                          (tmp_path / "binary.txt", "cannot read the class list"),
                          (tmp_path / "comments.txt", "names no classes")):
        with pytest.raises(UserError) as e:
            domains.read_class_list(path)
        text = str(e.value)
        assert text.startswith(f"data.pretrain.domain_classes: {path}") and message in text and "\n" not in text


def test_a_list_that_leaves_a_domain_empty_is_an_error(tmp_path):
    records = sources.image_folder(make_pool(tmp_path / "pool", {"n00000001": 2, "n00000002": 2, "n00000003": 2}))
    none = domains.read_class_list(write_list(tmp_path / "none.txt", "tench", "goldfish"))
    every = domains.read_class_list(write_list(tmp_path / "every.txt", "n00000001", "n00000002", "n00000003"))
    for mode in domains.MODES:  # even out_domain: a list that matches nothing does not describe the pool
        with pytest.raises(UserError, match=r"^data\.pretrain\.domain_classes: none of the 3 class folders "
                                            r".*'n00000001'.*in-domain subset would be empty"):
            sources.subset_records(records, 2, 0, mode, none)
        with pytest.raises(UserError, match=r"^data\.pretrain\.domain_classes: all 3 class folders .*"
                                            r"out-of-domain subset would be empty"):
            sources.subset_records(records, 2, 0, mode, every)


def test_mixed_odd_sizes_and_unbalanced_pools(tmp_path):
    records = sources.image_folder(make_pool(tmp_path / "pool", {"n00000001": 5, "n00000002": 2, "n00000003": 1}))
    classes = domains.read_class_list(write_list(tmp_path / "list.txt", "n00000001", "n00000002"))  # 7 in, 1 out
    for size in (1, 2, 3):
        flags = inside(sources.subset_records(records, size, 0, "mixed", classes), classes)
        assert flags == [True, False, True][:size]
    with pytest.raises(UserError, match=r"^grid\.pretrain_sizes: 4 mixed needs 2 in-domain and 2 out-of-domain images "
                                        r"but the pretraining pool has 7 and 1 .*mixed allows at most 3; "
                                        r"the largest size all three domain subsets allow is 1"):
        sources.subset_records(records, 4, 0, "mixed", classes)
    with pytest.raises(UserError, match=r"^grid\.pretrain_sizes: 2 is larger than the 1 out-of-domain images"):
        sources.subset_records(records, 2, 0, "out_domain", classes)
    assert len(sources.subset_records(records, 7, 0, "in_domain", classes)) == 7


def test_pack_records_the_list_and_images_per_domain(tmp_path):
    from sslseg.stages.data import pack_pretrain

    root = make_pool(tmp_path / "pool", {"n00000001": 4, "n00000002": 3, "n00000003": 4, "n00000004": 1})
    listed = write_list(tmp_path / "list.txt", "n00000001", "n00000002")
    base = {"source": "folder", "download": False, "subset_seed": 0, "pack_size": 8, "resize": "whole",
            "domain_classes": str(listed)}
    out = tmp_path / "mixed.h5"
    pack_pretrain(str(root), str(out), base | {"subset": "mixed", "size": 7})
    with h5py.File(out) as f:
        attrs = dict(f.attrs)
        names = [n.decode() for n in f["names"][()]]
    assert [n.split("/")[0] in ("n00000001", "n00000002") for n in names] == [True, False] * 3 + [True]
    assert (attrs["domain"], attrs["in_domain_images"], attrs["out_domain_images"]) == ("mixed", 4, 3)
    assert (attrs["pool_in_domain_images"], attrs["pool_out_domain_images"], attrs["domain_list_classes"]) == (7, 5, 2)
    assert attrs["domain_list"] == str(listed.resolve())
    assert set(attrs["in_domain_classes"]) <= {"n00000001", "n00000002"}
    assert set(attrs["out_domain_classes"]) <= {"n00000003", "n00000004"}
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["domains"]["in_domain_images"] == 4 and sidecar["domains"]["domain_list"] == str(listed.resolve())
    assert sidecar["domains"]["in_domain_classes"] == sorted(attrs["in_domain_classes"])

    pack_pretrain(str(root), str(tmp_path / "in.h5"), base | {"subset": "in_domain", "size": 5})
    with h5py.File(tmp_path / "in.h5") as f:
        assert f.attrs["out_domain_images"] == 0 and len(f.attrs["out_domain_classes"]) == 0
        assert f.attrs["out_domain_classes"].dtype.kind == "O"  # an empty list of strings, not of floats

    # the list is read only by the domain modes; a bad path fails before the folder is scanned
    pack_pretrain(str(root), str(tmp_path / "r.h5"), base | {"subset": "random", "size": 3, "domain_classes": "/no"})
    with pytest.raises(UserError, match=r"^data\.pretrain\.domain_classes: /no: class list not found"):
        pack_pretrain(str(tmp_path / "no-pool"), str(tmp_path / "x.h5"), base | {"subset": "mixed", "size": 2,
                                                                                 "domain_classes": "/no"})
    # "" (the schema's default) is the shipped animal list: these wnids are not in it
    with pytest.raises(UserError, match=r"^data\.pretrain\.domain_classes: none of the 4 class folders"):
        pack_pretrain(str(root), str(tmp_path / "y.h5"),
                      base | {"subset": "in_domain", "size": 2, "domain_classes": ""})
