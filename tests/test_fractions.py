"""Label budgets as fractions of the fine-tune pool, the 70/15/15 train/val/test protocol (seed
003) and per-epoch validation mIoU in the fine-tune logs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from sslseg import grid
from sslseg.data.splits import draw_splits, draw_test_split, finetune_subset, read_rows, split_sizes, write_rows
from sslseg.io import UserError
from sslseg.sizes import parse_size, resolve_size

ROOT = Path(__file__).resolve().parents[1]
TVT = {"split": "train_val_test", "test_seed": 42, "test_size": 8, "val_fraction": 0.15, "test_fraction": 0.15}
DRAW = {"split": "test_draw", "test_seed": 42, "test_size": 20, "val_fraction": 0.15, "test_fraction": 0.15}


def test_fractions_resolve_against_the_pool():
    assert parse_size("250") == 250 and parse_size(250) == 250
    assert parse_size("5pct") == parse_size("5%") == "5%" and parse_size("0.5pct") == "0.5%"
    assert resolve_size("1%", 5145) == 51 and resolve_size("0.5pct", 5145) == 26 and resolve_size("100%", 5145) == 5145
    assert resolve_size("0.01%", 100) == 1  # never no image
    assert resolve_size("250", 5145) == 250  # a count stays a count, also as the path writes it
    for bad in ("0%", "0pct", "101%", "5 percent", "0", "-3", "1e3"):
        with pytest.raises(UserError, match="grid.finetune_sizes"):
            parse_size(bad)


def test_subsets_are_nested_across_fractions_and_counts():
    pool, _, _ = draw_splits(1000, TVT)  # 700 pool images
    five, ten, full = (finetune_subset(pool, s, 3) for s in ("5%", "10pct", "100%"))
    count = finetune_subset(pool, 50, 3)
    assert (len(five), len(ten), len(count), len(full)) == (35, 70, 50, 700)
    assert list(ten[:35]) == list(five) and list(count[:35]) == list(five)  # the first rows of one permutation
    assert sorted(full) == sorted(pool)
    assert set(five) != set(finetune_subset(pool, "5%", 4))  # another seed, another subset
    with pytest.raises(UserError, match="grid.finetune_sizes: 701 is larger"):
        finetune_subset(pool, 701, 0)


def test_70_15_15_sizes_disjoint_and_deterministic():
    assert split_sizes(7349, TVT) == (5145, 1102, 1102)  # the Oxford pets as pack_pets packs them
    assert split_sizes(100, TVT) == (70, 15, 15)
    pool, val, test = draw_splits(100, TVT)
    assert (len(pool), len(val), len(test)) == (70, 15, 15)
    assert sorted(np.concatenate([pool, val, test])) == list(range(100))  # disjoint and covering
    again = draw_splits(100, TVT)
    assert all(np.array_equal(a, b) for a, b in zip((pool, val, test), again))
    other = draw_splits(100, {**TVT, "test_seed": 7})
    assert set(other[2]) != set(test)
    # test_draw is today's draw, with no validation set
    pool, val, test = draw_splits(100, DRAW)
    old_pool, old_test = draw_test_split(100, 20, 42)
    assert np.array_equal(pool, old_pool) and np.array_equal(test, old_test) and len(val) == 0


@pytest.mark.parametrize("over, n, match", [
    ({"val_fraction": 0.5, "test_fraction": 0.5}, 100, "data.pets.val_fraction: 0.5 with data.pets.test_fraction 0.5"),
    ({"val_fraction": 0.7, "test_fraction": 0.4}, 100, "data.pets.val_fraction"),
    ({"val_fraction": 0.01}, 20, "data.pets.val_fraction: 0.01 of 20 images is no image"),
    ({"test_fraction": 0.01}, 20, "data.pets.test_fraction: 0.01 of 20 images is no image"),
])
def test_bad_fractions_name_their_key(over, n, match):
    with pytest.raises(UserError, match=match):
        split_sizes(n, {**TVT, **over})


def pets_pack(path: Path, n: int = 24, size: int = 32) -> Path:
    """A pets-like pack: images whose red channel's third is the trimap class (learnable)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["masks"] = (images[..., 0] // 86).astype(np.uint8)
    return path


def test_splits_and_subset_stages_write_the_files(tmp_path):
    from sslseg.stages.data import splits, subset

    pack = pets_pack(tmp_path / "pets.h5", n=40)
    files = {k: tmp_path / f"{k}.txt" for k in ("test", "val", "pool")}
    splits(str(pack), str(files["test"]), str(files["pool"]), TVT, val=str(files["val"]))
    rows = {k: read_rows(p) for k, p in files.items()}
    assert {k: len(r) for k, r in rows.items()} == {"test": 6, "val": 6, "pool": 28}
    assert len(set(np.concatenate(list(rows.values())))) == 40
    splits(str(pack), str(files["test"]), str(files["pool"]), DRAW, val=str(files["val"]))
    assert len(read_rows(files["val"])) == 0 and len(read_rows(files["test"])) == 20  # empty val under test_draw
    splits(str(pack), str(files["test"]), str(files["pool"]), TVT, val=str(files["val"]))
    for token, k in (("25pct", 7), ("50%", 14), ("10", 10)):  # as the rule passes the path's n
        subset(str(files["pool"]), str(tmp_path / f"n{token}.txt"), token, 0)
        assert len(read_rows(tmp_path / f"n{token}.txt")) == k
    quarter, half = (set(read_rows(tmp_path / f"n{t}.txt")) for t in ("25pct", "50%"))
    assert quarter < half < set(rows["pool"])
    assert grid.size_token("25%") == "25pct" and resolve_size("25%", 28) == 7


