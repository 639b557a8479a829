"""Our cells beside the published ones: seed 001's Tables 1, A2 and A3 (published.csv), with the
difference in units of the combined standard deviation.

A cell matches when its run is study A's (viny, simmim on random subsets, full fine-tune on
the true trimaps) and its pretraining size, intermediate step and fine-tune size are one of
the published rows. Both standard deviations are over seeds (ddof 1 for ours; the paper does
not say which ddof its 3 runs use), and the combined one is √(s_ours² + s_paper²): a
difference under 2 of those is inside what the two seed spreads allow.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslseg.io import Output, UserError, atomic_path
from sslseg.report.tables import _pm, read_runs, summarise

PUBLISHED = Path(__file__).with_name("published.csv")
STUDY_A = {"backbone": "viny", "objective": "simmim", "data": "random", "adaptation": "finetune", "labels": "full",
           "decoder": 1}
PRETRAINING = ("objective", "data")
WITHIN = 2.0  # combined standard deviations


def published_table() -> pd.DataFrame:
    return pd.read_csv(PUBLISHED, comment="#", dtype={"table": str})


def compare(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (pretrain, intermediate, finetune) cell that both we and the paper ran."""
    # the paper's budgets are counts: fraction runs ("5%") have no published cell
    mine = runs[[not isinstance(v, str) for v in runs.finetune]] if "finetune" in runs else runs
    if "finetune" in mine:
        mine = mine.assign(finetune=mine.finetune.astype(int))
    for axis, value in STUDY_A.items():
        if axis in mine and axis not in PRETRAINING:
            mine = mine[mine[axis] == value]
    for axis in PRETRAINING:  # the baseline has no objective and no pretraining data
        if axis in mine:
            mine = mine[(mine.pretrain == 0) | (mine[axis] == STUDY_A[axis])]
    if mine.empty:
        return pd.DataFrame()
    ours = summarise(mine).rename(columns={"acc_mean": "ours_acc", "acc_std": "ours_acc_std",
                                           "miou_mean": "ours_miou", "miou_std": "ours_miou_std"})
    ours = ours.assign(intermediate=ours.intermediate.astype(bool))[
        ["pretrain", "intermediate", "finetune", "ours_acc", "ours_acc_std", "ours_miou", "ours_miou_std", "seeds"]]
    paper = published_table()
    paper["intermediate"] = paper.intermediate.astype(str).str.lower() == "true"
    both = ours.merge(paper, on=["pretrain", "intermediate", "finetune"])
    for m, (o, s, p, ps) in {"acc": ("ours_acc", "ours_acc_std", "acc_mean", "acc_std"),
                             "miou": ("ours_miou", "ours_miou_std", "miou_mean", "miou_std")}.items():
        both[f"{m}_diff"] = both[o] - both[p]
        both[f"{m}_combined_std"] = (both[s].fillna(0) ** 2 + both[ps] ** 2) ** 0.5
        both[f"{m}_z"] = both[f"{m}_diff"] / both[f"{m}_combined_std"]
    both["within"] = (both.acc_z.abs() <= WITHIN) & (both.miou_z.abs() <= WITHIN)
    return both.sort_values(["table", "pretrain", "finetune"]).reset_index(drop=True)


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ("No cell of this grid is one of seed 001's published cells (Tables 1, A2, A3: viny, simmim, "
                "pretraining 0/45k/100k/200k, fine-tune 250–6000, full fine-tune on true trimaps).\n")
    lines = [f"**Ours beside seed 001** (mean ± std over seeds, ddof 1 for ours; Δ = ours − published, "
             f"z = Δ / √(s_ours² + s_paper²), in single-run standard deviations (the s.e. of two 3-seed means "
             f"is √3 smaller); ✓ when |z| ≤ {WITHIN:g} for both metrics)", "",
             "| Table | # Pre-train | Intermediate | # Fine-tune | Seeds | Accuracy ours | published | Δ (z) "
             "| mIoU ours | published | Δ (z) | |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples():
        lines.append(
            f"| {r.table} | {r.pretrain:,} | {'yes' if r.intermediate else 'no'} | {r.finetune:,} | {r.seeds} "
            f"| {_pm(r.ours_acc, r.ours_acc_std)} | {_pm(r.acc_mean, r.acc_std)} | {r.acc_diff:+.2f} ({r.acc_z:+.1f}) "
            f"| {_pm(r.ours_miou, r.ours_miou_std)} | {_pm(r.miou_mean, r.miou_std)} | {r.miou_diff:+.2f} ({r.miou_z:+.1f}) "
            f"| {'✓' if r.within else '✗'} |")
    return "\n".join(lines) + "\n"


def published(runs: str, out: Output, md: Output) -> pd.DataFrame:
    """Compare the grid's runs (runs.csv) with seed 001's published cells; print the table."""
    try:
        df = read_runs(runs)  # a grid with fractions has a text finetune column
    except FileNotFoundError:
        raise UserError(f"{runs}: not found; run the aggregate stage first") from None
    table = compare(df)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    text = markdown(table)
    with atomic_path(md) as tmp:
        Path(tmp).write_text(text)
    print(text, end="")
    return table
