"""One CSV of every run, and the seeds' tables (mean ± std over seeds) in Markdown and CSV;
the paired Δ tables (mean ± s.e.), study C's pretraining-data table, study D's objective ×
decoder width × label budget table, and the measured label quality.

Every metrics file names its own grid coordinates (its "run" entry, from sslseg.grid), and
they become the columns here: nothing is read from paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sslseg.grid import NAMES, has_decoder, run_dir, runs as grid_runs
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
    df = sort_cells(pd.DataFrame([_row(p) for p in metrics]), [k for k in NAMES])
    write_csv(df.reset_index(drop=True), out)
    return df.reset_index(drop=True)


def budget(value) -> tuple[str, float]:
    """A label budget (a `finetune` value, as metrics.json or runs.csv hold it) as (kind, value):
    a count, ("count", 250.0), or a fraction of the fine-tune pool in %, ("fraction", 5.0) for
    "5%" (or its path token "5pct")."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("%", "pct")):
            return "fraction", float(text.removesuffix("%").removesuffix("pct"))
        return "count", float(text)
    return "count", float(value)


def budget_value(value) -> float:
    """The number a budget is plotted at: its count, or its fraction in % (`budget`)."""
    return budget(value)[1]


def budget_kind(value) -> str:
    return budget(value)[0]


def budget_label(value) -> str:
    """`250` or `5%`: a budget as the tables and ticks write it."""
    kind, v = budget(value)
    return f"{v:g}%" if kind == "fraction" else str(int(v))


def budget_order(value) -> float:
    """A sort key: counts by size, then fractions by size (a grid may hold both)."""
    kind, v = budget(value)
    return v + (1e15 if kind == "fraction" else 0.0)


def _normal_budget(value):
    """A `finetune` cell read back from CSV: a count as int ("250" → 250), a fraction as "P%"."""
    kind, v = budget(value)
    return f"{v:g}%" if kind == "fraction" else int(v)


def read_runs(path: str | Path) -> pd.DataFrame:
    """runs.csv as a DataFrame. A grid with fraction budgets has a text `finetune` column
    ("250", "5%"): counts become ints again (one type per kind), so the column sorts and pairs
    as the grid lists it (`sort_cells`)."""
    df = pd.read_csv(path)
    if "finetune" in df and not pd.api.types.is_numeric_dtype(df.finetune):  # text: object or str dtype
        df["finetune"] = pd.Series([_normal_budget(v) for v in df.finetune], index=df.index, dtype=object)
    return df


OBJECTIVE_ORDER = ("none", "simmim", "mae", "dep", "ddep")  # the studies' order; any other after them


def _objective_rank(objective: str) -> str:
    return f"{OBJECTIVE_ORDER.index(objective) if objective in OBJECTIVE_ORDER else len(OBJECTIVE_ORDER)}:{objective}"


def _sort_key(col: pd.Series) -> pd.Series:
    if col.name == "finetune":
        return col.map(budget_order)
    return col.map(_objective_rank) if col.name == "objective" else col


