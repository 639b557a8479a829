"""Pretraining subsets by class domain (seed 003): in-domain only, out-of-domain only, 50/50 mixed.

The pool is a labelled image folder (`<class>/<image>`, ImageNet's `<wnid>/*.JPEG`); a
class list (by default the shipped `imagenet_animals.txt`) says which class folders are
"in domain". Every subset has exactly the size asked, so the three settings are compared at
equal sizes, and is nested like `random`: the pack holds the largest size and a pretrain
stage takes its first n rows, so the order must make every prefix a valid subset.

Within a domain the draw is uniform (the seed draws from a labelled pool, not class-balanced).
One seeded generator draws the in-domain order and then the out-of-domain order, whatever
the mode, so with one seed `in_domain` and the in-domain rows of `mixed` are the same
images in the same order (and likewise `out_domain`): the settings differ only in the mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from sslseg.io import UserError

if TYPE_CHECKING:  # sources imports this module: no import cycle at run time
    from sslseg.data.sources import Record

MODES = ("in_domain", "out_domain", "mixed")
KEY = "data.pretrain.domain_classes"
ANIMALS = Path(__file__).with_name("imagenet_animals.txt")
"""The default list: ImageNet-1k's 398 animal classes (indices 0-397), one wnid a line."""


@dataclass(frozen=True)
class ClassList:
    """The in-domain class folder names and the file they came from (recorded in the pack)."""

    path: Path
    names: frozenset[str]


def read_class_list(path: str | Path | None = None) -> ClassList:
    """The class list at `path` ("" or None: the shipped ImageNet animal list).

    One class folder name a line; `#` starts a comment (whole line or trailing), blank
    lines are skipped. A missing, unreadable or empty list is a UserError naming the key."""
    p = Path(path).expanduser().absolute() if path else ANIMALS  # absolute: the message says where it looked
    fix = (f"set {KEY} to a text file with one class folder name (wnid) per line, "
           f"or to \"\" for the shipped ImageNet animal list")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{KEY}: {p}: class list not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:  # a folder, no permission, a binary file
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise UserError(f"{KEY}: {p}: cannot read the class list ({why}); {fix}") from None
    names = frozenset(n for n in (line.split("#", 1)[0].strip() for line in text.splitlines()) if n)
    if not names:
        raise UserError(f"{KEY}: {p}: the class list names no classes (only comments or blank lines); {fix}")
    return ClassList(p.resolve(), names)


def class_of(record: Record) -> str:
    """A record's class: the name of its image's folder (the wnid in ImageNet's layout)."""
    return record.image.parent.name


def partition(records: Sequence[Record], classes: ClassList) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the in-domain and the out-of-domain records, each in pool order.

    Either side empty is an error: then the list does not describe this pool (e.g. a
    wnid list for a folder named by class words), and an "out-of-domain" subset that is
    the whole pool would silently equal `random`."""
    inside = np.fromiter((class_of(r) in classes.names for r in records), bool, len(records))
    folders = sorted({class_of(r) for r in records})
    if not inside.any():
        listed = ", ".join(repr(n) for n in sorted(classes.names)[:2])
        raise UserError(
            f"{KEY}: none of the {len(folders)} class folders of the pretraining pool (e.g. {folders[0]!r}) "
            f"is in {classes.path} (e.g. {listed}), so the in-domain subset would be empty; "
            "the list must name class folders of data.pretrain.root: set it to such a list"
        )
    if inside.all():
        raise UserError(
            f"{KEY}: all {len(folders)} class folders of the pretraining pool are in {classes.path}, so the "
            "out-of-domain subset would be empty; use a pool with classes outside the list "
            "(e.g. all of ImageNet, not only its animals) or set it to a list of fewer classes"
        )
    return np.flatnonzero(inside), np.flatnonzero(~inside)


def domain_order(records: Sequence[Record], size: int, seed: int, mode: str, classes: ClassList) -> np.ndarray:
    """The first `size` record indices of the nested `mode` subset for `seed`.

    `mixed` interleaves in, out, in, out, ... so every prefix is 50/50 to within one
    image; for an odd size the in-domain side gets the extra image (row 0 is in domain)."""
    if mode not in MODES:
        raise UserError(f"grid.pretrain_data: unknown domain subset {mode!r}; use one of {', '.join(MODES)}")
    inside, outside = partition(records, classes)
    rng = np.random.default_rng(seed)
    in_order = inside[rng.permutation(len(inside))]  # drawn first in every mode: see the module docstring
    out_order = outside[rng.permutation(len(outside))]
    largest = f"the largest size all three domain subsets allow is {min(len(inside), len(outside))}"
    where = f"(classes listed in {KEY}: {classes.path})"
    if mode == "in_domain" and size > len(inside):
        raise UserError(f"grid.pretrain_sizes: {size} is larger than the {len(inside)} in-domain images of the "
                        f"pretraining pool {where}; lower it ({largest}) or use a larger data.pretrain.root")
    if mode == "out_domain" and size > len(outside):
        raise UserError(f"grid.pretrain_sizes: {size} is larger than the {len(outside)} out-of-domain images of "
                        f"the pretraining pool (classes not listed in {KEY}: {classes.path}); lower it ({largest}) "
                        "or use a larger data.pretrain.root")
    if mode == "in_domain":
        return in_order[:size]
    if mode == "out_domain":
        return out_order[:size]
    need_in, need_out = (size + 1) // 2, size // 2
    if need_in > len(inside) or need_out > len(outside):
        most = min(2 * len(inside), 2 * len(outside) + 1)  # the in side takes the odd image
        raise UserError(f"grid.pretrain_sizes: {size} mixed needs {need_in} in-domain and {need_out} out-of-domain "
                        f"images but the pretraining pool has {len(inside)} and {len(outside)} {where}; lower it "
                        f"(mixed allows at most {most}; {largest}) or use a larger data.pretrain.root")
    order = np.empty(size, np.int64)
    order[0::2] = in_order[:need_in]
    order[1::2] = out_order[:need_out]
    return order


def domain_subset(records: Sequence[Record], size: int, seed: int, mode: str,
                  classes: ClassList | None = None) -> list[Record]:
    """The nested `mode` subset (in_domain | out_domain | mixed) of `size` records: the first n
    rows of a larger size's subset are the size-n subset. `classes`: default the animal list."""
    order = domain_order(records, size, seed, mode, classes or read_class_list())
    return [records[i] for i in order]


def summary(subset: Sequence[Record], pool: Sequence[Record], mode: str, classes: ClassList) -> dict:
    """What a domain pack holds, for its attrs and sidecar: the list used, images and classes per domain."""
    inside = sorted({class_of(r) for r in subset if class_of(r) in classes.names})
    outside = sorted({class_of(r) for r in subset if class_of(r) not in classes.names})
    n_in = sum(class_of(r) in classes.names for r in subset)
    pool_in = sum(class_of(r) in classes.names for r in pool)
    return {
        "domain": mode,
        "domain_list": str(classes.path),
        "domain_list_classes": len(classes.names),
        "in_domain_images": n_in,
        "out_domain_images": len(subset) - n_in,
        "in_domain_classes": inside,
        "out_domain_classes": outside,
        "pool_in_domain_images": pool_in,
        "pool_out_domain_images": len(pool) - pool_in,
    }
