"""One CSV of every run, and the seeds' tables (mean ± std over seeds) in Markdown and CSV;
the paired Δ tables (mean ± s.e.) and the measured label quality.

Every metrics file names its own grid coordinates (its "run" entry, from sslseg.grid), and
they become the columns here: nothing is read from paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sslseg.grid import NAMES, run_dir, runs as grid_runs
from sslseg.io import Output, UserError, atomic_path, read_json


def _row(path: str) -> dict:
    meta = read_json(path)
    if not isinstance(meta.get("run"), dict):
        raise UserError(f"{path}: has no grid coordinates ('run'); rerun the stage that wrote it")
    row = meta["run"]
    flat = {k: v for k, v in meta.items() if not isinstance(v, dict)}
    for k, v in meta.get("iou", {}).items():
        flat[f"iou_{k}"] = v
    sidecar = Path(f"{path}.json")
    if sidecar.exists():  # provenance: which code produced this number
        side = read_json(sidecar)
        flat.update(git_commit=side.get("git_commit"), sslseg=side.get("sslseg"), device=side.get("device"))
    return {**row, **flat, "source": str(path)}


def collect(metrics: list[str], out: str) -> pd.DataFrame:
    """Per-run JSON metrics into one CSV, one row per run, its coordinates as columns."""
    df = pd.DataFrame([_row(p) for p in metrics])
    df = df.sort_values([k for k in NAMES if k in df]).reset_index(drop=True)
    write_csv(df, out)
    return df


def aggregate(root: str, grid: dict, out: Output) -> pd.DataFrame:
    """Every run of `grid` (the config's `grid:` section), read from `root`/<run_dir>/metrics.json.
    The runs are listed from the grid, not on the command line, which has no room for the
    paths of thousands of runs (and runs of older grids left under `root` are not picked up)."""
    return collect([f"{root}/{run_dir(r)}/metrics.json" for r in grid_runs({"grid": grid})], out)


def intermediate_accuracies(metrics: list[str], out: Output) -> pd.DataFrame:
    """The intermediate classifiers' accuracy files, one row each."""
    return collect(metrics, out)


def write_csv(df: pd.DataFrame, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)


def cells(runs: pd.DataFrame, *without: str) -> list[str]:
    """The grid axes present in `runs`, except seed and `without`: what a table cell is."""
    return [k for k in NAMES if k in runs and k != "seed" and k not in without]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1) and count over seeds of pixel accuracy and mIoU (in %) per grid cell."""
    g = runs.assign(acc=runs.pixel_acc * 100, miou_pct=runs.miou * 100).groupby(cells(runs))
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), miou_mean=("miou_pct", "mean"),
                miou_std=("miou_pct", "std"), seeds=("seed", "count"))
    return out.reset_index()


def paired_delta(runs: pd.DataFrame, axis: str, base, other) -> pd.DataFrame:
    """Δ mIoU (%) `other` − `base` on `axis`, paired by every other axis (seed included);
    mean and standard error (std ddof 1 / √k) over the k seeds with both."""
    keys = cells(runs, axis)
    wide = runs.pivot_table(index=keys + ["seed"], columns=axis, values="miou") if axis in runs else pd.DataFrame()
    if not {base, other} <= set(wide.columns):
        return pd.DataFrame(columns=keys + ["delta_mean", "delta_se", "seeds"])
    d = ((wide[other] - wide[base]) * 100).dropna().rename("delta").reset_index()
    return _mean_se(d, keys)


def _mean_se(d: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell of `keys`: mean and standard error of the paired differences `d.delta`, their
    count, and whether the mean lies beyond 2 s.e. of 0 (False with one seed: no s.e.)."""
    g = d.groupby(keys).delta
    out = pd.DataFrame({"delta_mean": g.mean(), "delta_se": g.std(ddof=1) / np.sqrt(g.count()), "seeds": g.count()})
    out["beyond_2se"] = out.delta_mean.abs() > 2 * out.delta_se.fillna(np.inf)
    return out.reset_index()


def pretrain_delta(runs: pd.DataFrame) -> pd.DataFrame:
    """Δ mIoU (%) pretrained − no pretraining, for each pretraining (objective, data, size),
    paired by seed and every downstream axis (the same fine-tune subset and training seed); mean
    ± s.e. The baseline has no objective or data, so they are not pairing keys here."""
    down = [k for k in cells(runs, "objective", "data", "pretrain") if k in runs] + ["seed"]
    if "pretrain" not in runs or not (runs.pretrain == 0).any() or not (runs.pretrain > 0).any():
        return pd.DataFrame(columns=["objective", "data", "pretrain", *down[:-1], "delta_mean", "delta_se", "seeds"])
    base = runs[runs.pretrain == 0][down + ["miou"]].rename(columns={"miou": "base"})
    pre = runs[runs.pretrain > 0].merge(base, on=down, validate="many_to_one")  # one baseline per pairing
    d = pre.assign(delta=(pre.miou - pre.base) * 100)
    keys = [k for k in ("backbone", "objective", "data", "pretrain") if k in d] + [k for k in down[:-1] if k != "backbone"]
    return _mean_se(d, keys)


