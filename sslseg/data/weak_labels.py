"""Imperfect labels made from the true trimaps: scribbles, points, noisy masks (study B, seed 002).

Seed 002 trains a linear head on a frozen ViT with real scribbles, clicks and image-level
pseudo-labels. Oxford-IIIT Pet has none of these, so they are simulated here from the trimaps,
deterministically for a given rng. Sparse kinds mark unlabelled pixels IGNORE (no loss); noisy
masks label every pixel, some of them wrongly. Morphology is numpy only: erosion and dilation by
a square (Chebyshev distance) as a min/max over shifted copies, cheap at pack resolution.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from sslseg.io import UserError

IGNORE = 255  # == sslseg.objectives.segment.IGNORE; not imported from there, which pulls in torch
KINDS = ("scribbles", "points", "noisy")
NOISES = ("boundary", "coarse", "flip")
CAUSE = {"scribbles": "width", "points": "per_class", "noisy": "strength"}  # blamed for an empty image


def square(mask: np.ndarray, size: int, grow: bool) -> np.ndarray:
    """Dilate (grow) or erode a boolean (H, W) mask by a size × size square.

    Erosion keeps p when p + s is in the mask for every offset s; dilation reflects the offsets,
    so dilating points of the erosion never leaves the mask, even for an even size. Outside the
    image counts as inside for erosion: a region touching the edge may be labelled up to it."""
    lo = size // 2
    offsets = range(-lo, size - lo) if not grow else range(lo - size + 1, lo + 1)
    reduce = np.logical_or.reduce if grow else np.logical_and.reduce
    for _ in range(2):  # rows, then (transposed) columns: a square is separable
        n = mask.shape[0]
        padded = np.pad(mask, ((size, size), (0, 0)), constant_values=not grow)
        mask = reduce([padded[size + d: size + d + n] for d in offsets]).T
    return mask


def _param(kind: str, params: dict, key: str, ok: Callable, want: str, default=None):
    value = params.get(key, default)
    try:
        good = value is not None and not isinstance(value, bool) and ok(value)
    except (TypeError, ValueError, OverflowError):  # a string where a number belongs, inf, nan
        good = False
    if not good:
        raise UserError(f"labels.{kind}.{key}: {value!r} is not {want}; fix it in the config")
    return value


def _walk(inside: np.ndarray, y: int, x: int, steps: int, rng: np.random.Generator, centres: np.ndarray) -> None:
    """Mark in `centres` a smooth random walk of `steps` unit steps that never leaves `inside`.
    At its edge the walk turns by the smallest angle that keeps it inside, so strokes follow thin
    regions such as the border ring; boxed in, it stops."""
    h, w = inside.shape
    heading, fy, fx = rng.uniform(0, 2 * math.pi), float(y), float(x)
    centres[y, x] = True
    for turn in rng.normal(0, 0.15, steps - 1):  # drawn up front: same draws however the walk ends
        side = 1 if turn > 0 else -1
        for bend in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6):
            a = heading + side * bend * math.pi / 8
            ny, nx = fy + math.sin(a), fx + math.cos(a)
            iy, ix = round(ny), round(nx)
            if 0 <= iy < h and 0 <= ix < w and inside[iy, ix]:
                break
        else:
            return
        fy, fx, heading = ny, nx, a + turn
        centres[iy, ix] = True


def _scribbles(mask: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    strokes = _param("scribbles", params, "strokes", lambda v: int(v) == v >= 1, "an integer >= 1")
    width = _param("scribbles", params, "width", lambda v: int(v) == v >= 1, "an integer >= 1")
    length = _param("scribbles", params, "length", lambda v: 0 < v <= 1, "a fraction in (0, 1]")
    steps = max(1, round(length * max(mask.shape)))
    out = np.full(mask.shape, IGNORE, np.uint8)
    for c in np.unique(mask):
        region = mask == c
        inside = square(region, int(width), grow=False)  # centres where the whole brush fits
        ys, xs = np.nonzero(inside)
        if not len(ys):  # thinner than the brush: an annotator could not scribble it
            continue
        centres = np.zeros_like(region)
        for i in rng.integers(len(ys), size=int(strokes)):
            _walk(inside, ys[i], xs[i], steps, rng, centres)
        out[square(centres, int(width), grow=True) & region] = c
    return out


def _points(mask: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    per_class = _param("points", params, "per_class", lambda v: int(v) == v >= 1, "an integer >= 1")
    radius = _param("points", params, "radius", lambda v: int(v) == v >= 0, "an integer >= 0", 0)
    size = 2 * int(radius) + 1
    out = np.full(mask.shape, IGNORE, np.uint8)
    for c in np.unique(mask):
        region = mask == c
        inside = square(region, size, grow=False)
        where = np.flatnonzero(inside if inside.any() else region)
        dots = np.zeros_like(region)
        dots.flat[rng.choice(where, min(int(per_class), len(where)), replace=False)] = True
        out[square(dots, size, grow=True) & region] = c
    return out


def _noisy(mask: np.ndarray, params: dict, rng: np.random.Generator, classes: int) -> np.ndarray:
    noise = _param("noisy", params, "noise", lambda v: v in NOISES, f"one of {', '.join(NOISES)}")
    h, w = mask.shape
    if noise == "boundary":  # signed px: the pet and its border ring grow (> 0) or shrink (< 0) together
        s = _param("noisy", params, "strength", lambda v: int(v) == v, "a whole number of pixels (boundary)")
        if s == 0:
            return mask.copy()
        size, grow = 2 * abs(int(s)) + 1, s > 0
        out = np.ones_like(mask)  # trimap classes: 0 pet, 1 background, 2 border
        out[square(mask != 1, size, grow)] = 2
        out[square(mask == 0, size, grow)] = 0
        return out
    if noise == "coarse":  # majority class of b × b blocks, upsampled: a blocky, low-resolution mask
        b = int(_param("noisy", params, "strength", lambda v: int(v) == v >= 1, "a block side >= 1 px (coarse)"))
        oy, ox = rng.integers(b, size=2)  # the grid's phase, so seeds differ
        padded = np.pad(mask, ((oy, -(h + oy) % b), (ox, -(w + ox) % b)), mode="edge")
        blocks = padded.reshape(padded.shape[0] // b, b, padded.shape[1] // b, b)
        major = np.stack([(blocks == c).sum((1, 3)) for c in range(classes)]).argmax(0)  # ties: lower class
        return major.repeat(b, 0).repeat(b, 1)[oy:oy + h, ox:ox + w].astype(np.uint8)
    # flip: each blob × blob cell (1: each pixel) turns to a uniformly random other class w.p. strength
    p = _param("noisy", params, "strength", lambda v: 0 <= v <= 1, "a probability in [0, 1] (flip)")
    blob = int(_param("noisy", params, "blob", lambda v: int(v) == v >= 1, "an integer >= 1", 1))
    cells = (-(-h // blob), -(-w // blob))
    flip, shift = rng.random(cells) < p, rng.integers(1, classes, cells)

    def up(a: np.ndarray) -> np.ndarray:
        return a.repeat(blob, 0).repeat(blob, 1)[:h, :w]

    return np.where(up(flip), (mask + up(shift)) % classes, mask).astype(np.uint8)


def generate(mask: np.ndarray, kind: str, params: dict, rng: np.random.Generator, classes: int = 3) -> np.ndarray:
    """Imperfect labels (H, W) uint8 for one true mask (H, W) of classes 0..classes-1.

    scribbles {strokes, width, length}: per class present, `strokes` random walks of
    length·side steps, each starting where a width × width brush fits inside the class and
    never leaving that region; pixels under the brush get the class, the rest IGNORE.
    points {per_class, radius=0}: per class present, per_class distinct pixels (uniform over the
    class, or over where a (2r+1)² square fits when radius > 0), painted as such squares.
    noisy {noise, strength, blob=1}: dense; see _noisy (boundary px, coarse block, flip prob)."""
    if kind == "scribbles":
        return _scribbles(mask, params, rng)
    if kind == "points":
        return _points(mask, params, rng)
    if kind == "noisy":
        return _noisy(mask, params, rng, classes)
    raise UserError(f"labels.kind: {kind!r} is not one of {', '.join(KINDS)}; fix it in the config")


def generate_rows(masks: np.ndarray, rows: Sequence[int], kind: str, params: dict, seed: int,
                  names: Sequence[str] | None = None, threads: int = 1) -> np.ndarray:
    """Labels (N, H, W) for masks (N, H, W) of pack rows `rows`: row r draws from
    default_rng([seed, r]), so an image's labels do not depend on which other rows are made."""
    def one(i: int) -> np.ndarray:
        return generate(masks[i], kind, params, np.random.default_rng([seed, int(rows[i])]))

    with ThreadPoolExecutor(max(1, threads)) as pool:  # numpy's array ops release the GIL
        labels = np.stack(list(pool.map(one, range(len(masks))))) if len(masks) else masks.copy()
    empty = np.flatnonzero((labels == IGNORE).all((1, 2)))
    if len(empty):
        i, key = empty[0], CAUSE[kind]
        image = names[i] if names is not None else f"row {rows[i]}"
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        raise UserError(f"labels.{kind}.{key}: {params.get(key)!r} leaves image {image}{more} with no labelled "
                        "pixel (its regions are too thin for it); lower it")
    return labels


