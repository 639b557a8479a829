"""Figures (seaborn): mIoU vs label budget, Δ mIoU from the intermediate step, Δ probe −
fine-tune and mIoU vs label quality, the pretraining objectives' reconstructions (masked image
modelling) or denoisings (DeP, DDeP), and segmentation examples. Each saved as PNG and PDF.

A label budget (`finetune`) is a count of images or a fraction of the fine-tune pool ("5%"):
each is drawn on a log x axis by its value, ticked with the grid's budgets; a grid holding both
gets a panel per kind rather than one axis mixing images and percentages."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from sslseg.io import Output, UserError, atomic_path  # noqa: E402
from sslseg.report.tables import (  # noqa: E402
    budget_kind, budget_label, budget_order, budget_value, cells, delta, line_labels, probe_delta, read_runs,
    sort_cells,
)

TRIMAP_COLOURS = np.array([[230, 80, 60], [40, 40, 60], [250, 220, 90]], np.uint8)  # pet, background, border


def save(fig: plt.Figure, out: str | Path, dpi: int = 150) -> None:
    """Write `out` (PNG) and the same figure as PDF beside it, both atomically."""
    out = Path(out)
    for path in (out, out.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _size_axis(ax: plt.Axes, finetune: pd.Series) -> None:
    """Label budgets of one kind on a log x axis by their value (`budget_value`), ticked at
    exactly the budgets of the grid: image counts (`250`) or fractions of the pool (`5%`)."""
    kinds = {budget_kind(v) for v in finetune}
    if len(kinds) > 1:
        raise ValueError("one x axis cannot hold both image counts and fractions of the pool: facet by kind")
    ax.set_xscale("log")
    sizes = sorted(finetune.unique(), key=budget_order)
    ax.set_xticks([budget_value(v) for v in sizes], [budget_label(v) for v in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled images, % of the fine-tune pool (log scale)" if kinds == {"fraction"}
                  else "fine-tune images (log scale)")


def _budgets(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with `x`, the value each row is plotted at, and `budget`, its kind (count, fraction)."""
    return df.assign(x=df.finetune.map(budget_value).astype(float), budget=df.finetune.map(budget_kind))


BUDGET_TITLES = {"count": "image counts", "fraction": "fractions of the pool"}


def _title(keys: list[str], values: tuple) -> str:
    """A panel's title from its facet values: `full labels`, `fractions of the pool`, ..."""
    words = {"labels": "{} labels", "budget": "{}", "backbone": "{}"}
    return ", ".join(words.get(k, k + " {}").format(BUDGET_TITLES.get(v, v) if k == "budget" else v)
                     for k, v in zip(keys, values))


def figures(runs: str, out: Output, settings: dict, delta_out: Output | None = None) -> None:
    """Fig. 1 to `out` and, with `delta_out`, Fig. 2. settings: style, dpi."""
    miou_figure(runs, out, settings)
    if delta_out:
        delta_figure(runs, delta_out, settings)


def _panels(n: int, size: tuple[float, float] = (6.5, 4.2)) -> tuple[plt.Figure, list[plt.Axes]]:
    """A near-square grid of `n` panels sharing the y axis."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, sharey=True,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by pretraining size, then the other axes: lines and panels in a fixed order."""
    return sort_cells(df, ["pretrain", *cells(df, "pretrain")])


def _facet(df: pd.DataFrame) -> list[str]:
    """The panel keys: "labels" when the runs hold several label qualities, so a line never
    averages over label qualities (and the hue stays readable), and "budget" (a `_budgets`
    column) when they hold both image counts and fractions of the pool."""
    return [k for k in ("labels", "budget") if k in df and df[k].nunique() > 1]