def delta(runs: pd.DataFrame) -> pd.DataFrame:
    """Δ mIoU (%) with − without the intermediate step (`paired_delta`)."""
    return paired_delta(runs, "intermediate", 0, 1)


def probe_delta(runs: pd.DataFrame) -> pd.DataFrame:
    """Δ mIoU (%) probe (frozen backbone, linear head) − fine-tune (`paired_delta`)."""
    return paired_delta(runs, "adaptation", "finetune", "probe")


def size_label(n: int) -> str:
    if n == 0:
        return "none"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def pretrain_labels(df: pd.DataFrame) -> list[str]:
    """A label per row for its pretraining: the size (`none`, `45k`), prefixed by the objective
    and data set when the grid has more than one of them."""
    extra = [k for k in ("objective", "data") if k in df and df.loc[df.pretrain > 0, k].nunique() > 1]
    return [size_label(r.pretrain) if not r.pretrain or not extra
            else " ".join([*(str(getattr(r, k)) for k in extra), size_label(r.pretrain)])
            for r in df.itertuples()]


def line_labels(df: pd.DataFrame) -> list[str]:
    """A figure line's label per row: its pretraining (`pretrain_labels`), prefixed by the
    backbone, adaptation and label quality when the runs hold more than one of them."""
    extra = [k for k in ("backbone", "adaptation", "labels") if k in df and df[k].nunique() > 1]
    return [" ".join([*(str(v) for v in vals), p]) for vals, p in
            zip(df[extra].itertuples(index=False, name=None), pretrain_labels(df))]


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {0.0 if np.isnan(std) else std:.2f}"


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


TABLES = {
    "table1": ("Baseline (no pretraining) over seeds, by fine-tune size", lambda s: (s.pretrain == 0) & (s.intermediate == 0)),
    "table_a2": ("Pretrained, by pretraining and fine-tune size", lambda s: (s.pretrain > 0) & (s.intermediate == 0)),
    "table_a3": ("Pretrained + intermediate step, by pretraining and fine-tune size", lambda s: s.intermediate == 1),
}


def tables(runs: str, outdir: Output) -> None:
    """Write summary.csv beside `outdir`, and in `outdir` the seeds' Tables 1, A2, A3, the Δ table
    (delta.csv) and, when the runs hold both adaptations, the probe − fine-tune Δ (probe_delta.csv, .md)."""
    runs_csv, runs = runs, pd.read_csv(runs)
    summary = summarise(runs)
    commits = sorted(str(c) for c in runs.get("git_commit", pd.Series(dtype=str)).dropna().unique())
    source = (f"\n_From {len(runs)} runs listed in `{Path(runs_csv).name}` (one row per run with its metrics file)"
              f"; code commit(s): {', '.join(c[:12] for c in commits) or 'unknown'}._\n")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(summary, out.parent / "summary.csv")
    for name, (title, select) in TABLES.items():
        part = summary[select(summary)]
        varying = {k: part[k].values for k in cells(part, "objective", "data", "pretrain", "intermediate", "finetune")
                   if part[k].nunique() > 1}  # other axes get a column only when they vary
        table = pd.DataFrame({
            **varying,
            "# Pre-train": pretrain_labels(part),
            "# Fine-tune": part.finetune.values,
            "Accuracy (%)": [_pm(m, s) for m, s in zip(part.acc_mean, part.acc_std)],
            "mIoU (%)": [_pm(m, s) for m, s in zip(part.miou_mean, part.miou_std)],
            "Seeds": part.seeds.values,
        })
        if name == "table1":
            table = table.drop(columns="# Pre-train")
        write_csv(table, out / f"{name}.csv")
        _write_md(out / f"{name}.md", f"**{title}** (mean ± std over seeds, ddof 1)", table, source)
    d = delta(runs)
    write_csv(d, out / "delta.csv")
    if len(d):
        _write_md(out / "delta.md", f"**Δ mIoU (%), with − without the intermediate step, by pretraining and "
                  f"fine-tune size** (paired by seed; mean ± s.e. over {_seeds(d.seeds)} seeds; * beyond 2 s.e.)",
                  _delta_table(d), source)
    pre = pretrain_delta(runs)
    write_csv(pre, out / "pretrain_delta.csv")
    if len(pre):
        _write_md(out / "pretrain_delta.md", f"**Δ mIoU (%), pretrained − no pretraining, by fine-tune size** "
                  f"(paired by fine-tune seed; mean ± s.e. over {_seeds(pre.seeds)} seeds; * beyond 2 s.e.; one "
                  "pretraining run per cell, so the s.e. holds the fine-tunes' spread, not the pretraining's)",
                  _delta_table(pre), source)
    probe = probe_delta(runs)
    if len(probe):  # both adaptations in the grid
        write_csv(probe, out / "probe_delta.csv")
        _write_md(out / "probe_delta.md", f"**Δ mIoU (%), probe − fine-tune, by label quality and fine-tune size**"
                  f" (paired by seed; mean ± s.e. over {_seeds(probe.seeds)} seeds)", _probe_table(probe), source)


