"""The report of the all-objectives grid: mIoU vs label budget a line per objective (and decoder
width) with error bars over seeds, on counts, fractions or both; study C's table by pretraining
data; study D's objective × decoder width × label budget table; a reconstruction (or denoising)
figure per pretraining objective, and the workflow's outputs and captions for them."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, copy_workflow, planned_jobs, snakemake
from sslseg.report import figures
from sslseg.report.tables import budget_label, budget_order, budget_value, collect, line_labels, read_runs, tables

SETTINGS = {"style": "whitegrid", "dpi": 40}
BASE = {"none": 0.30, "simmim": 0.40, "mae": 0.42, "dep": 0.44, "ddep": 0.46}  # mIoU by objective
CLASSES = ("pet", "background", "border")


def _row(objective="none", data=None, pretrain=None, backbone="viny", decoder=1, finetune=250, seed=0,
         intermediate=0, adaptation="finetune", labels="full", miou=0.5, **extra) -> dict:
    pretrain = (0 if objective == "none" else 100) if pretrain is None else pretrain
    data = data or ("none" if objective == "none" else "random")
    row = dict(backbone=backbone, objective=objective, data=data, pretrain=pretrain, intermediate=intermediate,
               adaptation=adaptation, labels=labels, finetune=finetune, seed=seed, decoder=decoder, miou=miou,
               pixel_acc=0.5 + miou / 2, **{f"iou_{c}": miou + 0.1 * i - 0.1 for i, c in enumerate(CLASSES)})
    return {**row, **extra}


def _all_objectives(budgets=("1%", "5%", "10%")) -> pd.DataFrame:
    """Every objective; dep and ddep at decoder widths 1 and 2 (width w adds w points); mIoU
    + 0.02 per seed, so the std over seeds 0, 1, 2 is 2 points in every cell."""
    rows = []
    for objective, budget, seed in itertools.product(BASE, budgets, (0, 1, 2)):
        for width in ((1, 2) if objective in ("dep", "ddep") else (1,)):
            rows.append(_row(objective, decoder=width, finetune=budget, seed=seed,
                             miou=BASE[objective] + 0.01 * width + 0.001 * budget_value(budget) + 0.02 * seed))
    return pd.DataFrame(rows)


@pytest.fixture
def captured(monkeypatch) -> list:
    """The figures a plotting function draws, kept open instead of saved."""
    figs: list = []
    monkeypatch.setattr(figures, "save", lambda fig, out, dpi=150: figs.append(fig))
    yield figs
    for fig in figs:
        figures.plt.close(fig)


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


# --- 1. mIoU vs label budget, a line per objective -------------------------------------------

def test_miou_figure_draws_a_line_per_objective_and_decoder_width_with_std_over_seeds(tmp_path, captured):
    runs = _all_objectives()
    runs.to_csv(tmp_path / "runs.csv", index=False)
    figures.miou_figure(str(tmp_path / "runs.csv"), str(tmp_path / "m.png"), SETTINGS)
    ax = captured[0].axes[0]
    lines = ["none", "simmim 100", "mae 100", "dep 100", "dep 100 dec×2", "ddep 100", "ddep 100 dec×2"]
    assert [t for t in _legend(ax) if t in lines] == lines  # never averaged; in the studies' order
    # fractions on a log axis by their value, ticked as the grid writes them
    assert ax.get_xscale() == "log" and _ticks(ax) == ["1%", "5%", "10%"] and "% of the" in ax.get_xlabel()
    drawn = {tuple(np.round(np.asarray(c.lines[0].get_ydata(), float), 6)) for c in ax.containers}
    for objective, width in [("none", 1), ("mae", 1), ("dep", 1), ("dep", 2), ("ddep", 2)]:
        mean = [round((BASE[objective] + 0.01 * width + 0.001 * budget_value(b) + 0.02) * 100, 6)
                for b in ("1%", "5%", "10%")]
        assert tuple(mean) in drawn  # each line at its own mean over seeds
    assert len(ax.containers) == len(lines)
    for container in ax.containers:  # error bars: mean ± std over seeds (2 points, ddof 1)
        assert list(container.lines[0].get_xdata()) == [1.0, 5.0, 10.0]
        for (x0, lo), (x1, hi) in container.lines[2][0].get_segments():
            assert hi - lo == pytest.approx(2 * 2.0)


def test_the_intermediate_step_is_in_the_legend_only_when_the_grid_has_both(tmp_path, captured):
    for sizes, steps in (((300,), (0,)), ((100, 300), (0, 1)), ((100, 300), (1,))):
        rows = [_row(o, finetune=n, seed=s, intermediate=i) for o, n, s, i in
                itertools.product(("none", "simmim"), sizes, (0, 1), steps)]
        pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
        figures.miou_figure(str(tmp_path / "runs.csv"), str(tmp_path / "m.png"), SETTINGS)
    without, both, every = (fig.axes[0] for fig in captured)
    assert not {"intermediate", "without", "with"} & set(_legend(without)) and "none" in _legend(without)
    means = [line for line in without.lines if line.get_label().startswith("_child")]
    assert [line.get_marker() for line in means] == ["o", "o"]  # a grid of one size shows its means
    assert _legend(both)[-3:] == ["intermediate", "without", "with"] and "intermediate" not in both.get_title()
    assert "with" not in _legend(every) and "every run after the intermediate step" in every.get_title()


def test_line_labels_keep_backbones_data_sets_and_widths_apart():
    rows = [_row("none", backbone=b, decoder=w) for b in ("viny", "resnet50") for w in (1, 3)]
    rows += [_row("mae", data=d) for d in ("in_domain", "out_domain", "mixed")]
    labels = line_labels(pd.DataFrame(rows))
    assert labels == ["viny none", "viny none dec×3", "resnet50 none", "resnet50 none dec×3",
                      "viny in_domain 100", "viny out_domain 100", "viny mixed 100"]


def test_counts_and_fractions_in_one_grid_get_a_panel_each(tmp_path, captured):
    rows = [_row(o, finetune=n, seed=s, intermediate=i, adaptation=a, miou=0.4 + 0.01 * s + 0.02 * i)
            for o, n, s, i, a in itertools.product(("none", "mae"), (500, "5%", 250, "1%"), (0, 1), (0, 1),
                                                   ("finetune", "probe"))]
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert read_runs(path).finetune.map(type).value_counts().to_dict() == {int: 32, str: 32}  # "250" → 250
    figures.miou_figure(str(path), str(tmp_path / "m.png"), SETTINGS)
    figures.delta_figure(str(path), str(tmp_path / "d.png"), SETTINGS)
    figures.fig_probe_delta(str(path), str(tmp_path / "p.png"), SETTINGS)
    miou, delta, probe = captured
    assert [(_ticks(ax), ax.get_title()) for ax in miou.axes] == [
        (["250", "500"], "image counts"), (["1%", "5%"], "fractions of the pool")]
    assert [_ticks(ax) for ax in delta.axes] == [["250", "500"], ["1%", "5%"]]
    assert sorted(tuple(_ticks(ax)) for ax in probe.axes if ax.axison) == [("1%", "5%")] * 4 + [("250", "500")] * 4
    tables(str(path), str(tmp_path / "tables" / "study"))
    table1 = pd.read_csv(tmp_path / "tables" / "study" / "table1.csv")
    assert list(dict.fromkeys(table1["# Fine-tune"].astype(str))) == ["250", "500", "1%", "5%"]  # counts, then %


def test_budgets_sort_counts_then_fractions_and_collect_sorts_a_mixed_grid(tmp_path):
    assert sorted(["10%", "5%", 250, "1%", 4, "0.5pct"], key=budget_order) == [4, 250, "0.5pct", "1%", "5%", "10%"]
    assert [budget_label(v) for v in (250, "5%", "0.5pct", "250")] == ["250", "5%", "0.5%", "250"]
    paths = []
    for i, n in enumerate(["10%", 500, "5%", 250]):  # metrics.json: counts as ints, fractions as text
        paths.append(tmp_path / f"{i}.json")
        run = {k: v for k, v in _row(finetune=n).items() if k not in ("miou", "pixel_acc") and "iou" not in k}
        paths[-1].write_text(json.dumps({"run": run, "miou": 0.5, "pixel_acc": 0.7, "iou": {"pet": 0.5}}))
    df = collect([str(p) for p in paths], str(tmp_path / "runs.csv"))
    assert list(df.finetune) == [250, 500, "5%", "10%"]
    assert list(read_runs(tmp_path / "runs.csv").finetune) == [250, 500, "5%", "10%"]


def test_aggregate_lists_every_run_the_workflow_makes_from_the_grid_view(tmp_path):
    """With a UNet head every init has each decoder width: the heads (in sslseg.grid.view, what
    the aggregate rule passes) decide the runs, which the bare grid cannot tell."""
    from sslseg import grid
    from sslseg.config import load_config, merge, validate
    from sslseg.report.tables import aggregate

    cfg = validate(merge(load_config(ROOT / "config.yaml"), {
        "finetune": {"head": "unet", "batch_size": 4}, "pretrain": {"batch_size": 4},
        "grid": {"backbones": ["viny"], "objectives": ["simmim", "dep"], "pretrain_sizes": [0, 16],
                 "intermediate": [False], "adaptations": ["finetune"], "labels": ["full"], "finetune_sizes": [4],
                 "seeds": [0], "decoder_widths": [1, 2]}}))
    runs = grid.runs(cfg)
    for r in runs:
        path = tmp_path / grid.run_dir(r) / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"run": grid.coordinates(r), "miou": 0.5, "pixel_acc": 0.7, "iou": {}}))
    df = aggregate(str(tmp_path), json.loads(json.dumps(grid.view(cfg))), str(tmp_path / "runs.csv"))
    assert len(df) == len(runs) == 3 * 2 and sorted(df.decoder) == [1, 1, 1, 2, 2, 2]
    assert len(grid.runs({"grid": cfg["grid"]})) < len(runs)  # the bare grid would leave runs out
    assert 'grid=as_json(grid.view(config))' in (ROOT / "workflow" / "rules" / "report.smk").read_text()


# --- 2. study C: by pretraining data ----------------------------------------------------------

OFFSET = {"in_domain": 0.05, "out_domain": -0.02, "mixed": 0.04}  # over scratch, + 0.01 per seed


def _study_c() -> pd.DataFrame:
    """ViT from scratch or MAE-pretrained on in/out/mixed data; a ResNet-50 from scratch. The
    seeds' spread (10 points) is far above each pretraining's paired spread (1 point)."""
    rows = []
    for seed in (0, 1, 2):
        base = 0.3 + 0.1 * seed
        rows.append(_row("none", seed=seed, finetune=50, miou=base))
        rows.append(_row("none", backbone="resnet50", seed=seed, finetune=50, miou=base + 0.01))
        rows += [_row("mae", data=d, seed=seed, finetune=50, miou=base + off + 0.01 * seed)
                 for d, off in OFFSET.items()]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)


def test_study_c_table_by_pretraining_data_with_the_paired_delta_vs_scratch(tmp_path):
    path = tmp_path / "runs.csv"
    _study_c().to_csv(path, index=False)
    tables(str(path), str(tmp_path / "study"))
    t = pd.read_csv(tmp_path / "study" / "table_data.csv")
    assert list(zip(t.backbone, t.data)) == [("resnet50", "none"), ("viny", "none"), ("viny", "in_domain"),
                                              ("viny", "out_domain"), ("viny", "mixed")]
    inside = t.set_index(["backbone", "data"]).loc[("viny", "in_domain")]
    seeds = np.array([0.35, 0.46, 0.57]) * 100
    assert inside.miou_mean == pytest.approx(seeds.mean()) and inside.miou_std == pytest.approx(seeds.std(ddof=1))
    assert inside.seeds == 3 and inside.iou_pet_mean == pytest.approx(seeds.mean() - 10)
    assert inside.delta_mean == pytest.approx(6.0) and inside.delta_se == pytest.approx(1 / math.sqrt(3))
    assert t.set_index(["backbone", "data"]).loc[("viny", "none")].delta_mean != t.delta_mean.max()
    md = (tmp_path / "study" / "table_data.md").read_text()
    header = md.splitlines()[2]
    for column in ("Pre-train data", "mIoU (%)", "Δ mIoU vs none (%)", "Accuracy (%)", "IoU pet (%)",
                   "IoU background (%)", "IoU border (%)", "Seeds"):
        assert column in header
    assert ("| viny | mae | in_domain | 100 | 50 | 46.00 ± 11.00 | 6.00 ± 0.58 * | 73.00 ± 5.50 | 36.00 ± 11.00 |"
            in md)
    assert "| resnet50 | none | none | none | 50 | 41.00 ± 10.00 |  |" in md  # the baseline: no Δ


def test_study_c_and_d_tables_only_where_the_grid_has_them(tmp_path):
    rows = [_row(o, finetune=n, seed=s, intermediate=i) for o, n, s, i in
            itertools.product(("none", "simmim"), (250, 500), (0, 1), (0, 1))]  # study A: one data set
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    tables(str(path), str(tmp_path / "a"))
    assert not list((tmp_path / "a").glob("table_d*"))
    pd.DataFrame(rows + [_row("simmim", data="stratified", seed=s) for s in (0, 1)]).to_csv(path, index=False)
    tables(str(path), str(tmp_path / "c"))  # two data sets: study C, not D
    assert sorted(p.name for p in (tmp_path / "c").glob("table_d*")) == ["table_data.csv", "table_data.md"]
    pd.DataFrame(rows + [_row("none", decoder=2, seed=s) for s in (0, 1)]).to_csv(path, index=False)
    tables(str(path), str(tmp_path / "d"))  # a wider decoder: study D, not C
    assert sorted(p.name for p in (tmp_path / "d").glob("table_d*")) == ["table_decoder.csv", "table_decoder.md"]


# --- 3. study D: objective × decoder width × label budget ------------------------------------

def test_study_d_table_objective_by_decoder_width_by_label_budget(tmp_path):
    runs = _all_objectives(("1%", "5%", 250)).drop(columns=[f"iou_{c}" for c in CLASSES])
    runs["labelled_images"] = runs.finetune.map({"1%": 15, "5%": 73, 250: 250})
    runs.loc[runs.objective != "none", "data"] = "mixed"  # sorts before the baseline's "none": still first
    path = tmp_path / "runs.csv"
    runs.to_csv(path, index=False)
    tables(str(path), str(tmp_path / "study"))
    long = pd.read_csv(tmp_path / "study" / "table_decoder.csv")
    assert len(long) == 7 * 3 and (long.seeds == 3).all()  # 5 objectives, 2 of them at 2 widths; 3 budgets
    assert list(long.objective[:3]) == ["none"] * 3 and list(long.finetune[:3].astype(str)) == ["250", "1%", "5%"]
    cell = long[(long.objective == "ddep") & (long.decoder == 2) & (long.finetune == "1%")].iloc[0]
    assert cell.miou_mean == pytest.approx((0.46 + 0.02 + 0.001 + 0.02) * 100) and cell.miou_std == pytest.approx(2)
    assert cell.labelled_images == 15
    md = (tmp_path / "study" / "table_decoder.md").read_text().splitlines()
    assert md[2] == "| Objective | Decoder width | 250 | 1% (15 images) | 5% (73 images) |"
    assert "| ddep | 2 | 75.00 ± 2.00 (3) | 50.10 ± 2.00 (3) | 50.50 ± 2.00 (3) |" in md
    assert [line.split(" | ")[0] for line in md[4:11]] == [
        "| none", "| simmim", "| mae", "| dep", "| dep", "| ddep", "| ddep"]  # the studies' order, baseline first
    assert md[4].startswith("| none | 1 |")


# --- 4. reconstruction / denoising examples per objective ------------------------------------

VINY = {"backbone": "viny", "image_size": 32, "patch_size": 16, "decoder_channels": [16, 16, 8, 8, 8]}


def test_example_columns_show_what_each_kind_of_objective_does():
    x = torch.randn(2, 3, 32, 32)
    gamma, noise = torch.full((2,), 1 / (1 + 0.22**2)), torch.randn(2, 3, 32, 32)
    noisy = gamma.sqrt().view(-1, 1, 1, 1) * x + (1 - gamma).sqrt().view(-1, 1, 1, 1) * noise
    denoised = (noisy - (1 - gamma).sqrt().view(-1, 1, 1, 1) * noise) / gamma.sqrt().view(-1, 1, 1, 1)
    cols, titles = figures.example_columns(x, {"pred": noise, "noisy": noisy, "noise": noise, "denoised": denoised,
                                               "gamma": gamma}, {"objective": "dep"})
    assert titles == ["clean", "noisy (σ = 0.22)", "denoised (predicted)"]
    assert cols[1] is noisy and torch.allclose(cols[2], x, atol=1e-5)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, 0] = True  # the top-left 16×16 patch hidden
    pred = torch.full_like(x, 7.0)
    cols, titles = figures.example_columns(x, {"pred": pred, "mask": mask}, {"objective": "simmim"})
    assert titles == ["original", "masked", "reconstructed"]
    assert (cols[1][..., :16, :16] == 0).all() and torch.equal(cols[1][..., 16:, :], x[..., 16:, :])
    assert (cols[2][..., :16, :16] == 7).all() and torch.equal(cols[2][..., :, 16:], x[..., :, 16:])


@pytest.mark.parametrize("objective,titles", [("dep", ["clean", "noisy (σ = 0.22)", "denoised (predicted)"]),
                                              ("simmim", ["original", "masked", "reconstructed"])])
def test_reconstructions_from_a_pretraining_checkpoint(tmp_path, monkeypatch, objective, titles):
    from sslseg.models.checkpoint import save_checkpoint
    from sslseg.objectives import build_objective

    settings = {"objective": objective, "model": VINY, "sigma": 0.22, "gamma_range": [], "mask_ratio": 0.5}
    save_checkpoint(tmp_path / "model.pt", build_objective(objective, settings),
                    {"stage": "pretrain", "settings": settings})
    with h5py.File(tmp_path / "pack.h5", "w") as f:
        f["images"] = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    drawn = []
    real = figures.image_grid
    monkeypatch.setattr(figures, "image_grid", lambda rows, names, out, dpi: (drawn.append((rows, names)),
                                                                                real(rows, names, out, dpi)))
    out = tmp_path / f"reconstructions_{objective}.png"
    figures.reconstructions(str(tmp_path / "model.pt"), str(tmp_path / "pack.h5"), str(out),
                            {"objective": objective, "model": VINY}, {"examples": 2, "dpi": 30})
    rows, names = drawn[0]
    assert names == titles and len(rows) == 2 and all(img.shape == (32, 32, 3) for row in rows for img in row)
    assert out.stat().st_size > 1000 and out.with_suffix(".pdf").exists()


# --- the workflow: outputs, report items and their captions ----------------------------------

def test_the_workflow_draws_a_reconstruction_figure_per_pretraining_objective(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((ROOT / "workflow/configs/tiny.yaml").read_text())
    cfg["name"] = "objectives"
    cfg["grid"] = {**cfg["grid"], "objectives": ["simmim", "dep"], "intermediate": [False], "seeds": [0],
                   "finetune_sizes": [4, "50%"], "decoder_widths": [1, 2]}
    (wf / "objectives.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(wf, "--configfile", "objectives.yaml")
    assert jobs["reconstructions"] == 2 and jobs["tables"] == 1
    out = snakemake(wf, "-n", "--configfile", "objectives.yaml").stdout
    for name in ("reconstructions_simmim.png", "reconstructions_dep.png"):
        assert f"results/objectives/report/{name}" in out
    assert "report/reconstructions.png" not in out
    # dep's figure from its first width's largest pretraining
    assert "input: results/objectives/pretrain/viny/dep-random-16/model.pt" in out


class _Snakemake:
    def __init__(self, **wildcards):
        self.wildcards = type("Wildcards", (), wildcards)


@pytest.mark.parametrize("caption,wildcards,text", [
    ("reconstructions.rst", {"objective": "ddep"}, "recovered from the predicted noise"),
    ("reconstructions.rst", {"objective": "mae"}, "masked patches hidden"),
    ("study_tables.rst", {"table": "table_data"}, "Study C"),
    ("study_tables.rst", {"table": "table_decoder"}, "Study D"),
    ("study_tables.rst", {"table": "table1"}, "Table 1"),
    ("fig_miou.rst", {}, "standard deviation over seeds"),
])
def test_report_captions_render_for_each_item(caption, wildcards, text):
    import jinja2
    from docutils.core import publish_parts

    source = (ROOT / "workflow" / "report" / caption).read_text()
    rendered = jinja2.Environment().from_string(source).render(snakemake=_Snakemake(**wildcards))
    assert text in rendered
    html = publish_parts(rendered, writer="html", settings_overrides={"halt_level": 2})["body"]  # raises on bad RST
    assert text.split()[0] in html


def test_the_tables_rule_puts_every_study_table_in_the_report():
    rules = (ROOT / "workflow" / "rules" / "report.smk").read_text()
    tables_rule = rules.split("rule tables:")[1].split("\nrule ")[0]
    assert 'patterns=["{table}.md"]' in tables_rule and "study_tables.rst" in tables_rule
    assert Path(ROOT / "workflow" / "report" / "study_tables.rst").exists()