def _finetune(tmp_path: Path, tag: str, val: str | None, epochs: int = 2, runtime: dict | None = None):
    from sslseg.config import load_config, stage_settings
    from sslseg.stages.train import finetune

    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/tiny.yaml")
    settings = {**stage_settings(cfg, "finetune", grid.first_run(cfg, "finetune")), "batch_size": 4, "epochs": epochs,
                "iterations": 0, "milestones": []}
    out = tmp_path / tag
    out.mkdir(exist_ok=True)
    finetune(str(tmp_path / "pets.h5"), str(tmp_path / "rows.txt"), str(out / "model.pt"), str(out / "log.csv"),
             settings, runtime or {"log_every": 10, "checkpoint_every": 10, "memory_gb": 1.0, "progress": False},
             val=val)
    return pd.read_csv(out / "log.csv"), torch.load(out / "model.pt", weights_only=False)


def _state(ckpt) -> dict:
    return ckpt["model"] if "model" in ckpt else ckpt


def test_validation_adds_val_miou_per_epoch_and_leaves_training_unchanged(tmp_path):
    from sslseg.io import read_json

    pets_pack(tmp_path / "pets.h5", n=16)
    write_rows(tmp_path / "rows.txt", np.arange(10))
    write_rows(tmp_path / "val.txt", np.arange(10, 16))
    plain, plain_ckpt = _finetune(tmp_path, "plain", None)
    val, val_ckpt = _finetune(tmp_path, "val", str(tmp_path / "val.txt"))
    assert list(val.columns[:5]) == list(plain.columns) == ["epoch", "loss", "lr", "images_per_s", "seconds"]
    assert {"val_loss", "val_miou", "val_pixel_acc", "val_seconds"} <= set(val.columns)
    assert len(val) == 2 and val.val_miou.between(0, 1).all() and val.val_pixel_acc.between(0, 1).all()
    assert (val.val_loss > 0).all()
    assert val.loss.tolist() == plain.loss.tolist()  # same RNG draws: identical training
    a, b = _state(plain_ckpt), _state(val_ckpt)
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    side = read_json(tmp_path / "val" / "model.pt.json")
    assert side["images"] == 10 and side["val_images"] == 6


def test_validation_scores_as_evaluate_does(tmp_path):
    """The last epoch's val mIoU is the evaluate stage's mIoU of the final model on the val rows."""
    from sslseg.config import eval_settings, load_config
    from sslseg.stages.evaluate import evaluate

    pets_pack(tmp_path / "pets.h5", n=16)
    write_rows(tmp_path / "rows.txt", np.arange(10))
    write_rows(tmp_path / "val.txt", np.arange(10, 16))
    log, _ = _finetune(tmp_path, "val", str(tmp_path / "val.txt"), epochs=1)
    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/tiny.yaml")
    result = evaluate(str(tmp_path / "val" / "model.pt"), str(tmp_path / "pets.h5"), str(tmp_path / "val.txt"),
                      str(tmp_path / "metrics.json"), eval_settings(cfg, "viny"), {"seed": 0})
    assert log.val_miou.iloc[-1] == pytest.approx(result["miou"], abs=1e-9)
    assert log.val_pixel_acc.iloc[-1] == pytest.approx(result["pixel_acc"], abs=1e-9)
    assert result["labelled_images"] == 10  # the resolved size, from the fine-tune's sidecar → runs.csv


def test_validation_survives_a_resume(tmp_path, monkeypatch):
    """Interrupted after epoch 1's checkpoint, the rerun resumes and logs what an uninterrupted run does."""
    import sslseg.stages.train as stage

    pets_pack(tmp_path / "pets.h5", n=16)
    write_rows(tmp_path / "rows.txt", np.arange(10))
    write_rows(tmp_path / "val.txt", np.arange(10, 16))
    runtime = {"log_every": 10, "checkpoint_every": 1, "memory_gb": 1.0, "progress": False}
    whole, _ = _finetune(tmp_path, "whole", str(tmp_path / "val.txt"), epochs=3, runtime=runtime)

    real, calls = stage.segmentation_validator, []

    def failing(*args, **kw):
        score = real(*args, **kw)

        def validate(objective):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt  # killed while validating epoch 2
            return score(objective)
        return validate

    monkeypatch.setattr(stage, "segmentation_validator", failing)
    with pytest.raises(KeyboardInterrupt):
        _finetune(tmp_path, "resumed", str(tmp_path / "val.txt"), epochs=3, runtime=runtime)
    assert (tmp_path / "resumed" / ".model.pt.resume").exists()
    resumed, _ = _finetune(tmp_path, "resumed", str(tmp_path / "val.txt"), epochs=3, runtime=runtime)
    assert len(calls) == 4  # epoch 1, the interrupted epoch 2, then epochs 2 and 3 only
    cols = ["epoch", "loss", "lr", "val_loss", "val_miou", "val_pixel_acc"]
    pd.testing.assert_frame_equal(resumed[cols], whole[cols])