def _seeds(n: pd.Series) -> str:
    """'3', or '2–3' when cells have different numbers of seeds."""
    return str(n.min()) if n.min() == n.max() else f"{n.min()}–{n.max()}"


def _write_md(path: Path, header: str, table: pd.DataFrame, footer: str = "") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(f"{header}\n\n" + (_markdown(table) if len(table) else "(no runs)\n") + footer)


def _delta_table(d: pd.DataFrame) -> pd.DataFrame:
    """A paired Δ for reading: its varying axes, the Δ as mean ± s.e. (* beyond 2 s.e.), seeds."""
    varying = {k: d[k].values for k in cells(d, "pretrain", "finetune") if d[k].nunique() > 1}
    return pd.DataFrame({
        **varying,
        "# Pre-train": pretrain_labels(d),
        "# Fine-tune": d.finetune.values,
        "Δ mIoU (%)": [_pm(m, s) + (" *" if b else "") for m, s, b in zip(d.delta_mean, d.delta_se, d.beyond_2se)],
        "Seeds": d.seeds.values,
    })


def _probe_table(probe: pd.DataFrame) -> pd.DataFrame:
    """The probe − fine-tune Δ for reading: one row per label quality, pretraining and size."""
    p = probe.sort_values(["labels", *cells(probe, "labels")], kind="stable")
    varying = {k: p[k].values for k in cells(p, "objective", "data", "pretrain", "labels", "finetune")
               if p[k].nunique() > 1}
    return pd.DataFrame({
        **varying,
        "Labels": p["labels"].values,
        "# Pre-train": pretrain_labels(p),
        "# Fine-tune": p.finetune.values,
        "Δ mIoU (%)": [_pm(m, s) for m, s in zip(p.delta_mean, p.delta_se)],
        "Seeds": p.seeds.values,
    })


QUALITY = ("miou", "pixel_acc", "labelled_fraction")  # what the label-quality stage measures


def label_quality(quality: list[str], out: Output) -> pd.DataFrame:
    """Per label kind, the mean over seeds of its measured quality against the true trimaps
    (mIoU, pixel accuracy, labelled fraction; fractions 0–1) to `out` (CSV), and in % to a
    Markdown table beside it. `quality`: the label stage's <kind>-s<seed>.quality.json files."""
    rows = []
    for path in quality:
        q = read_json(path)
        if missing := [k for k in ("kind", "seed", *QUALITY) if k not in q]:
            raise UserError(f"{path}: no {', '.join(missing)}; rerun the label stage that wrote it")
        rows.append({k: q[k] for k in ("kind", "seed", *QUALITY)})
    g = pd.DataFrame(rows).groupby("kind", sort=False)  # kinds in the order given
    table = g[list(QUALITY)].mean().assign(miou_std=g.miou.std(ddof=1), seeds=g.seed.nunique()).reset_index()
    write_csv(table, out)
    shown = pd.DataFrame({
        "Labels": table.kind.values,
        "mIoU (%)": [_pm(m * 100, s * 100) for m, s in zip(table.miou, table.miou_std)],
        "Pixel accuracy (%)": [f"{v * 100:.2f}" for v in table.pixel_acc],
        "Labelled pixels (%)": [f"{v * 100:.2f}" for v in table.labelled_fraction],
        "Seeds": table.seeds.values,
    })
    _write_md(Path(out).with_suffix(".md"), "**Label quality against the true trimaps, fine-tune pool** (mean over "
              f"{_seeds(table.seeds)} seeds; mIoU mean ± std, ddof 1)", shown)
    return table