def _by(df: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per value of `keys`, in order of appearance; one untitled group without keys."""
    if not keys:
        return [("", df)]
    return [(_title(keys, k), part) for k, part in df.groupby(keys, sort=False)]


def _names(df: pd.DataFrame, drop: list[str]) -> list[str]:
    """`line_labels` ignoring the `drop` columns, + "+ int." on runs with the intermediate step when
    both occur (line_labels leaves the intermediate axis to the caller)."""
    names = line_labels(df.drop(columns=drop))
    if "intermediate" in df and df.intermediate.nunique() > 1:
        names = [f"{n} + int." if i else n for n, i in zip(names, df.intermediate)]
    return names


def _delta_axis(ax: plt.Axes, lines: list[tuple[str, tuple, pd.DataFrame]], finetune: pd.Series,
                ylabel: str) -> None:
    """Paired Δ rows (delta_mean, delta_se) against fine-tune size: one line per (label, colour,
    rows), s.e. error bars, a zero line (Fig. 2 and the probe − fine-tune figure)."""
    for label, colour, part in lines:
        part = part.sort_values("finetune", key=lambda c: c.map(budget_order))
        ax.errorbar(part.finetune.map(budget_value), part.delta_mean, yerr=part.delta_se.fillna(0), marker="o",
                    capsize=3, color=colour, label=label)
    ax.axhline(0, color="grey", lw=1)
    _size_axis(ax, finetune)
    ax.set_ylabel(ylabel)


LEGEND_INSIDE = 8  # the most lines whose legend stays inside the first panel (study A's figures)


def miou_figure(runs_csv: str, out: str, settings: dict) -> None:
    """Fig. 1: test mIoU vs label budget, a line per pretraining (objective, data set, size, and
    backbone, adaptation, decoder width where they vary: `line_labels`), error bars = std over
    seeds; a panel per label quality when there are several, and per budget kind (image counts,
    fractions of the pool) when the grid holds both."""
    sns.set_theme(style=settings["style"])
    runs = _budgets(_ordered(read_runs(runs_csv)))
    facet = _facet(runs)
    runs = runs.assign(**{
        "mIoU (%)": runs.miou * 100,
        "pretraining": line_labels(runs.drop(columns=[f for f in facet if f in cells(runs)])),
        "intermediate": np.where(runs.intermediate == 1, "with", "without"),
    })
    order = list(dict.fromkeys(runs.pretraining))
    # a line style per intermediate step only when the grid has both: a legend entry for runs
    # that do not exist would say the figure holds them
    styles = [s for s in ("without", "with") if s in set(runs.intermediate)]
    style = ({"style": "intermediate", "style_order": styles, "markers": True, "dashes": True}
             if len(styles) > 1 else {"marker": "o"})
    heading = f"mIoU vs labelled images ({runs.seed.nunique()} seeds"
    heading += ", every run after the intermediate step)" if styles == ["with"] else ")"
    panels = _by(runs, facet)
    fig, axes = _panels(len(panels))
    beside = len(order) > LEGEND_INSIDE  # a long legend would hide the lines: beside the last panel
    for i, (ax, (title, part)) in enumerate(zip(axes, panels)):
        sns.lineplot(data=part, x="x", y="mIoU (%)", hue="pretraining", hue_order=order, **style,
                     errorbar="sd", err_style="bars", legend=i == (len(panels) - 1 if beside else 0), ax=ax)
        _size_axis(ax, runs.finetune[runs.budget.isin(part.budget)])
        ax.set_title(title or heading)
    if beside:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    if facet:
        fig.suptitle(heading)
    save(fig, out, settings["dpi"])


def delta_figure(runs_csv: str, out: str, settings: dict) -> None:
    """Fig. 2: Δ mIoU (with − without intermediate), mean ± standard error over seeds;
    a panel per label quality when there are several."""
    sns.set_theme(style=settings["style"])
    d = _budgets(_ordered(delta(read_runs(runs_csv))))
    facet = _facet(d)
    d = d.assign(pretraining=line_labels(d.drop(columns=[f for f in facet if f in cells(d)])))
    lines = [k for k in cells(d, "finetune", *facet) if d[k].nunique() > 1 or k == "pretrain"]
    colours = dict(zip(dict.fromkeys(d.pretraining), sns.color_palette(n_colors=max(1, d.pretraining.nunique()))))
    panels = _by(d, facet)
    fig, axes = _panels(len(panels))
    for ax, (title, panel) in zip(axes, panels):
        _delta_axis(ax, [(part.pretraining.iloc[0], colours[part.pretraining.iloc[0]], part)
                         for _, part in panel.groupby(lines, sort=False)],
                    d.finetune[d.budget.isin(panel.budget)], "Δ mIoU (%), with − without intermediate")
        ax.set_title(title)
    axes[0].legend(title="pretraining")
    save(fig, out, settings["dpi"])


def label_figures(runs: str, settings: dict, quality: str | None = None, out: Output | None = None,
                  delta_out: Output | None = None) -> None:
    """Study B's figures: with `quality` (label_quality's CSV), mIoU vs measured label quality to
    `out`; with `delta_out`, Δ mIoU probe − fine-tune vs fine-tune size. settings: style, dpi."""
    if out:
        if not quality:
            raise UserError("label_figures: --out (mIoU vs label quality) needs --quality, the label_quality CSV")
        fig_label_quality(runs, quality, out, settings)
    if delta_out:
        fig_probe_delta(runs, delta_out, settings)


def fig_probe_delta(runs_csv: str, out: str, settings: dict) -> None:
    """Δ mIoU (probe − fine-tune, paired by seed) vs fine-tune size, a line per label quality,
    error bars = s.e. over seeds; a panel per pretraining (and backbone, intermediate step)."""
    sns.set_theme(style=settings["style"])
    d = probe_delta(read_runs(runs_csv))
    if d.empty:
        raise UserError(f"{runs_csv}: no runs with both adaptations (finetune and probe) to pair; "
                        "the probe Δ figure needs both in grid.adaptations")
    d = _budgets(_ordered(d))
    d = d.assign(panel=_names(d, ["labels"]))
    kinds = list(dict.fromkeys(d["labels"]))
    colours = dict(zip(kinds, sns.color_palette(n_colors=len(kinds))))
    mixed = ["budget"] if d.budget.nunique() > 1 else []  # counts and fractions: a panel each
    panels = _by(d, [k for k in cells(d, "labels", "finetune") if d[k].nunique() > 1 or k == "pretrain"] + mixed)
    fig, axes = _panels(len(panels), (4.5, 3.6))
    for ax, (_, panel) in zip(axes, panels):
        _delta_axis(ax, [(kind, colours[kind], line) for kind, line in panel.groupby("labels", sort=False)],
                    d.finetune[d.budget.isin(panel.budget)], "Δ mIoU (%), probe − fine-tune")
        ax.set_title(f"pretraining: {panel.panel.iloc[0]}"
                     + (f" ({BUDGET_TITLES[panel.budget.iloc[0]]})" if mixed else ""))
    axes[-1].legend(title="labels", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"Probe − fine-tune, mean ± s.e. over {d.seeds.max()} seeds")
    save(fig, out, settings["dpi"])


def label_axis(quality: pd.DataFrame, kinds: set[str]) -> tuple[list[str], list[str]]:
    """The label kinds in order of the fraction of pixels they label correctly (labelled fraction
    × pixel accuracy; full first), each with a tick naming its measured quality."""
    correct = {"full": 1.0, **(quality.labelled_fraction * quality.pixel_acc).to_dict()}
    order = sorted(kinds, key=lambda k: -correct[k])
    return order, [k if k == "full" else f"{k}\nmIoU {quality.miou[k]:.0%}\n"
                   f"{quality.labelled_fraction[k]:.1%} labelled" for k in order]


def fig_label_quality(runs_csv: str, quality_csv: str, out: str, settings: dict) -> None:
    """Test mIoU per label kind, kinds ordered by the fraction of pixels they label correctly
    (full first) and named with their measured quality; a line per pretraining × adaptation
    (solid fine-tune, dashed probe), error bars = s.e. over seeds; a panel per fine-tune size.
    The kinds are categories, not points on one quality scale: scribbles and points are exact
    where they label (mIoU 1 there) but label few pixels, noisy masks label all, some wrongly."""
    sns.set_theme(style=settings["style"])
    runs = _ordered(read_runs(runs_csv))
    q = pd.read_csv(quality_csv).set_index("kind")
    if missing := sorted(set(runs["labels"]) - set(q.index) - {"full"}):
        raise UserError(f"{quality_csv}: no measured quality for labels {', '.join(missing)}; "
                        "pass the label_quality CSV of the same grid")
    kinds, ticks = label_axis(q, set(runs["labels"]))
    runs = runs.assign(x=runs["labels"].map({k: i for i, k in enumerate(kinds)}), miou_pct=runs.miou * 100,
                       colour=_names(runs, ["labels", "adaptation"]))
    colours = dict(zip(dict.fromkeys(runs.colour), sns.color_palette(n_colors=runs.colour.nunique())))
    lines = cells(runs, "labels", "finetune")
    panels = [(size, part) for size, part in
              sort_cells(runs, ["finetune"]).groupby("finetune", sort=False)]
    fig, axes = _panels(len(panels), (1.2 * len(kinds) + 1.5, 3.6))
    for ax, (size, panel) in zip(axes, panels):
        for _, line in panel.groupby(lines, sort=False):
            stats = line.groupby("x").miou_pct.agg(["mean", "sem"]).reset_index()  # sem: std ddof 1 / √n
            probe = line.adaptation.iloc[0] == "probe"
            name = line.colour.iloc[0] + (" (probe)" if probe else "")
            ax.errorbar(stats.x, stats["mean"], yerr=stats["sem"].fillna(0), marker="o", capsize=3,
                        ls="--" if probe else "-", color=colours[line.colour.iloc[0]], label=name)
        ax.set_xticks(range(len(kinds)), ticks, fontsize=7)
        ax.set_xlabel("labels trained on (measured quality)")
        ax.set_ylabel("test mIoU (%)")
        ax.set_title(f"{budget_label(size)} of the fine-tune pool" if budget_kind(size) == "fraction"
                     else f"{size} fine-tune images")
    axes[-1].legend(title="pretraining", fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"mIoU by label quality, mean ± s.e. over {runs.seed.nunique()} seeds")
    save(fig, out, settings["dpi"])


def image_grid(rows: list[list[np.ndarray]], titles: list[str], out: str, dpi: int) -> None:
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.0 * len(titles), 2.0 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            axes[r, c].imshow(img)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(titles[c])
    fig.tight_layout()
    save(fig, out, dpi)


def _to_image(x: torch.Tensor) -> np.ndarray:
    from sslseg.data.augment import denormalize

    # clamped: a noisy input or a reconstruction may leave [0, 1], and uint8 would wrap it around
    return (denormalize(x[None])[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)


@torch.no_grad()
def reconstructions(ckpt: str, pack: str, out: Output, settings: dict, report: dict) -> None:
    """What a pretraining objective learned to do, for the first images of a pack: masked image
    modelling (outputs "mask": SimMIM, MAE) original / masked / reconstructed (visible patches
    pasted back); denoising (outputs "denoised": DeP, DDeP) clean / noisy input / denoised (the
    clean image recovered from the predicted noise); any other objective original / its image
    output "pred". settings: the pretraining stage's (objective, model, its settings); report:
    examples, dpi."""
    from sslseg.data.augment import augment
    from sslseg.data.pack import read_pack
    from sslseg.models.checkpoint import load_model, read_checkpoint
    from sslseg.models.predict import trained_settings
    from sslseg.objectives import build_objective

    state = read_checkpoint(ckpt)
    settings = trained_settings(ckpt, state.get("meta", {}), settings, ("pretrain",), "pretrain/.../model.pt")
    model = build_objective(settings["objective"], settings)
    load_model(model, ckpt, state)
    model.eval()
    images = torch.as_tensor(read_pack(pack, slice(0, report["examples"]), ("images",))["images"])
    size = settings["model"]["image_size"]
    o = max(0, (images.shape[1] - size) // 2)  # centre crop of the pack, as the model sees it
    x, _ = augment(images[:, o:o + size, o:o + size], None, size, None)
    _, outputs = model({"images": x}, torch.Generator().manual_seed(0))
    columns, titles = example_columns(x, outputs, settings)
    rows = [[_to_image(c[i]) for c in columns] for i in range(len(x))]
    image_grid(rows, titles, out, report["dpi"])


def example_columns(x: torch.Tensor, outputs: dict, settings: dict) -> tuple[list[torch.Tensor], list[str]]:
    """The image columns (each normalised (B, 3, H, W)) and their titles of a reconstruction
    figure, by what the objective's `outputs` hold (see `reconstructions`)."""
    if "denoised" in outputs:  # DeP, DDeP: x̃ = √γ·x + √(1−γ)·ε, the model predicts ε
        gamma = outputs["gamma"].flatten().float()
        sigma = ((1 - gamma) / gamma).sqrt()
        same = torch.allclose(sigma, sigma[0])
        level = f"σ = {sigma[0]:.2f}" if same else f"σ {sigma.min():.2f}–{sigma.max():.2f}"
        return [x, outputs["noisy"], outputs["denoised"]], ["clean", f"noisy ({level})", "denoised (predicted)"]
    if "mask" in outputs:  # masked image modelling: a mask per patch
        size, cells = x.shape[-1], outputs["mask"].shape[1]
        p = size // math.isqrt(cells)
        mask = outputs["mask"].reshape(-1, size // p, size // p)
        pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None].float()
        masked = x * (1 - pixel_mask)
        pasted = x * (1 - pixel_mask) + outputs["pred"] * pixel_mask
        return [x, masked, pasted], ["original", "masked", "reconstructed"]
    pred = outputs.get("pred")
    if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
        raise UserError(f"reconstructions: objective {settings['objective']!r} returns neither a patch mask "
                        "(\"mask\") nor a denoised image (\"denoised\") nor an image (\"pred\" shaped like its "
                        f"input); its outputs: {', '.join(outputs) or 'none'}")
    return [x, pred], ["original", "output"]