def test_the_planner_resolves_fractions_against_the_pool(tmp_path):
    """Demo pets: 24 images; train_val_test keeps 16 in the pool (4 val, 4 test), so 50 % is 8
    images; each fine-tune also scores the 4 val images every epoch (a third of an image-step)."""
    from sslseg.config import load_config
    from sslseg.plan import count_work

    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/tiny.yaml")
    cfg["grid"].update(backbones=["viny"], objectives=["simmim"], pretrain_sizes=[0], intermediate=[False],
                       finetune_sizes=["50%", 4], seeds=[0], adaptations=["finetune"], labels=["full"])
    cfg["data"]["pets"].update(split="train_val_test")
    work = count_work(cfg, "cpu", tmp_path)
    # 2 epochs at batch 4: 8 images → 16 image-steps + 4 val x 2 epochs // 3; 4 images → 8 + 2
    assert work["finetune"] == {"jobs": 2, "images": (16 + 2) + (8 + 2), "largest": 18}
    assert work["evaluate"] == {"jobs": 2, "images": 2 * 4, "largest": 4}
    cfg["data"]["pets"].update(split="test_draw")  # 24 - test_size 8 = 16 in the pool, no validation
    assert count_work(cfg, "cpu", tmp_path)["finetune"]["images"] == 16 + 8


def test_workflow_plans_fractions_and_the_validation_set(tmp_path):
    """Dry run: train_val_test makes the splits rule write val.txt and pass it to every fine-tune
    (--val); fractions become subset files n<P>pct. test_draw plans neither."""
    from conftest import TINY, copy_workflow, snakemake

    wf = copy_workflow(tmp_path / "wf")
    (wf / "tvt.yaml").write_text(
        "data:\n  pets: {split: train_val_test}\n"
        "grid: {backbones: [viny], objectives: [simmim], pretrain_sizes: [0], intermediate: [false],\n"
        "       finetune_sizes: ['50%', '12.5%'], seeds: [0]}\n")
    out = snakemake(wf, "-n", "-p", "--cores", "1", *TINY, "tvt.yaml").stdout
    assert "--val results/tiny/splits/val.txt --out" in out and "--val results/tiny/splits/val.txt --pool" not in out
    assert "--pool results/tiny/splits/pool.txt --val results/tiny/splits/val.txt" in out
    assert "--size 12.5pct --seed 0" in out and "finetune-full-n12.5pct-s0/model.pt" in out
    assert out.count("python -m sslseg finetune") == 2 and out.count("--val results/tiny/splits/val.txt --out") == 2
    assert "--rows results/tiny/splits/test.txt" in out  # evaluate scores the test set, as before
    (wf / "tvt.yaml").write_text((wf / "tvt.yaml").read_text().replace("train_val_test", "test_draw"))
    out = snakemake(wf, "-n", "-p", "--cores", "1", *TINY, "tvt.yaml").stdout
    assert "val.txt" not in out and "--size 50pct --seed 0" in out


def test_a_resolved_fraction_leaving_one_image_for_batchnorm_is_a_one_line_error(tmp_path):
    """The config cannot check a fraction of a real pool (its size is known once packed): the
    fine-tune checks the resolved count before its first step."""
    from sslseg.config import load_config, stage_settings
    from sslseg.stages.train import finetune

    pets_pack(tmp_path / "pets.h5", n=16)
    write_rows(tmp_path / "rows.txt", np.arange(5))  # 5 images at batch 4: a last batch of one
    cfg = load_config(ROOT / "config.yaml", ROOT / "workflow/configs/tiny.yaml")
    run = grid.Run(**{**grid.coordinates(grid.first_run(cfg, "finetune")), "backbone": "resnet18",
                      "intermediate": False, "decoder": 1})
    settings = {**stage_settings(cfg, "finetune", run), "batch_size": 4, "epochs": 1, "milestones": []}
    with pytest.raises(UserError) as e:
        finetune(str(tmp_path / "pets.h5"), str(tmp_path / "rows.txt"), str(tmp_path / "m.pt"),
                 str(tmp_path / "log.csv"), settings, {"log_every": 10, "checkpoint_every": 10, "memory_gb": 1.0,
                                                       "progress": False})
    assert str(e.value).startswith("finetune.batch_size: 4 leaves a last batch of one image for the 5 images")
    assert not (tmp_path / "m.pt").exists()
