"""Study B's label examples: each kind of imperfect fine-tune label drawn over its image."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sslseg.data.pack import read_pack
from sslseg.data.splits import read_rows
from sslseg.io import Output, UserError
from sslseg.objectives.segment import IGNORE
from sslseg.report.figures import TRIMAP_COLOURS, image_grid


def label_name(path: str) -> tuple[str, int]:
    """(kind, seed) of a label file `<kind>-s<seed>.h5`."""
    m = re.fullmatch(r"(.+)-s(\d+)", Path(path).stem)
    if not m:
        raise UserError(f"{path}: not a label file named <kind>-s<seed>.h5")
    return m.group(1), int(m.group(2))


def overlay(image: np.ndarray, mask: np.ndarray, dim: float = 0.35) -> np.ndarray:
    """Labelled pixels in their class colour; unlabelled ones (IGNORE) show the image dimmed."""
    out = (image * dim).astype(np.uint8)
    labelled = mask != IGNORE
    out[labelled] = TRIMAP_COLOURS[mask[labelled]]
    return out


def label_examples(pets: str, pool: str, labels: list[str], out: Output, report: dict) -> None:
    """For the first fine-tune pool images: image, true trimap, then each label file's masks over
    the image, titled by kind. `labels`: <kind>-s<seed>.h5 files, rows as in `pets`; report: examples, dpi."""
    rows = np.sort(read_rows(pool)[: report["examples"]])  # h5py reads sorted rows
    pets_arrays = read_pack(pets, rows)
    names = [label_name(p) for p in labels]
    kinds = [k for k, _ in names]
    titles = kinds if len(set(kinds)) == len(kinds) else [f"{k} s{s}" for k, s in names]  # seeds only if needed
    masks = []
    for path in labels:
        m = read_pack(path, rows, ("masks",)).get("masks")
        if m is None or m.shape != pets_arrays["masks"].shape:
            raise UserError(f"{path}: needs 'masks' shaped like {pets}'s {pets_arrays['masks'].shape[1:]} per row; "
                            "rerun the label stage")
        masks.append(m)
    images, truth = pets_arrays["images"], pets_arrays["masks"]
    grid = [[images[i], TRIMAP_COLOURS[truth[i]], *(overlay(images[i], m[i]) for m in masks)] for i in range(len(rows))]
    image_grid(grid, ["image", "truth", *titles], out, report["dpi"])