def sort_cells(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`df` sorted by the `keys` present in it, label budgets by `budget_order` (counts and
    fractions may share the column, and "10%" must follow "5%"), objectives in the studies'
    order (`OBJECTIVE_ORDER`: none, simmim, mae, dep, ddep; any other after them by name)."""
    return df.sort_values([k for k in keys if k in df], key=_sort_key, kind="stable")


def aggregate(root: str, grid: dict, out: Output) -> pd.DataFrame:
    """Every run of `grid`, read from `root`/<run_dir>/metrics.json: `grid` is sslseg.grid.view
    of the config (the grid with the heads and DDeP's encoder, which decide the decoder widths
    and where an objective runs: what the workflow passes) or a bare `grid:` section.
    The runs are listed from the grid, not on the command line, which has no room for the
    paths of thousands of runs (and runs of older grids left under `root` are not picked up)."""
    every = grid_runs(grid if "grid" in grid else {"grid": grid})
    return collect([f"{root}/{run_dir(r)}/metrics.json" for r in every], out)


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
    g = runs.assign(acc=runs.pixel_acc * 100, miou_pct=runs.miou * 100).groupby(cells(runs), sort=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), miou_mean=("miou_pct", "mean"),
                miou_std=("miou_pct", "std"), seeds=("seed", "count"))
    return sort_cells(out.reset_index(), cells(runs)).reset_index(drop=True)


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
    return sort_cells(out.reset_index(), keys).reset_index(drop=True)


def pretrain_delta(runs: pd.DataFrame) -> pd.DataFrame:
    """Δ mIoU (%) pretrained − no pretraining, for each pretraining (objective, data, size),
    paired by seed and every downstream axis (the same fine-tune subset and training seed); mean
    ± s.e. The baseline has no objective or data, so they are not pairing keys here."""
    down = [k for k in cells(runs, "objective", "data", "pretrain") if k in runs] + ["seed"]
    if "pretrain" not in runs or not (runs.pretrain == 0).any() or not (runs.pretrain > 0).any():
        return pd.DataFrame(columns=["objective", "data", "pretrain", *down[:-1], "delta_mean", "delta_se", "seeds"])
    base = runs[runs.pretrain == 0][down + ["miou"]].rename(columns={"miou": "base"})
    if "decoder" in base:
        # a baseline without a UNet head has no decoder, so width 1 only: it pairs with every width
        # a dep/ddep pretraining has (their decoder is dropped by a non-UNet head)
        missing = set(runs.loc[runs.pretrain > 0, "decoder"]) - set(base.decoder)
        base = pd.concat([base, *(base[base.decoder == 1].assign(decoder=w) for w in sorted(missing))])
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
    backbone, adaptation and label quality when the runs hold more than one of them, and
    followed by a decoder width other than 1 (`dec×2`; width 1 is also "no decoder", the width
    of every run without one)."""
    extra = [k for k in ("backbone", "adaptation", "labels") if k in df and df[k].nunique() > 1]
    widths = [f"dec×{w}" if pd.notna(w) and w != 1 else "" for w in (df.decoder if "decoder" in df else [1] * len(df))]
    return [" ".join([*(str(v) for v in vals), p, *([w] if w else [])]) for vals, p, w in
            zip(df[extra].itertuples(index=False, name=None), pretrain_labels(df), widths)]


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
    """Write summary.csv beside `outdir`, and in `outdir` the seeds' Tables 1, A2, A3, the Δ tables
    (delta.csv, pretrain_delta.csv), study C's table by pretraining data when the grid has
    several data sets or a domain one (table_data.csv, .md), study D's objective × decoder
    width × label budget table when it has a decoder width > 1 or a decoder-pretraining
    objective (table_decoder.csv, .md) and, when the runs hold both adaptations, the probe −
    fine-tune Δ (probe_delta.csv, .md)."""
    runs_csv, runs = runs, read_runs(runs)
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
            "# Fine-tune": [budget_label(v) for v in part.finetune],
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
    if data_study(runs):
        data = data_table(runs)
        write_csv(data, out / "table_data.csv")
        _write_md(out / "table_data.md", "**Study C: test metrics by pretraining data** (in-domain, out-of-domain, "
                  "mixed; beside the no-pretraining baseline of each backbone; mean ± std over seeds, ddof 1; "
                  "Δ mIoU vs no pretraining paired by fine-tune seed, mean ± s.e., * beyond 2 s.e.)",
                  _data_markdown(data), source)
    if decoder_study(runs):
        dec = decoder_table(runs)
        write_csv(dec, out / "table_decoder.csv")
        _write_md(out / "table_decoder.md", "**Study D: test mIoU (%) by objective, decoder width and label budget** "
                  "(mean ± std over seeds, ddof 1, (n) seeds; a fraction is of the fine-tune pool, with the "
                  "images it resolved to where the runs record them)", _decoder_markdown(dec), source)
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
        "# Fine-tune": [budget_label(v) for v in d.finetune],
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
        "# Fine-tune": [budget_label(v) for v in p.finetune],
        "Δ mIoU (%)": [_pm(m, s) for m, s in zip(p.delta_mean, p.delta_se)],
        "Seeds": p.seeds.values,
    })


