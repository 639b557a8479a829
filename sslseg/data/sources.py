"""Readers for the datasets in their official on-disk layouts.

Every reader returns a list of `Record`s: a lazily decoded image (and trimap or
label). The pack stage decodes them once; nothing else touches JPEGs.
"""

from __future__ import annotations

import stat
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from sslseg.data import domains
from sslseg.io import Output, UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
INTEL_CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
PET_URL_HINT = "https://www.robots.ox.ac.uk/~vgg/data/pets/ (or set data.pets.download: true)"


@dataclass(frozen=True)
class Record:
    name: str
    image: Path
    trimap: Path | None = None
    label: int = -1


def open_rgb(path: Path) -> Image.Image:
    """Decode an image fully (so a truncated file fails here, naming the file)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt or unreadable image ({e}); remove or replace the file") from None


def open_trimap(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Read an Oxford trimap (1 pet, 2 background, 3 border) as classes 0/1/2."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.size != size:
                raise UserError(
                    f"{path}: trimap is {im.size[0]}x{im.size[1]} but its image is {size[0]}x{size[1]}; "
                    "the pair does not match, re-extract the annotations"
                )
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "P") else im, dtype=np.uint8)
    except (OSError, SyntaxError) as e:
        raise UserError(f"{path}: corrupt or unreadable trimap ({e}); remove or replace the file") from None
    bad = ~np.isin(arr, (1, 2, 3))
    if bad.any():
        raise UserError(
            f"{path}: trimap has values {sorted(set(np.unique(arr[bad]).tolist()))[:5]} outside 1-3 "
            "(1 pet, 2 background, 3 border); is this an Oxford-IIIT Pet trimap?"
        )
    return arr - 1


def oxford_pets(root: str | Path, download: bool = False, key: str = "data.pets.root") -> list[Record]:
    """All Oxford-IIIT Pet images with trimaps (trainval then test list), via torchvision.

    `root` is the folder holding `oxford-iiit-pet/` (torchvision's convention) or
    that folder itself. The official split is ignored downstream (see splits.py).
    `key`: the setting or flag that gave `root`, named in the error when nothing is there.
    """
    from torchvision.datasets import OxfordIIITPet

    root = Path(root)
    if root.name == "oxford-iiit-pet":
        root = root.parent
    annotations = root / "oxford-iiit-pet" / "annotations"
    lists = [annotations / f"{split}.txt" for split in ("trainval", "test")]
    if not download and not lists[0].exists():
        if (root / "oxford-iiit-pet" / "images").is_dir() and (annotations / "trimaps").is_dir():
            raise UserError(f"{lists[0]}: missing (the list files trainval.txt and test.txt name the pets); "
                            "re-extract annotations.tar.gz")
        raise UserError(
            f"{root / 'oxford-iiit-pet'}: no Oxford-IIIT Pet here (expected images/ and annotations/); "
            f"get it from {PET_URL_HINT} and set {key}"
        )
    if all(path.exists() for path in lists) or not download:  # (a download brings the official lists)
        check_pet_lists(lists)
    records: list[Record] = []
    for split in ("trainval", "test"):
        try:
            ds = OxfordIIITPet(str(root), split=split, target_types="segmentation", download=download)
        except RuntimeError as e:
            raise UserError(f"{root / 'oxford-iiit-pet'}: {e}; set data.pets.download: true or fetch it by hand") from None
        for image, seg in zip(ds._images, ds._segs):
            records.append(Record(Path(image).stem, Path(image), Path(seg)))
    missing = [r.image for r in records if not r.image.exists()] + [r.trimap for r in records if not r.trimap.exists()]
    if missing:
        raise UserError(f"{missing[0]}: listed in the annotations but missing ({len(missing)} files); re-extract the dataset")
    if not records:
        raise UserError(f"{root / 'oxford-iiit-pet'}: the list files name no images")
    return records


def check_pet_lists(lists: Sequence[Path]) -> None:
    """The Oxford list files as the official ones are: each present, one pet per line (name, class
    id, species, breed id), no pet twice. torchvision would stop on a blank line with a traceback,
    and a pet listed twice would be packed twice, so it could be drawn into the test set and into
    a fine-tune subset at once."""
    seen: dict[str, str] = {}
    for path in lists:
        if not path.exists():
            raise UserError(f"{path}: missing (the list files trainval.txt and test.txt name the pets); "
                            "re-extract annotations.tar.gz")
        for i, line in enumerate(path.read_text().splitlines(), 1):
            fields = line.split()
            if len(fields) != 4:
                raise UserError(f"{path}:{i}: {len(fields)} fields where the list has 4 (name, class id, species, "
                                "breed id); fix or delete the line")
            if fields[0] in seen:
                raise UserError(f"{path}:{i}: {fields[0]} is listed again (first at {seen[fields[0]]}); "
                                "delete one, or it would be packed twice")
            seen[fields[0]] = f"{path.name}:{i}"


HINTS = {
    "pretrain": "ImageNet cannot be downloaded automatically: get ILSVRC2012_img_train.tar from "
                "https://image-net.org/download (login), extract it to <root>/<wnid>/*.JPEG and set "
                "data.pretrain.root, or set data.pretrain.source: imagenette",
    "intermediate": "get Intel Image Classification from https://www.kaggle.com/datasets/puneet6060/"
                    "intel-image-classification and unzip it so that <root>/seg_train/<class>/ exists, or set "
                    "data.intermediate.archive to the downloaded archive.zip",
}


def image_folder(root: str | Path, classes: Sequence[str] | None = None, hint: str = "") -> list[Record]:
    """Every image below `root` (ImageNet's `<wnid>/*.JPEG` layout or any tree), sorted.

    The label is the index of the image's parent folder in `classes` (default: all
    parent folders, sorted), which is the class for ImageNet and Intel layouts.
    """
    root = Path(root)
    hint = f"; {hint}" if hint else "; set the config's data root to a folder of images"
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found{hint}")
    paths, skipped = _list_images(root)
    if not paths:
        note = f" (skipped {_describe(skipped)})" if skipped else ""
        raise UserError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below this folder{note}{hint}")
    folder = {p: p.parent.relative_to(root).as_posix() for p in paths}
    classes = list(classes) if classes else sorted(set(folder.values()))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(folder.values()) - set(index))
    if unknown:
        raise UserError(f"{root}: folder {unknown[0]!r} is not one of the expected classes {classes}")
    empty = [c for c in classes if c not in set(folder.values())]
    if empty:  # a classifier of len(classes) ways that never sees one of them
        raise UserError(f"{root / empty[0]}: no images of class {empty[0]!r} (expected one folder per class: "
                        f"{', '.join(classes)}){hint}")
    if skipped:  # after the checks above, so an error stays the only line on stderr
        print(f"sslseg: skipped {_describe(skipped, f' below {root}')}", file=sys.stderr)
    return [Record(p.relative_to(root).as_posix(), p, None, index[folder[p]]) for p in paths]


# Why a file that looks like an image is left out: (singular, plural) for the warning.
SKIP_REASONS = {
    "appledouble": ("macOS '._' metadata file", "macOS '._' metadata files"),
    "hidden": ("image in a hidden or __MACOSX folder", "images in hidden or __MACOSX folders"),
    "empty": ("empty file", "empty files"),
}


def junk_folder(parts: Sequence[str]) -> bool:
    """A path inside `__MACOSX/` (zip metadata from macOS) or a hidden folder."""
    return any(d == "__MACOSX" or d.startswith(".") for d in parts)


def _list_images(root: Path) -> tuple[list[Path], Counter[str]]:
    """The image files below `root`, sorted, and a count of those skipped by reason.

    Archives unpacked from macOS carry `._<name>.JPEG` AppleDouble files and `__MACOSX/`
    trees, and interrupted copies leave zero-byte files: all look like images by name
    but fail to decode, which would stop a pack hours in, so they are left out here."""
    paths: list[Path] = []
    skipped: Counter[str] = Counter()
    for p in root.rglob("*"):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            st = p.stat()
        except OSError:  # a dangling link: nothing to read, as before skipped silently
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if p.name.startswith("._"):
            skipped["appledouble"] += 1
        elif junk_folder(p.relative_to(root).parts[:-1]):
            skipped["hidden"] += 1  # else the folder would become a class (.ipynb_checkpoints too)
        elif st.st_size == 0:
            skipped["empty"] += 1
        else:
            paths.append(p)
    return sorted(paths), skipped


def _describe(skipped: Counter[str], where: str = "") -> str:
    """'3 files<where>: 2 macOS '._' metadata files, 1 empty file', reasons in a fixed order (not listing order)."""
    total = sum(skipped.values())
    parts = [f"{skipped[k]} {names[skipped[k] != 1]}" for k, names in SKIP_REASONS.items() if skipped[k]]
    return f"{total} file{'s' if total != 1 else ''}{where}: " + ", ".join(parts)


def imagenette(root: str | Path, download: bool = False) -> Path:
    """Imagenette (10 ImageNet classes, 160 px) through torchvision's downloader, which
    verifies the archive's MD5. Returns the train folder (`<wnid>/*.JPEG`)."""
    from torchvision.datasets import Imagenette

    try:
        ds = Imagenette(str(root), split="train", size="160px", download=download)
    except RuntimeError as e:
        raise UserError(f"{root}: {e}; set data.pretrain.download: true to fetch Imagenette (~100 MB)") from None
    return Path(ds._image_root)


def extract_intel(archive: str, out: Output) -> Path:
    """Unpack Kaggle's Intel archive (which nests seg_train/seg_train/<class>/) into
    `out/seg_train/<class>/` and `out/seg_test/<class>/`. Kaggle publishes no
    checksum, so none is verified; class folders are checked instead."""
    import errno
    import shutil
    import zipfile
    import zlib

    archive, dest = Path(archive), Path(out)
    if not archive.is_file():
        raise UserError(f"{archive}: archive not found; {HINTS['intermediate']}")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # whatever fails (bad archive, full disk, Ctrl-C), no .partial tree is left beside `out`
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except OSError as e:
            if e.filename == str(archive):  # the archive itself cannot be opened
                raise UserError(f"{archive}: cannot read the archive ({e.strerror})") from None
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):  # the disk, not the archive
                raise UserError(f"{archive}: cannot extract into {tmp.parent} ({e.strerror}); free space or "
                                "fix permissions there") from None
            raise UserError(f"{archive}: damaged or incomplete zip archive ({e}); download it again") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            # BadZipFile: not a zip or a bad CRC; zlib.error/EOFError: truncated or corrupt member data;
            # NotImplementedError: a compression method zipfile lacks (not Kaggle's archive)
            raise UserError(f"{archive}: not a valid zip archive, or damaged ({type(e).__name__}: {e}); "
                            "download it again") from None
        found: dict[str, list[Path]] = {}
        for split in ("seg_train", "seg_test"):  # check both before moving either: no half output
            # a macOS-made zip also holds __MACOSX/seg_train/<class>/ full of '._' files: not that one
            found[split] = sorted(p for p in tmp.rglob(split) if p.is_dir()
                                  and not junk_folder(p.relative_to(tmp).parts)
                                  and any(c.name in INTEL_CLASSES for c in p.iterdir()))
            if not found[split]:
                raise UserError(f"{archive}: no {split}/<class>/ folders inside; is this the Intel Image "
                                "Classification archive? download it again")
        for split, dirs in found.items():
            (dest / split).parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest / split, ignore_errors=True)
            dirs[0].rename(dest / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest



def subset_records(records: list[Record], size: int, seed: int, mode: str,
                   classes: domains.ClassList | None = None) -> list[Record]:
    """A nested subset: the first `size` of a seeded order, so smaller sizes lie inside larger ones.

    `random` draws uniformly; `stratified` deals the classes round-robin so every
    prefix is as class-balanced as the folder allows; `in_domain`, `out_domain` and
    `mixed` draw uniformly from the classes in `classes` (default: the shipped ImageNet
    animal list), from the others, or alternately from both (see sslseg.data.domains).
    """
    if mode in domains.MODES:  # before the pool-size check: its own message names the domain
        return domains.domain_subset(records, size, seed, mode, classes)
    if size > len(records):
        raise UserError(f"pretrain size {size} is larger than the {len(records)} images available; lower grid.pretrain_sizes")
    rng = np.random.default_rng(seed)
    if mode == "random":
        order = rng.permutation(len(records))
    elif mode == "stratified":
        by_class: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            by_class.setdefault(r.label, []).append(i)
        queues = [list(rng.permutation(v)) for _, v in sorted(by_class.items())]
        queues = [queues[i] for i in rng.permutation(len(queues))]
        order = []
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop())
        order = np.asarray(order)
    else:
        raise UserError(f"grid.pretrain_data: unknown subset {mode!r}; use one of random, stratified, "
                        f"{', '.join(domains.MODES)}")
    return [records[i] for i in order[:size]]

