"""Learning curves: the per-epoch training loss of every training job of the grid (and its
validation mIoU, where a log has a `val_miou` column), one figure per training stage, and
`convergence.csv`: how flat each loss is at its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import seaborn as sns

from sslseg import grid as G
from sslseg.io import Output, UserError
from sslseg.report.figures import _panels, save
from sslseg.report.tables import write_csv

TAIL = 0.1  # the share of the epochs whose mean loss is compared with the same share before it


def last_change(loss: Sequence[float], tail: float = TAIL) -> float:
    """Relative change of the mean loss over the last `tail` of the epochs (at least one) against
    the same number of epochs before them: ≈ 0 when the loss is flat at the end, negative while
    it still falls. NaN with too few epochs to compare (fewer than 2)."""
    loss = np.asarray(loss, float)
    k = max(1, int(tail * len(loss) + 0.5))  # half up; int(), not ceil: 0.1 * 30 is 3.0000000000000004
    if len(loss) < 2 * k:
        return float("nan")
    before = loss[-2 * k:-k].mean()
    return float((loss[-k:].mean() - before) / before)


def training_jobs(root: str, grid: dict) -> list[tuple[str, str, Any, str]]:
    """(stage, folder under `root`, run, log path) of every training job of `grid` (sslseg.grid.view
    of the config, or its bare `grid:`) under `root` (results/<name>): pretrainings, intermediate steps, then fine-tunes and
    probes. A pretraining's or intermediate step's `run` is the first downstream run using it."""
    runs = G.runs(grid if "grid" in grid else {"grid": grid})  # sslseg.grid.view, or a bare grid
    folders = [(stage, f"{stage}/{d}", run)
               for stage, path_of in (("pretrain", G.pretrain_dir), ("intermediate", G.intermediate_dir))
               for d, run in G.by_path(runs, path_of).items()]
    folders += [(r.adaptation, f"runs/{d}", r) for d, r in G.by_path(runs, G.run_dir).items()]
    return [(stage, folder, run, f"{root}/{folder}/log.csv") for stage, folder, run in folders]


def read_log(path: str) -> pd.DataFrame:
    """A training log (sslseg.train: epoch, loss, lr, ...; `val_miou` where validated); a job
    that trained no epoch wrote only the header `epoch`."""
    try:
        log = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"{path}: training log not found; rerun the stage that writes it") from None
    if "loss" not in log:
        if not log.empty:
            raise UserError(f"{path}: no 'loss' column; not a training log of sslseg.train")
        log = log.assign(loss=pd.Series(dtype=float))
    return log


def _place(stage: str, folder: str, run: Any) -> tuple[str, str, Any]:
    """(panel, line, line order) of a job in its stage's figure. Pretrainings and intermediate
    steps: one line each in one panel. Fine-tunes and probes: a panel per initialisation and
    label kind, a line per fine-tune size (its seeds averaged), as dozens of runs stay readable;
    sizes in order, counts ("250 images") before fractions of the pool ("5% of the pool")."""
    if stage in ("pretrain", "intermediate"):
        return "", folder.split("/", 1)[1], 0
    init = G.pretrain_name(run) + (" + intermediate" if run.intermediate else "")
    size = run.finetune
    if isinstance(size, str):  # a fraction "P%": ordered after every count
        line, order = f"{size} of the pool", 1e12 + float(size.rstrip("%"))
    else:
        line, order = f"{size} images", size
    return f"{run.backbone} {init}, {run.labels} labels", line, order


def curves_figure(stage: str, curves: pd.DataFrame, out: str, settings: dict) -> None:
    """One stage's loss per epoch: a panel per `panel`, a line per `line` (mean over its runs, a
    band from their minimum to maximum), each named with its mean last-10 % change; validation
    mIoU, where logged, dashed on a right axis. curves: panel, line, order, run, epoch, loss,
    change (and val_miou, a fraction). settings: style, dpi."""
    sns.set_theme(style=settings["style"])
    panels = list(dict.fromkeys(curves.panel)) or [""]
    lines = list(dict.fromkeys(curves.sort_values("order", kind="stable").line))
    colours = dict(zip(lines, sns.color_palette(n_colors=max(1, len(lines)))))
    val = "val_miou" in curves and curves.val_miou.notna().any()
    loss = curves.loss.dropna()
    log_y = len(loss) > 0 and loss.min() > 0 and loss.max() / loss.min() >= 10  # log only where it spreads the curves
    fig, axes = _panels(len(panels), (4.8, 3.4))
    for ax, panel in zip(axes, panels):
        part = curves[curves.panel == panel].sort_values("order", kind="stable")
        right = ax.twinx() if val else None
        for line, runs in part.groupby("line", sort=False):
            stats = runs.groupby("epoch").agg(mean=("loss", "mean"), lo=("loss", "min"), hi=("loss", "max"))
            change = runs.groupby("run").change.first().mean()
            name = line if np.isnan(change) else f"{line}: {change:+.1%}"
            ax.plot(stats.index, stats["mean"], color=colours[line], label=name)
            if runs.run.nunique() > 1:
                ax.fill_between(stats.index, stats.lo, stats.hi, color=colours[line], alpha=0.2, lw=0)
            if val:
                right.plot(runs.groupby("epoch").val_miou.mean() * 100, color=colours[line], ls="--")
        if val:
            right.set_ylim(0, 100)  # one scale in every panel
            right.set_ylabel("validation mIoU (%), dashed")
            right.grid(False)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss" + (" (log scale)" if log_y else ""))
        ax.set_title(panel, fontsize=9)
        if len(part):
            ax.legend(title="loss change over the last 10 % of epochs", title_fontsize=7, fontsize=7)
    seeds = curves.groupby(["panel", "line"]).run.nunique().max() if len(curves) else 0
    spread = f", mean and range over {seeds} seeds" if seeds > 1 else ""
    what = "training loss (solid) and validation mIoU (dashed)" if val else "training loss"
    fig.suptitle(f"{stage}: {what} per epoch{spread}")
    save(fig, out, settings["dpi"])


def learning_curves(root: str, grid: dict, outdir: Output, settings: dict) -> pd.DataFrame:
    """The training logs of every job of `grid` under `root` (results/<name>) → `outdir`/convergence.csv
    (a row per job: stage, run folder, epochs, final loss, last_10pct_change, and where validated
    final_val_miou, best_val_miou and its best_val_epoch) and `outdir`/fig_curves_<stage>.png
    and .pdf for each training stage of the grid (pretrain, intermediate, finetune, probe).
    settings: style, dpi."""
    rows, curves = [], []
    for stage, folder, run, path in training_jobs(root, grid):
        log = read_log(path)
        change = last_change(log.loss)
        row = {"stage": stage, "run": folder, "epochs": len(log),
               "final_loss": log.loss.iloc[-1] if len(log) else np.nan, "last_10pct_change": change}
        if "val_miou" in log:
            scored = log.val_miou.notna()
            row["final_val_miou"] = log.val_miou.iloc[-1] if len(log) else np.nan
            row["best_val_miou"] = log.val_miou.max() if scored.any() else np.nan
            row["best_val_epoch"] = log.epoch[log.val_miou.idxmax()] if scored.any() else np.nan
        rows.append(row)
        panel, line, order = _place(stage, folder, run)
        curves.append(log.assign(stage=stage, panel=panel, line=line, order=order, run=folder, change=change))
    table = pd.DataFrame(rows)
    write_csv(table, Path(outdir) / "convergence.csv")
    every = pd.concat(curves, ignore_index=True)
    for stage in dict.fromkeys(table.stage):  # every stage of the grid, also one whose jobs logged no epoch
        curves_figure(stage, every[every.stage == stage], str(Path(outdir) / f"fig_curves_{stage}.png"), settings)
        changes = table.last_10pct_change[table.stage == stage]
        print(f"{stage}: {len(changes)} runs, loss change over the last 10 % of epochs: median "
              f"{changes.median():+.2%}, largest drop {changes.min():+.2%}")
    return table
