# The one place for Python in the workflow: config validation, paths, input functions.
import json
import os
import sys

sys.path.insert(0, workflow.basedir)  # the sslseg package beside this Snakefile

from sslseg.config import rule_resources, stage_settings, validate
from sslseg.data.sources import INTEL_CLASSES
from sslseg.io import UserError

try:
    validate(config, "config (config.yaml + --configfile/--config)")
except UserError as e:
    sys.exit(f"sslseg: error: {e}")

R = f"results/{config['name']}"
GRID = config["grid"]
PRETRAIN_SIZES = sorted(set(GRID["pretrain_sizes"]))
INTERMEDIATE = sorted({int(b) for b in GRID["intermediate"]})


# Source files each stage runs, declared as inputs: Snakemake does not track imported
# modules, so without this a code change to one stage would not rerun it.
_COMMON = ["sslseg/__init__.py", "sslseg/io.py", "sslseg/cli.py", "sslseg/stages.py"]
_TRAIN = _COMMON + [
    "sslseg/train.py",
    "sslseg/data/loader.py",
    "sslseg/data/augment.py",
    "sslseg/models/__init__.py",
    "sslseg/models/vit.py",
    "sslseg/models/heads.py",
    "sslseg/models/checkpoint.py",
]
CODE = {
    "demo": ["sslseg/data/demo.py", "sslseg/io.py"],
    "pack": _COMMON + ["sslseg/data/sources.py", "sslseg/data/pack.py"],
    "splits": _COMMON + ["sslseg/data/splits.py"],
    "pretrain": _TRAIN + ["sslseg/objectives/simmim.py"],
    "intermediate": _TRAIN + ["sslseg/objectives/classify.py"],
    "finetune": _TRAIN + ["sslseg/objectives/segment.py"],
    "evaluate": _TRAIN + ["sslseg/objectives/segment.py", "sslseg/metrics.py"],
    "tables": ["sslseg/report/tables.py"],
    "figures": ["sslseg/report/figures.py", "sslseg/report/tables.py"],
    "examples": _TRAIN
    + ["sslseg/report/figures.py", "sslseg/objectives/simmim.py", "sslseg/objectives/segment.py"],
}


def code(stage):
    return CODE[stage]


def settings(stage, **extra):
    """JSON of exactly what a stage depends on; passed as `params`, so only its change reruns it."""
    s = stage_settings(config, stage) if stage in ("pretrain", "intermediate", "finetune") else dict(config[stage])
    if stage in ("evaluate",):
        s.update(model=config["model"], device=config["device"], amp=config["train"]["amp"])
    s.update(extra)
    return json.dumps(s, sort_keys=True)


def report_settings(*keys):
    """Only the report keys one figure rule uses, so changing the style reruns only `figures`."""
    return json.dumps({k: config["report"][k] for k in keys}, sort_keys=True)


def res(stage):
    """Resources from the config section `resources` (one place for local runs and sbatch)."""
    r = rule_resources(config, stage)
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "gpu": r["gpu"]}
    if r["gpu"] and r["gpu_model"]:
        out["gpu_model"] = r["gpu_model"]
    return out


def threads_of(stage):
    return rule_resources(config, stage)["threads"]


def source_root(kind):
    """Where a dataset is read from: the generated demo folder, or the configured root."""
    d = config["data"][kind]
    if kind == "intermediate" and d["archive"]:
        return f"{R}/intel"
    if d["source"] == "demo":
        return f"{R}/demo/" + {"pets": "", "pretrain": "imagenet", "intermediate": "intel"}[kind]
    return d["root"]


def source_input(kind):
    """The job that makes a dataset's folder, when the workflow makes it (demo, archive)."""
    if kind == "intermediate" and config["data"][kind]["archive"]:
        return [f"{R}/intel/.done"]
    return [f"{R}/demo/.done"] if config["data"][kind]["source"] == "demo" else []


def inits():
    """(pretrain size, intermediate) pairs of the grid."""
    return [(p, i) for p in PRETRAIN_SIZES for i in INTERMEDIATE]


def init_checkpoint(wildcards):
    p, i = int(wildcards.p), int(wildcards.i)
    if i:
        return f"{R}/intermediate/p{p}/model.pt"
    return f"{R}/pretrain/p{p}/model.pt" if p else []


def run_dirs():
    return [
        f"{R}/finetune/p{p}_i{i}/n{n}_s{s}"
        for p, i in inits()
        for n in GRID["finetune_sizes"]
        for s in GRID["seeds"]
    ]


def largest_run():
    """The fine-tune shown in the segmentation examples: most pretraining, most labels, first seed."""
    p, i = max(inits(), key=lambda pi: (pi[0], -pi[1]))
    return f"{R}/finetune/p{p}_i{i}/n{max(GRID['finetune_sizes'])}_s{GRID['seeds'][0]}/model.pt"


def all_outputs():
    out = [f"{R}/report/runs.csv", f"{R}/report/tables/summary.csv", f"{R}/report/fig_miou.png"]
    out.append(f"{R}/report/segmentations.png")
    if any(PRETRAIN_SIZES):
        out.append(f"{R}/report/reconstructions.png")
    if INTERMEDIATE == [0, 1]:
        out.append(f"{R}/report/fig_delta.png")
    if 1 in INTERMEDIATE:
        out.append(f"{R}/report/intermediate.csv")
    return out