DOMAIN_DATA = ("in_domain", "out_domain", "mixed")  # study C's pretraining sets (sslseg/data/domains.py)
DATA_ORDER = ("none", *DOMAIN_DATA, "random", "stratified")  # rows of its table: the baseline first


def data_study(runs: pd.DataFrame) -> bool:
    """Whether the runs compare pretraining data (study C): several data sets, or a domain one."""
    data = set(runs.loc[runs.pretrain > 0, "data"]) if {"data", "pretrain"} <= set(runs) else set()
    return len(data) > 1 or bool(data & set(DOMAIN_DATA))


def decoder_study(runs: pd.DataFrame) -> bool:
    """Whether the runs compare decoders (study D): a width above 1, or an objective that pretrains one."""
    wide = "decoder" in runs and (runs.decoder > 1).any()
    return bool(wide or ("objective" in runs and any(has_decoder(o) for o in runs.objective.dropna().unique())))


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The test metrics a table reports: mIoU, pixel accuracy, then each class's IoU."""
    return ["miou", "pixel_acc", *[c for c in runs.columns if c.startswith("iou_")]]


def seed_stats(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per grid cell (every axis but the seed): mean and std (ddof 1) over seeds of each of
    `metrics` in % (`<m>_mean`, `<m>_std`), the seeds (n) and, where recorded, the mean
    `labelled_images` (what a fraction resolved to)."""
    keys = cells(runs)
    pct = runs[metrics] * 100
    g = pd.concat([runs[keys + ["seed"]], pct], axis=1).groupby(keys, sort=False, dropna=False)
    out = pd.concat([g[metrics].mean().add_suffix("_mean"), g[metrics].std().add_suffix("_std"),
                     g.seed.count().rename("seeds")], axis=1)
    if "labelled_images" in runs:
        out["labelled_images"] = runs.groupby(keys, sort=False, dropna=False).labelled_images.mean()
    order = [c for m in metrics for c in (f"{m}_mean", f"{m}_std")] + ["seeds"] + (
        ["labelled_images"] if "labelled_images" in out else [])
    return sort_cells(out[order].reset_index(), keys).reset_index(drop=True)


def data_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Study C's table (tidy, for the CSV): one row per cell, its axes, each test metric's mean
    and std over seeds (%, `seed_stats`) and the paired Δ mIoU vs no pretraining of the same
    backbone and downstream cell (delta_mean, delta_se, delta_seeds, beyond_2se; `pretrain_delta`),
    rows by downstream cell, backbone, then pretraining data (the baseline first), objective, size."""
    stats = seed_stats(runs, metric_columns(runs))
    pre = pretrain_delta(runs)
    keys = [k for k in cells(runs) if k in pre]
    if len(pre):
        pre = pre.rename(columns={"seeds": "delta_seeds"})[keys + ["delta_mean", "delta_se", "delta_seeds",
                                                                  "beyond_2se"]]
        stats = stats.merge(pre, on=keys, how="left")
        stats["beyond_2se"] = stats.beyond_2se.eq(True)  # False where unpaired (the baseline itself)
    else:
        stats = stats.assign(delta_mean=np.nan, delta_se=np.nan, delta_seeds=np.nan, beyond_2se=False)
    rank = {d: i for i, d in enumerate(DATA_ORDER)}
    down = [k for k in cells(stats, "backbone", "objective", "data", "pretrain", "finetune")]
    order = stats.assign(_rank=stats.data.map(lambda d: rank.get(d, len(rank))))
    order = sort_cells(order, [*down, "finetune", "backbone", "_rank", "data", "objective", "pretrain"])
    return order.drop(columns="_rank").reset_index(drop=True)


def _class_name(column: str) -> str:
    return column.removeprefix("iou_").replace("_", " ")


def _data_markdown(t: pd.DataFrame) -> pd.DataFrame:
    """Study C's table for reading: the varying axes, the pretraining (data set; `none` for the
    baseline), every metric as mean ± std, the paired Δ vs no pretraining (mean ± s.e.), seeds."""
    varying = {k: t[k].values for k in cells(t, "data", "pretrain", "finetune") if t[k].nunique() > 1}
    ious = [c.removesuffix("_mean") for c in t.columns if c.startswith("iou_") and c.endswith("_mean")]
    delta = ["" if not n or np.isnan(m) else _pm(m, se) + (" *" if b else "")
             for m, se, b, n in zip(t.delta_mean, t.delta_se, t.beyond_2se, t.pretrain)]
    return pd.DataFrame({
        **varying,
        "Pre-train data": t.data.values,
        "# Pre-train": [size_label(n) for n in t.pretrain],
        "# Fine-tune": [budget_label(v) for v in t.finetune],
        "mIoU (%)": [_pm(m, s) for m, s in zip(t.miou_mean, t.miou_std)],
        "Δ mIoU vs none (%)": delta,
        "Accuracy (%)": [_pm(m, s) for m, s in zip(t.pixel_acc_mean, t.pixel_acc_std)],
        **{f"IoU {_class_name(c)} (%)": [_pm(m, s) for m, s in zip(t[f"{c}_mean"], t[f"{c}_std"])] for c in ious},
        "Seeds": t.seeds.values,
    })


def decoder_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Study D's table (tidy, for the CSV): per cell, test mIoU and pixel accuracy mean and std
    over seeds (%), seeds and labelled images; rows by the other axes, objective (the baseline
    first, `OBJECTIVE_ORDER`), decoder width, then label budget (counts, then fractions, each by size)."""
    stats = seed_stats(runs, ["miou", "pixel_acc"])
    other = cells(stats, "objective", "data", "pretrain", "decoder", "finetune")
    return sort_cells(stats, [*other, "objective", "data", "pretrain", "decoder", "finetune"]).reset_index(drop=True)


def _decoder_markdown(t: pd.DataFrame) -> pd.DataFrame:
    """Study D's table for reading, as seed 004's Table 6: a row per objective × decoder width
    (and any other varying axis), a column per label budget, each cell `mIoU mean ± std (n)`."""
    pre = t[t.pretrain > 0]  # data and size where they vary between pretrainings (not only vs none)
    rows = [k for k in cells(t, "finetune") if k in ("objective", "decoder")
            or (pre[k].nunique() > 1 if k in ("data", "pretrain") else t[k].nunique() > 1)]
    if t.duplicated(rows + ["finetune"]).any():  # cells the short row keys would merge: name every axis
        rows = cells(t, "finetune")
    budgets = sorted(t.finetune.unique(), key=budget_order)
    images = t.groupby("finetune", sort=False).labelled_images.agg(["min", "max"]) if "labelled_images" in t else None
    heads = {}
    for b in budgets:
        head = budget_label(b)
        if images is not None and budget_kind(b) == "fraction" and images.loc[b].notna().all():
            lo, hi = (int(round(v)) for v in images.loc[b])
            head += f" ({lo} images)" if lo == hi else f" ({lo}–{hi} images)"
        heads[b] = head
    t = t.assign(_cell=[f"{_pm(m, s)} ({n})" for m, s, n in zip(t.miou_mean, t.miou_std, t.seeds)])
    wide = t.pivot_table(index=rows, columns="finetune", values="_cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=budgets).fillna("")
    out = wide.reset_index()
    keys = out[rows].copy()
    if "pretrain" in keys:
        keys["pretrain"] = [size_label(n) for n in keys.pretrain]
    names = {"objective": "Objective", "decoder": "Decoder width", "pretrain": "# Pre-train"}
    return pd.concat([keys.rename(columns=names), out[budgets].rename(columns=heads)], axis=1)


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