def quality(labels: np.ndarray, truth: np.ndarray, classes: int = 3) -> dict:
    """How good labels (N, H, W) are against the truth, over the labelled pixels of all images.

    One confusion matrix (rows truth, columns label) as in sslseg.metrics: IoU = TP/(TP+FP+FN),
    NaN for a class absent from both (left out of the mean). labelled_fraction counts all pixels."""
    conf = np.zeros(classes * classes)
    for i in range(0, len(labels), 256):  # in blocks: int64 indices of a whole pool take gigabytes
        lab, tru = labels[i:i + 256], truth[i:i + 256]
        keep = lab != IGNORE
        conf += np.bincount(tru[keep].astype(np.int64) * classes + lab[keep], minlength=classes * classes)
    conf = conf.reshape(classes, classes)
    per_image = (labels != IGNORE).reshape(len(labels), -1).sum(1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {
        "images": int(len(labels)),
        "labelled_fraction": float(per_image.sum() / labels.size) if labels.size else math.nan,
        "labelled_pixels_min": int(per_image.min()) if len(per_image) else 0,
        "pixel_acc": float(tp.sum() / conf.sum()) if conf.sum() > 0 else math.nan,
        "miou": float(np.nanmean(iou)) if (~np.isnan(iou)).any() else math.nan,
        "iou_per_class": [float(v) for v in iou],
    }
