"""Figures (seaborn): mIoU vs fine-tune size, Δ mIoU from the intermediate step,
SimMIM reconstructions and segmentation examples. Each saved as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from sslseg.io import Output, UserError, atomic_path  # noqa: E402
from sslseg.report.tables import cells, delta, line_labels  # noqa: E402

TRIMAP_COLOURS = np.array([[230, 80, 60], [40, 40, 60], [250, 220, 90]], np.uint8)  # pet, background, border


def save(fig: plt.Figure, out: str | Path, dpi: int = 150) -> None:
    """Write `out` (PNG) and the same figure as PDF beside it, both atomically."""
    out = Path(out)
    for path in (out, out.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _size_axis(ax: plt.Axes, finetune: pd.Series) -> None:
    """Fine-tune sizes on a log x axis, ticked at exactly the sizes of the grid."""
    ax.set_xscale("log")
    sizes = sorted(finetune.unique())
    ax.set_xticks(sizes, [str(x) for x in sizes])
    ax.minorticks_off()
    ax.set_xlabel("fine-tune images (log scale)")


def figures(runs: str, out: Output, settings: dict, delta_out: Output | None = None) -> None:
    """Fig. 1 to `out` and, with `delta_out`, Fig. 2. settings: style, dpi."""
    miou_figure(runs, out, settings)
    if delta_out:
        delta_figure(runs, delta_out, settings)


def miou_figure(runs_csv: str, out: str, settings: dict) -> None:
    """Fig. 1: test mIoU vs fine-tune size, a line per pretraining, error bars = std over seeds."""
    sns.set_theme(style=settings["style"])
    runs = pd.read_csv(runs_csv).sort_values(["pretrain"], kind="stable")
    runs = runs.assign(**{
        "mIoU (%)": runs.miou * 100,
        "pretraining": line_labels(runs),
        "intermediate": np.where(runs.intermediate == 1, "with", "without"),
    })
    order = list(dict.fromkeys(runs.pretraining))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.lineplot(data=runs, x="finetune", y="mIoU (%)", hue="pretraining", hue_order=order,
                 style="intermediate", style_order=["without", "with"], markers=True, dashes=True,
                 errorbar="sd", err_style="bars", ax=ax)
    _size_axis(ax, runs.finetune)
    ax.set_title(f"mIoU vs labelled images ({runs.seed.nunique()} seeds)")
    save(fig, out, settings["dpi"])


def delta_figure(runs_csv: str, out: str, settings: dict) -> None:
    """Fig. 2: Δ mIoU (with − without intermediate), mean ± standard error over seeds."""
    sns.set_theme(style=settings["style"])
    d = delta(pd.read_csv(runs_csv)).sort_values(["pretrain"], kind="stable")
    d = d.assign(pretraining=line_labels(d))
    lines = [k for k in cells(d, "finetune") if d[k].nunique() > 1 or k == "pretrain"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups = list(d.groupby(lines, sort=False))
    palette = sns.color_palette(n_colors=max(1, len(groups)))
    for colour, (_, part) in zip(palette, groups):
        ax.errorbar(part.finetune, part.delta_mean, yerr=part.delta_se.fillna(0), marker="o", capsize=3,
                    color=colour, label=part.pretraining.iloc[0])
    ax.axhline(0, color="grey", lw=1)
    _size_axis(ax, d.finetune)
    ax.set_ylabel("Δ mIoU (%), with − without intermediate")
    ax.legend(title="pretraining")
    save(fig, out, settings["dpi"])


def _image_grid(rows: list[list[np.ndarray]], titles: list[str], out: str, dpi: int) -> None:
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

    return (denormalize(x[None])[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@torch.no_grad()
def reconstructions(ckpt: str, pack: str, out: Output, settings: dict, report: dict) -> None:
    """Original / masked / reconstructed (visible patches pasted back) for the first images of a pack.
    settings: the pretraining stage's (objective, model, its settings); report: examples, dpi."""
    from sslseg.data.augment import augment
    from sslseg.data.pack import read_pack
    from sslseg.models.checkpoint import load_model, read_checkpoint
    from sslseg.objectives import build_objective

    state = read_checkpoint(ckpt)
    meta = state.get("meta", {})
    if meta.get("stage") != "pretrain":
        raise UserError(f"{ckpt}: written by the {meta.get('stage', 'unknown')!r} stage; reconstructions need a "
                        "pretraining checkpoint (pretrain/.../model.pt)")
    settings = {**settings, **meta.get("settings", {})}  # the objective and model it was trained with
    model = build_objective(settings["objective"], settings)
    load_model(model, ckpt, state)
    model.eval()
    images = torch.as_tensor(read_pack(pack, slice(0, report["examples"]), ("images",))["images"])
    size, p = settings["model"]["image_size"], settings["model"]["patch_size"]
    o = max(0, (images.shape[1] - size) // 2)  # centre crop of the pack, as the model sees it
    x, _ = augment(images[:, o:o + size, o:o + size], None, size, None)
    _, outputs = model({"images": x}, torch.Generator().manual_seed(0))
    mask = outputs["mask"].reshape(-1, size // p, size // p)
    pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None].float()
    masked = x * (1 - pixel_mask)
    pasted = x * (1 - pixel_mask) + outputs["pred"] * pixel_mask
    rows = [[_to_image(x[i]), _to_image(masked[i]), _to_image(pasted[i])] for i in range(len(x))]
    _image_grid(rows, ["original", "masked", "reconstructed"], out, report["dpi"])


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
    _image_grid(grid, ["input", "truth", "prediction"], out, report["dpi"])
