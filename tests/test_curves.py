"""Learning curves from synthetic training logs: convergence.csv's rows and last-10 % changes,
one figure per training stage, validation mIoU drawn where a log has it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd
import pytest

from sslseg.io import UserError
from sslseg.report.curves import last_change, learning_curves, training_jobs

GRID = {"backbones": ["viny"], "objectives": ["simmim"], "pretrain_data": ["random"], "pretrain_sizes": [0, 16],
        "intermediate": [False, True], "adaptations": ["finetune", "probe"], "labels": ["full"],
        "finetune_sizes": [4], "seeds": [0, 1], "decoder_widths": [1]}
SETTINGS = {"style": "whitegrid", "dpi": 40}


def write_log(path: Path, losses: list[float], val_miou: list[float] | None = None) -> None:
    """A log as sslseg.train writes it, + `val_miou` when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss", "lr", "images_per_s", "seconds"] + (["val_miou"] if val_miou else []))
        for i, loss in enumerate(losses):
            w.writerow([i + 1, loss, 1e-3, 10.0, 0.5] + ([val_miou[i]] if val_miou else []))


def falling(n: int) -> list[float]:
    return [float(n - i) for i in range(n)]  # n, n-1, ..., 1


def test_last_change_is_zero_when_flat_and_negative_while_falling():
    assert last_change([2.0] * 20) == 0
    # 20 epochs: the last 2 (2, 1; mean 1.5) against the 2 before (4, 3; mean 3.5)
    assert last_change(falling(20)) == pytest.approx((1.5 - 3.5) / 3.5)
    assert last_change(falling(30)) == pytest.approx((2 - 5) / 5)  # 3 epochs each, not 4 (0.1 * 30 > 3)
    assert last_change([3.0, 1.0]) == pytest.approx(-2 / 3)  # one epoch each at least
    assert math.isnan(last_change([1.0])) and math.isnan(last_change([]))


def test_convergence_has_a_row_per_training_job_and_a_figure_per_stage(tmp_path):
    root, out = tmp_path / "results", tmp_path / "report"
    jobs = training_jobs(str(root), GRID)
    for stage, folder, run, log in jobs:  # pretraining flat, everything else falling (a seed offset)
        write_log(Path(log), [0.5] * 10 if stage == "pretrain" else [x + run.seed for x in falling(10)])
    table = learning_curves(str(root), GRID, str(out), SETTINGS)
    read = pd.read_csv(out / "convergence.csv")
    assert list(read.columns) == ["stage", "run", "epochs", "final_loss", "last_10pct_change"]
    # 1 pretraining; 2 intermediate steps (from scratch and the pretraining); 4 initialisations x 2 seeds, twice
    assert read.stage.value_counts().to_dict() == {"pretrain": 1, "intermediate": 2, "finetune": 8, "probe": 8}
    assert read.run.is_unique and (read.epochs == 10).all()
    pre = read.set_index("run").loc["pretrain/viny/simmim-random-16"]
    assert (pre.stage, pre.final_loss, pre.last_10pct_change) == ("pretrain", 0.5, 0)
    seed1 = read.set_index("run").loc["runs/viny/scratch-i1/probe-full-n4-s1"]
    assert seed1.final_loss == 2 and seed1.last_10pct_change == pytest.approx((2 - 3) / 3)
    assert (read[read.stage != "pretrain"].last_10pct_change < 0).all()
    assert len(table) == len(read)
    for stage in ("pretrain", "intermediate", "finetune", "probe"):
        assert (out / f"fig_curves_{stage}.png").stat().st_size > 1000
        assert (out / f"fig_curves_{stage}.pdf").exists()
    assert not list(out.glob("*.tmp"))


def test_validation_miou_is_drawn_and_reported(tmp_path):
    grid = {**GRID, "pretrain_sizes": [16], "intermediate": [False], "adaptations": ["finetune"]}
    root, out = tmp_path / "results", tmp_path / "report"
    for stage, _, _, log in training_jobs(str(root), grid):
        val = [0.2, 0.4, 0.5, 0.55] if stage == "finetune" else None
        write_log(Path(log), [4.0, 2.0, 1.0, 0.9], val)
    table = learning_curves(str(root), grid, str(out), SETTINGS).set_index("stage")
    assert table.loc["finetune", "final_val_miou"].tolist() == [0.55, 0.55]
    assert math.isnan(table.loc["pretrain", "final_val_miou"])
    assert (out / "fig_curves_finetune.png").stat().st_size > 1000


def test_a_job_without_epochs_is_a_row_and_a_missing_log_names_itself(tmp_path):
    grid = {**GRID, "pretrain_sizes": [16], "intermediate": [False], "adaptations": ["finetune"], "seeds": [0]}
    root, out = tmp_path / "results", tmp_path / "report"
    jobs = training_jobs(str(root), grid)
    Path(jobs[0][3]).parent.mkdir(parents=True)
    Path(jobs[0][3]).write_text("epoch\n")  # a pretraining that trained no epoch: sslseg.train writes only this
    with pytest.raises(UserError, match="finetune-full-n4-s0/log.csv: training log not found"):
        learning_curves(str(root), grid, str(out), SETTINGS)
    write_log(Path(jobs[1][3]), [1.0, 0.5])
    table = learning_curves(str(root), grid, str(out), SETTINGS).set_index("stage")
    assert table.loc["pretrain", "epochs"] == 0 and math.isnan(table.loc["pretrain", "last_10pct_change"])
    assert (out / "fig_curves_pretrain.png").exists()


def test_fraction_sizes_and_validation_from_real_columns(tmp_path):
    """Label budgets as fractions beside counts (paths `n5pct`), logs as sslseg.train writes them
    with validation (val_loss, val_miou, val_pixel_acc): a line per size in order, counts first,
    and the final and best validation mIoU per job."""
    grid = {**GRID, "pretrain_sizes": [0], "intermediate": [False], "adaptations": ["finetune"],
            "finetune_sizes": ["10%", 4, "5%"]}
    root, out = tmp_path / "results", tmp_path / "report"
    jobs = training_jobs(str(root), grid)
    assert sorted(Path(log).parent.name for *_, log in jobs) == [
        "finetune-full-n10pct-s0", "finetune-full-n10pct-s1", "finetune-full-n4-s0", "finetune-full-n4-s1",
        "finetune-full-n5pct-s0", "finetune-full-n5pct-s1"]
    for _, _, run, log in jobs:
        pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "lr": 1e-3, "images_per_s": 10.0, "seconds": 0.5,
                      "val_loss": [1.0, 0.8, 0.9], "val_miou": [0.3, 0.6, 0.5], "val_pixel_acc": [0.5, 0.7, 0.6],
                      "val_seconds": 0.1}).to_csv(Path(log).parent.mkdir(parents=True) or log, index=False)
    table = learning_curves(str(root), grid, str(out), SETTINGS)
    assert (table.final_val_miou == 0.5).all() and (table.best_val_miou == 0.6).all()
    assert (table.best_val_epoch == 2).all()
    from sslseg.report.curves import _place

    lines = sorted((_place(stage, folder, run)[2], _place(stage, folder, run)[1]) for stage, folder, run, _ in jobs)
    assert [line for _, line in lines][::2] == ["4 images", "5% of the pool", "10% of the pool"]
    assert (out / "fig_curves_finetune.png").stat().st_size > 1000
