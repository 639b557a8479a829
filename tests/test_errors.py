"""Bad input: one line naming the file or key and the fix, a non-zero exit, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, copy_workflow, snakemake


def sslseg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sslseg", *args], capture_output=True, text=True, env=env, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def pack_pets(root: Path, out: Path) -> subprocess.CompletedProcess:
    return sslseg("pack-pets", "--root", str(root), "--out", str(out),
                  "--settings", json.dumps({"image_size": 32, "download": False, "resize": "crop"}))


def test_missing_dataset_folder(tmp_path):
    one_line_error(pack_pets(tmp_path / "nowhere", tmp_path / "p.h5"), "nowhere", "data.pets.root")
    assert not (tmp_path / "p.h5").exists()


def test_corrupt_jpeg(pets_sample, tmp_path):
    victim = sorted((pets_sample / "images").glob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:300])
    one_line_error(pack_pets(pets_sample, tmp_path / "p.h5"), victim.name, "corrupt")
    assert not list(tmp_path.glob("p.h5*"))  # no half pack, no temp file left


def test_trimap_of_the_wrong_size(pets_sample, tmp_path):
    victim = sorted((pets_sample / "annotations" / "trimaps").glob("*.png"))[0]
    Image.open(victim).resize((10, 10)).save(victim)
    one_line_error(pack_pets(pets_sample, tmp_path / "p.h5"), victim.name, "does not match")


def test_trimap_with_values_outside_1_to_3(pets_sample, tmp_path):
    victim = sorted((pets_sample / "annotations" / "trimaps").glob("*.png"))[1]
    arr = np.asarray(Image.open(victim)).copy()
    arr[0, 0] = 7
    Image.fromarray(arr).save(victim)
    one_line_error(pack_pets(pets_sample, tmp_path / "p.h5"), victim.name, "outside 1-3")


def test_a_pet_listed_twice_is_refused_before_it_could_sit_in_test_and_pool(pets_sample, tmp_path):
    lists = pets_sample / "annotations"
    first = (lists / "trainval.txt").read_text().splitlines()[0]
    with open(lists / "test.txt", "a") as f:
        f.write(first + "\n")
    one_line_error(pack_pets(pets_sample, tmp_path / "p.h5"), "test.txt:9", first.split()[0], "listed again",
                   "trainval.txt:1")
    assert not list(tmp_path.glob("p.h5*"))


@pytest.mark.parametrize("damage, needles", [
    ("blank", ("trainval.txt:17", "0 fields")),  # a blank line after the 16 pets
    ("no_test", ("test.txt", "missing", "annotations.tar.gz")),
    ("no_lists", ("trainval.txt", "missing")),  # images/ and trimaps/ there: name what is missing
])
def test_damaged_oxford_list_files_are_one_line(pets_sample, tmp_path, damage, needles):
    lists = pets_sample / "annotations"
    if damage == "blank":
        with open(lists / "trainval.txt", "a") as f:
            f.write("\n")
    else:
        (lists / "test.txt").unlink()
        if damage == "no_lists":
            (lists / "trainval.txt").unlink()
    one_line_error(pack_pets(pets_sample, tmp_path / "p.h5"), *needles)


def test_an_intel_class_without_images_is_refused(tmp_path):
    root = tmp_path / "seg_train"
    for i, name in enumerate(("buildings", "forest", "glacier", "mountain", "street")):  # no "sea"
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / name / "1.jpg")
    proc = sslseg("pack_intermediate", "--root", str(root), "--out", str(tmp_path / "x.h5"),
                  "--settings", json.dumps({"pack_size": 32}))
    one_line_error(proc, "sea", "no images of class")


@pytest.mark.parametrize("content", ["{}", "[]", "nonsense"])
def test_a_file_that_is_no_benchmark_is_one_line(tmp_path, content):
    (tmp_path / "b.json").write_text(content)
    one_line_error(sslseg("plan", "--bench", str(tmp_path / "b.json")), "b.json", "not a benchmark",
                   "python -m sslseg.bench --json")


def test_threads_below_one_is_refused_before_any_work():
    proc = sslseg("evaluate_folder", "--ckpt", "x.pt", "--root", "nowhere", "--threads", "0")
    assert proc.returncode == 2 and "argument --threads: 0 is not a count of at least 1" in proc.stderr


def test_empty_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = sslseg("pack_intermediate", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "x.h5"),
                  "--settings", json.dumps({"pack_size": 32}))
    one_line_error(proc, "empty", "no images")


def test_truncated_hdf5(pets_sample, tmp_path):
    assert pack_pets(pets_sample, tmp_path / "p.h5").returncode == 0
    data = (tmp_path / "p.h5").read_bytes()
    (tmp_path / "p.h5").write_bytes(data[: len(data) // 3])
    proc = sslseg("splits", "--pets", str(tmp_path / "p.h5"), "--test", str(tmp_path / "t.txt"),
                  "--pool", str(tmp_path / "pool.txt"), "--settings", json.dumps({"test_size": 4, "test_seed": 42}))
    one_line_error(proc, "p.h5", "truncated HDF5", "rerun the pack stage")
    assert not (tmp_path / "t.txt").exists()


def test_finetune_size_larger_than_the_pool(tmp_path):
    np.savetxt(tmp_path / "pool.txt", np.arange(30), fmt="%d")
    proc = sslseg("subset", "--pool", str(tmp_path / "pool.txt"), "--out", str(tmp_path / "s.txt"),
                  "--size", "31", "--seed", "0")
    one_line_error(proc, "grid.finetune_sizes: 31", "pool of 30")


# Every config mistake that can be found before work starts, and the line it must print
# (after "<configfile>: "). Each is caught by sslseg.config.validate, which the Snakefile runs
# before planning and every command runs before its first step.
BAD_CONFIGS = [
    ("grid: {seeds: [zero]}", "grid.seeds.0: 'zero' is not of type 'integer'; see the schema's description"),
    # as Snakemake's --config 'grid={"seeds": [0]}' passes it
    ("grid: {seeds: ['0']}", "grid.seeds.0: '0' is not of type 'integer'; a value inside a --config mapping arrives "
     "as text: set this key in a --configfile instead"),
    ("finetune: {lerning_rate: 0.1}", "finetune: unknown key ('lerning_rate' was unexpected)"),
    ("grid: {objectives: [simmmim]}", "grid.objectives: 'simmmim' is unknown; available: ddep, dep, mae, simmim"),
    ("grid: {objectives: [segment]}", "grid.objectives: 'segment' is not a pretraining objective"),
    ("objectives: {mea: {}}", "objectives.mea: no such objective"),
    ("objectives: {simmim: {mask_ratio: 0.5, lr: 0.1}}", "objectives.simmim: unknown key ('lr' was unexpected)"),
    ("grid: {backbones: [vit_huge]}", "grid.backbones: unknown backbone 'vit_huge'; available: resnet18"),
    ("grid: {adaptations: [frozen]}", "grid.adaptations.0: 'frozen' is not one of ['finetune', 'probe']"),
    ("grid: {labels: [scribble]}", "grid.labels.0: 'scribble' is not one of ['full', 'scribbles', 'points', 'noisy']"),
    ("labels: {noisy: {noise: blur}}", "labels.noisy.noise: 'blur' is not one of ['boundary', 'coarse', 'flip']"),
    # the strength's range depends on the noise
    ("labels: {noisy: {noise: coarse, strength: 0}}", "labels.noisy.strength: 0 is less than the minimum of 1"),
    ("labels: {noisy: {noise: flip, strength: 1.5}}", "labels.noisy.strength: 1.5 is greater than the maximum of 1"),
    ("labels: {noisy: {noise: boundary, strength: 2.5}}", "labels.noisy.strength: 2.5 is not of type 'integer'"),
    ("probe: {iterations: 0, epochs: 0}", "probe.epochs: 0 with probe.iterations 0 trains nothing"),
    ("probe: {batch_size: 300, drop_last: true}", "probe.batch_size: 300 is larger than grid.finetune_sizes 250, so with "
     "probe.drop_last that run would have no batch"),
    ("finetune: {optimizer: lamb}", "finetune.optimizer: 'lamb' is not one of ['adamw', 'adam', 'sgd']"),
    # not finite: NaN passes every "greater than 0" of the schema
    ("pretrain: {lr: .nan}", "pretrain.lr: nan is not a finite number; give a number"),
    ("finetune: {lr: .inf}", "finetune.lr: inf is not a finite number"),
    ("finetune: {augment: {scale: [-.inf, 1.0]}}", "finetune.augment.scale.0: -inf is not a finite number"),
    ("objectives: {simmim: {mask_ratio: .nan}}", "objectives.simmim.mask_ratio: nan is not a finite number"),
    # duplicates would double-count a run in runs.csv and the tables
    ("grid: {seeds: [0, 0]}", "grid.seeds: [0, 0] has non-unique elements"),
    ("grid: {finetune_sizes: [250, 250]}", "grid.finetune_sizes: [250, 250] has non-unique elements"),
    ("{data: {pets: {source: demo, test_size: 24}, demo: {pets: 40}}, grid: {finetune_sizes: [4, '25%']}}",
     "grid.finetune_sizes: 4 and '25%' are 4 of the 16-image pool, so every run of that size would be trained twice"),
    ("grid: {finetune_sizes: ['5%', '5.0%']}", "grid.finetune_sizes: '5%' and '5.0%' are one budget"),
    ("labels: {noisy: {noise: flip}}", "labels.noisy.strength: 16 is greater than the maximum of 1"),
    ("labels: {noisy: {strength: 0}}", "labels.noisy.strength: 0 is less than the minimum of 1"),  # coarse, the default
    ("grid: {pretrain_sizes: [0, 45000, 45000]}", "grid.pretrain_sizes: [0, 45000, 45000] has non-unique"),
    ("grid: {backbones: [viny, viny]}", "grid.backbones: ['viny', 'viny'] has non-unique elements"),
    # across keys: one line naming both
    ("model: {image_size: 100}", "model.image_size: 100 is not a multiple of model.patch_size 16 (the ViT "
     "backbones viny cut the image into patches); use 96 or 112"),
    ("finetune: {epochs: 0}", "finetune.epochs: 0 with finetune.iterations 0 trains nothing"),
    ("pretrain: {epochs: 40}", "pretrain.milestones: 50 is not below pretrain.epochs 40"),
    ("intermediate: {iterations: 100, warmup: 100, milestones: []}",
     "intermediate.warmup: 100 is not below intermediate.iterations 100"),
    ("finetune: {batch_size: 300, drop_last: true}", "finetune.batch_size: 300 is larger than grid.finetune_sizes 250"),
    ("{grid: {backbones: [resnet50], objectives: [simmim], pretrain_sizes: [0], finetune_sizes: [65]}, "
     "finetune: {batch_size: 64}}", "finetune.batch_size: 64 leaves a last batch of one image for "
     "grid.finetune_sizes 65, which BatchNorm (resnet50) cannot train on"),
    ("data: {pets: {resize: letterbox}}", "data.pets.resize: 'letterbox' is not one of ['crop', 'squash']"),
    ("data: {pets: {source: demo}}", "data.demo.pets: 300 generated pets cannot hold data.pets.test_size 1000"),
    ("data: {pretrain: {source: demo}}", "grid.pretrain_sizes: 200000 is larger than data.demo.pretrain 300"),
    # one process uses one GPU; more would idle, or be split into one task per GPU by the SLURM plugin
    ("resources: {finetune: {gpu: 2}}", "resources.finetune.gpu: 2 is greater than the maximum of 1"),
    ("resources: {finetune: {cpus_per_gpu: 0}}", "resources.finetune.cpus_per_gpu: 0 is less than the minimum of 1"),
    ("resources: {pretrain: {partition: gpu}}", "resources.pretrain: unknown key ('partition' was unexpected)"),
    # every objective on one grid (decoders, weights files, DDeP's encoder, recipes, fractions, splits)
    ("grid: {decoder_widths: [4]}", "grid.decoder_widths.0: 4 is greater than the maximum of 3"),
    ("grid: {objectives: [simmim], decoder_widths: [1, 2]}", "grid.decoder_widths: [1, 2] changes nothing: no run "
     "has a UNet decoder"),
    ("model: {weights: {resnet50: /nonexistent/resnet50.pth}}", "model.weights.resnet50: /nonexistent/resnet50.pth "
     "is not a file (nothing is downloaded at run time)"),
    ("model: {weights: {resnet51: r.pth}}", "model.weights.resnet51: no such backbone"),
    ("objectives: {ddep: {encoder: byol}}", "objectives.ddep.encoder: 'byol' is not another objective of "
     "grid.objectives (simmim, mae, dep)"),
    ("objectives: {ddep: {encoder: ckpt/missing.pt}}", "objectives.ddep.encoder: ckpt/missing.pt is not a file"),
    ("objectives: {mae: {decoder: huge}}", "objectives.mae.decoder: 'huge' is not one of ['mae', 'small']"),
    ("objectives: {dep: {gamma_range: [0.95, 0.9]}}", "objectives.dep.gamma_range: [0.95, 0.9] is not [low, high]"),
    ("finetune: {recipe: study_d}", "finetune.recipe: 'study_d' is not in recipes (available: adamw_multistep, "
     "adam_cosine)"),
    ("grid: {finetune_sizes: ['150%']}", "grid.finetune_sizes.0: '150%' does not fit this key (a count of images "
     "(250) or a fraction of the pool in (0, 100] % (\"5%\")); fix it"),
    ("name: '..'", "name: '..' does not fit this key (outputs go to results/<name>/"),  # would write beside results/
    ("grid: {seed: [0]}", "grid: unknown key ('seed' was unexpected); did you mean 'seeds'?; rename it"),
    ("grid: {pretrain_data: [animals]}", "grid.pretrain_data.0: 'animals' is not one of"),
    # fractions of a real pool (size unknown before packing) still get the recipe checks
    ("{grid: {finetune_sizes: ['5%']}, finetune: {epochs: 10}}", "finetune.milestones: 70 is not below "
     "finetune.epochs 10"),
    # a value from a recipe or an objective's own recipe names where it came from
    ("finetune: {recipe: adamw_multistep, epochs: 15}", "finetune.milestones (with recipes.adamw_multistep): 70 is "
     "not below finetune.epochs 15"),
    ("objectives: {mae: {pretrain: {epochs: 40}}}", "pretrain.milestones (with objectives.mae.pretrain): 50 is not "
     "below pretrain.epochs 40"),
    ("data: {pets: {split: train_val_test, val_fraction: 0.5, test_fraction: 0.5}}",
     "data.pets.val_fraction: 0.5 + data.pets.test_fraction 0.5 leave no pets to train on"),
]


@pytest.mark.parametrize("override,line", BAD_CONFIGS)
def test_every_config_mistake_is_one_line_naming_the_key(tmp_path, override, line):
    from sslseg.config import load_config
    from sslseg.io import UserError

    (tmp_path / "bad.yaml").write_text(override + "\n")
    with pytest.raises(UserError) as e:
        load_config(ROOT / "config.yaml", tmp_path / "bad.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'bad.yaml'}: {line}"), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override", [
    "pretrain: {epochs: 0}\ngrid: {pretrain_sizes: [0]}",  # a stage that never runs is not checked
    "intermediate: {epochs: 0}\ngrid: {intermediate: [false]}",
    "model: {image_size: 100}\ngrid: {backbones: [resnet18]}",  # no patches, any size
    "pretrain: {epochs: 40, schedule: cosine}",  # milestones are ignored by a cosine schedule
    "finetune: {batch_size: 300}",  # no labelled image dropped: one short batch of 250
    "grid: {finetune_sizes: ['1%', '5%', 250, '100%'], decoder_widths: [1, 2, 3]}\nfinetune: {recipe: adam_cosine}",
    "grid: {pretrain_data: [in_domain, out_domain, mixed]}\ndata: {pets: {split: train_val_test}}",
    # the SLURM plugin's per-rule keys
    "resources: {finetune: {slurm_partition: gpu, constraint: a100, cpus_per_gpu: 4, slurm_extra: '--nice=10'}}",
])
def test_what_the_checks_let_through(tmp_path, override):
    from sslseg.config import load_config

    (tmp_path / "ok.yaml").write_text(override + "\n")
    load_config(ROOT / "config.yaml", tmp_path / "ok.yaml")


@pytest.mark.parametrize("override,line", [c for c in BAD_CONFIGS if c[1].split(":")[0] in
                                           ("grid.seeds.0", "pretrain.lr", "model.image_size")])
def test_the_workflow_stops_before_any_job_with_that_line(tmp_path, override, line):
    wf = copy_workflow(tmp_path / "wf")
    (wf / "bad.yaml").write_text(override + "\n")
    proc = snakemake(wf, "-n", "--cores", "1", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0 and "Job stats" not in proc.stdout
    assert f"sslseg: error: config (config.yaml + --configfile/--config): {line}" in proc.stderr, proc.stderr[-2000:]


def test_cli_lists_its_commands_and_rejects_an_unknown_one():
    from sslseg.cli import COMMANDS

    proc = sslseg("--help")
    assert proc.returncode == 0 and all(c in proc.stdout for c in COMMANDS)
    one_line = [ln for ln in sslseg("finetuen").stderr.splitlines() if "error" in ln]
    assert one_line == ["sslseg: error: unknown command 'finetuen'"]
    flags = sslseg("finetune", "--help").stdout
    assert all(f in flags for f in ("--pets", "--rows", "--init", "--settings", "--runtime", "--threads"))