def segmentations(ckpt: str, pets: str, rows: str, out: Output, settings: dict, report: dict) -> None:
    """Input / truth / prediction for the first test images. settings: evaluation's; report: examples, dpi."""
    from sslseg.data.pack import read_pack
    from sslseg.data.splits import read_rows
    from sslseg.models.predict import load_for_eval, predict_classes

    test_rows = np.sort(read_rows(rows))[: report["examples"]]
    arrays = read_pack(pets, test_rows)
    model, settings = load_for_eval(ckpt, settings)
    size = settings["model"]["image_size"]
    pred = predict_classes(model, arrays["images"], settings)
    truth = torch.nn.functional.interpolate(torch.as_tensor(arrays["masks"])[:, None].float(), size=(size, size),
                                            mode="nearest")[:, 0].long()
    images = torch.nn.functional.interpolate(torch.as_tensor(arrays["images"]).permute(0, 3, 1, 2).float(),
                                             size=(size, size), mode="bilinear").permute(0, 2, 3, 1)
    grid = [[images[i].clamp(0, 255).byte().numpy(), TRIMAP_COLOURS[truth[i].numpy()], TRIMAP_COLOURS[pred[i].numpy()]]
            for i in range(len(test_rows))]
    image_grid(grid, ["input", "truth", "prediction"], out, report["dpi"])
