"""Label budgets: a fine-tune size as the config or a path writes it, and as a count of images.

One definition for the config checks, the planner and the workflow's input functions
(sslseg.config, sslseg.plan, workflow/rules/common.smk) and for the splits stage
(sslseg.data.splits). Kept apart, with no import but sslseg.io, because it is code of every data
stage (the workflow reruns a stage when a file its command imports changes) and Snakemake's own
environment imports it (the standard library only).
"""

from __future__ import annotations

import re

from sslseg.io import UserError


def parse_size(size: int | str) -> int | str:
    """A fine-tune size as the config or a path writes it: a count (250, "250") → int; a fraction
    of the pool ("5%", "5pct", "0.5%") → "P%"."""
    if isinstance(size, int) and not isinstance(size, bool):
        value: int | str = size
    else:
        text = str(size).strip()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(%|pct)", text)
        if text.isdigit():
            value = int(text)
        elif m and 0 < float(m.group(1)) <= 100:
            return f"{m.group(1)}%"
        else:
            raise UserError(f"grid.finetune_sizes: {size!r} is neither a count of images (250) nor a fraction of "
                            "the pool in (0, 100] % (\"5%\")")
    if value < 1:
        raise UserError(f"grid.finetune_sizes: {value} images is no image; use a count of at least 1")
    return value


def resolve_size(size: int | str, pool: int) -> int:
    """A label budget as a number of images of a pool of `pool`: a count as is; a fraction "P%"
    → round(P/100 · pool), at least 1 (seed 004's 1 % of 1,464 VOC images is 15)."""
    value = parse_size(size)
    return value if isinstance(value, int) else max(1, round(float(value[:-1]) / 100 * pool))
