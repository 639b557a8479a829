# The one place for Python in the workflow: config validation, the grid's paths, input functions.
# It imports only the standard library, sslseg's modules that need nothing else (grid, cli,
# sourcefiles, failures, gpus, sizes) and sslseg.config (yaml and jsonschema, which Snakemake itself
# depends on), so Snakemake's own environment needs neither numpy nor torch to read it (a test checks).
import dataclasses
import importlib.util
import json
import os
import shlex
import sys
import time

sys.path.insert(0, workflow.basedir)  # the sslseg package beside the Snakefile

from snakemake.settings.types import DeploymentMethod

from sslseg import failures, gpus, grid
from sslseg.cli import COMMANDS
from sslseg.config import (
    STAGE_OBJECTIVES,
    compile_cache_env,
    eval_settings,
    rule_resources,
    runtime_settings,
    stage_settings,
    validate,
)
from sslseg.io import UserError
from sslseg.objectives import constant
from sslseg.sizes import resolve_size
from sslseg.sourcefiles import command_files

try:
    validate(config, "config (config.yaml + --configfile/--config)")
except UserError as e:
    sys.exit(f"sslseg: error: {e}")

R = f"results/{config['name']}"
STARTED = time.time()  # logs written after this are this run's (the onerror summary)
RUNS = grid.runs(config)
for note in grid.skipped(config):
    print(f"sslseg: {note}", file=sys.stderr)
# Each artifact's folder → a run that needs it (the rules' wildcards map back through these).
PRETRAINED = grid.by_path(RUNS, grid.pretrain_dir)
INTERMEDIATE = grid.by_path(RUNS, grid.intermediate_dir)
BY_RUN = grid.by_path(RUNS, grid.run_dir)
PRETRAIN_DATA = sorted({r.data for r in PRETRAINED.values()})


wildcard_constraints:
    pre=grid.wildcard(PRETRAINED),
    inter=grid.wildcard(INTERMEDIATE),
    run=grid.wildcard(BY_RUN),
    n=r"\d+|\d+(\.\d+)?pct",
    seed=r"\d+",


# Every rule runs `python -m sslseg <rule>`. The prefix makes that the sslseg beside this
# Snakefile, whatever --directory is, and, when the interpreter running Snakemake has torch (a
# venv, activated or not), that interpreter; otherwise (Snakemake in an environment of its own)
# the `python` of the active environment, or with --software-deployment-method conda, that of
# envs/sslseg.yaml. It also hands the jobs the settings that cannot change a result (`runtime:`)
# outside their params (sslseg/runtime.py), so changing them reruns nothing, and the compile cache.
_own = (
    DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method
    and bool(importlib.util.find_spec("torch"))
)
_path = f" PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH" if _own else ""
_runtime = shlex.quote(json.dumps(runtime_settings(config), sort_keys=True))
# one torch.compile cache per results folder, shared by its jobs (on a cluster, /tmp is per node)
_cache = "".join(f" {k}={shlex.quote(v)}" for k, v in compile_cache_env(config).items())
shell.prefix(
    (
        f"set -euo pipefail; export PYTHONPATH={shlex.quote(workflow.basedir)}"
        "${PYTHONPATH:+:$PYTHONPATH}"
        f" SSLSEG_RUNTIME={_runtime}{_cache}{_path}; "
    )
    .replace("{", "{{")
    .replace("}", "}}")  # the prefix is formatted like a shell command
)


def code(rule, *modules):
    """The package files a rule's command imports (computed from the import graph), as inputs:
    Snakemake does not track imports, so this is what makes a code change rerun the stage.
    `modules`: what the stage imports by name at run time (its objective)."""
    entry = COMMANDS[rule].split(":")[0]
    files = command_files(entry, modules, workflow.basedir)
    return [os.path.relpath(os.path.join(workflow.basedir, f)) for f in files]


def objective_module(name):
    return f"sslseg.objectives.{name}"


def stage_objective(stage):
    """The module of the objective a downstream stage trains (intermediate, finetune)."""
    return objective_module(STAGE_OBJECTIVES[stage][0])


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def res(stage):
    """Resources from the config section `resources` (one place for local runs and sbatch).
    mem_mb grows with the attempt, so a job killed for memory is retried with more (the
    profile's `retries`). The SLURM plugin's keys are passed only where set: an empty
    constraint would still become `-C ''`. A GPU rule also asks for gpu_slots, its part of a
    device (12 / gpu_share of 12 slots, sslseg.gpus), which local runs count (below)."""
    r = rule_resources(config, stage)
    base = r["mem_mb"]
    out = {
        "mem_mb": lambda wildcards, attempt: base * attempt,
        "runtime": r["runtime"],
        "gpu": r["gpu"],
    }
    if r["gpu"]:  # its part of a device, for local runs (below); SLURM ignores it
        out["gpu_slots"] = gpus.slots(r["gpu_share"])
    gpu_only = ("gpu_model", "cpus_per_gpu") if r["gpu"] else ()
    for key in ("slurm_partition", "constraint", "slurm_extra", *gpu_only):
        if r.get(key):
            out[key] = r[key]
    return out


# Local runs: `--resources gpu=N` means N devices, each shared by up to resources.<rule>.gpu_share
# jobs of a rule. Snakemake counts whole units only, so each GPU job also asks for gpu_slots, its
# part (gpus.SLOTS / gpu_share) of a device's gpus.SLOTS, and the N devices become N x SLOTS
# gpu_slots; `gpu` is raised to match, since every GPU job still asks for gpu=1 (SLURM's
# --gpus=1). Not for remote executors (they need --jobs, which sets _nodes; there a job gets a
# whole GPU), nor when gpu_slots is given too (then both limits apply as given).
_limits = workflow.global_resources
if (
    not workflow.remote_exec
    and _limits["_nodes"].value is None
    and "gpu" in _limits
    and "gpu_slots" not in _limits
    and isinstance(_limits["gpu"].value, int)
):
    _n = _limits["gpu"].value
    _limits["gpu_slots"] = _limits["gpu"] = _n * gpus.SLOTS
    print(
        f"sslseg: --resources gpu={_n}: {_n} GPU(s) of {gpus.SLOTS} slots each (gpu_slots={_n * gpus.SLOTS});"
        f" a GPU job takes {gpus.SLOTS} / its rule's resources.<rule>.gpu_share",
        file=sys.stderr,
    )


# What each local GPU job takes (sslseg.gpus reads it in the job, by command = rule name, and
# picks the job's device): set once every rule exists, in Snakemake's environment, which local
# jobs inherit. Not for remote executors, CPU-only runs, or a pinned device (device: cuda:N).
onstart:
    if workflow.local_exec and config["device"] in ("auto", "cuda"):
        _slots = {
            r.name: getattr(r.resources.get("gpu_slots"), "value", None)
            for r in workflow.rules
        }
        os.environ.update(
            SSLSEG_GPU_SLOTS=as_json({k: v for k, v in _slots.items() if v})
        )


def threads_of(stage):
    return rule_resources(config, stage)["threads"]


def source_root(kind):
    """Where a dataset is read from: the generated demo folder, or the configured root."""
    d = config["data"][kind]
    if kind == "intermediate" and d["archive"]:
        return f"{R}/intel"
    if d["source"] == "demo":
        return (
            f"{R}/demo/"
            + {"pets": "", "pretrain": "imagenet", "intermediate": "intel"}[kind]
        )
    return d["root"]


def domain_list(data):
    """The class list a pretraining subset by domain reads (an input: editing it repacks)."""
    if data not in ("in_domain", "out_domain", "mixed"):
        return []
    return config["data"]["pretrain"]["domain_classes"] or os.path.relpath(
        os.path.join(workflow.basedir, "sslseg", "data", "imagenet_animals.txt")
    )


def domain_settings(data):
    """The class list's setting, for the subsets drawn by domain only (the others never read it)."""
    if data not in ("in_domain", "out_domain", "mixed"):
        return {}
    return {"domain_classes": config["data"]["pretrain"]["domain_classes"]}


def source_input(kind):
    """The job that makes a dataset's folder, when the workflow makes it (demo, archive)."""
    if kind == "intermediate" and config["data"][kind]["archive"]:
        return [f"{R}/intel/.done"]
    return [f"{R}/demo/.done"] if config["data"][kind]["source"] == "demo" else []


def pretrain_checkpoint(run):
    d = grid.pretrain_dir(run)
    return [f"{R}/pretrain/{d}/model.pt"] if d else []


def encoder_checkpoint(run):
    """What a pretraining starts from: DDeP's frozen encoder (its `encoder` setting), as the
    checkpoint of another objective's pretraining of this backbone, data and size, or a file.
    """
    source = grid.encoder_objective(config, run.objective)
    if source is not None:
        return pretrain_checkpoint(dataclasses.replace(run, objective=source))
    key = constant(run.objective, "INIT")
    return [config["objectives"][run.objective][key]] if key else []


def init_checkpoint(run):
    """What a fine-tune starts from: the intermediate classifier, the pretraining, or nothing."""
    d = grid.intermediate_dir(run)
    return [f"{R}/intermediate/{d}/model.pt"] if d else pretrain_checkpoint(run)


def subset_file(run):
    """The run's fine-tune rows: a count (`finetune_n250_s0.txt`) or a fraction of the pool
    (`finetune_n5pct_s0.txt`), resolved by the subset rule."""
    return f"{R}/splits/finetune_n{grid.size_token(run.finetune)}_s{run.seed}.txt"


def init_flag(wildcards, input):
    return f"--init {input.init}" if input.init else ""


def adapted(adaptation):
    """The run folders of one adaptation (the wildcard of its rule: finetune or probe)."""
    return [d for d, r in BY_RUN.items() if r.adaptation == adaptation]


LABEL_KINDS = sorted({r.labels for r in RUNS} - {"full"})  # the generated label sets
# Both adaptations in the grid: the probe − fine-tune Δ can be drawn.
BOTH_ADAPTATIONS = {r.adaptation for r in RUNS} == {"finetune", "probe"}


def label_set(kind, seed):
    """Path of one generated label set, without its extension (.h5, .quality.json)."""
    return f"{R}/labels/{kind}-s{seed}"


def labels_file(run):
    """The generated imperfect labels a run trains on (none for the true trimaps)."""
    return [] if run.labels == "full" else [f"{label_set(run.labels, run.seed)}.h5"]


def labels_flag(wildcards, input):
    return f"--labels {input.labels}" if input.labels else ""


def run_dirs():
    return [f"{R}/runs/{d}" for d in BY_RUN]


def runs_root(wildcards, input):
    """The folder holding every run's metrics, read off the inputs as Snakemake sees them (so
    also with remote storage): the first input is the first run's."""
    return os.path.dirname(input.metrics[0])[: -len(next(iter(BY_RUN)))].rstrip(os.sep)


def largest_run():
    """The run shown in the segmentation examples: a fine-tune on full labels if the grid has
    one, with most pretraining, most labels, first seed."""
    return max(
        RUNS,
        key=lambda r: (
            r.adaptation == "finetune",
            r.labels == "full",
            r.pretrain,
            not r.intermediate,
            resolve_size(r.finetune, 100_000),  # a fraction as a share of a large pool
        ),
    )  # ties: the first


def report_settings(*keys):
    """Only the report keys one figure rule uses, so changing the style reruns only `figures`."""
    return as_json({k: config["report"][k] for k in keys})


def largest_pretraining(objective=None):
    """(folder, run) of the pretraining shown in the reconstruction examples of `objective`
    (default: any): its largest, the first on ties (backbone, data, decoder width)."""
    items = [i for i in PRETRAINED.items() if objective in (None, i[1].objective)]
    return max(items, key=lambda item: item[1].pretrain)


def pretraining_objectives():
    """The grid's pretraining objectives that run (in grid order): a reconstruction figure each."""
    return list(dict.fromkeys(r.objective for r in PRETRAINED.values()))


def reconstruction_figures():
    """One example figure per pretraining objective: report/reconstructions_<objective>.png."""
    return [f"{R}/report/reconstructions_{o}.png" for o in pretraining_objectives()]


def all_outputs():
    out = [
        f"{R}/report/runs.csv",
        f"{R}/report/tables/summary.csv",
        f"{R}/report/fig_miou.png",
        f"{R}/report/published.md",
    ]
    out.append(f"{R}/report/segmentations.png")
    out += reconstruction_figures()
    if {r.intermediate for r in RUNS} == {False, True}:
        out.append(f"{R}/report/fig_delta.png")
    if INTERMEDIATE:
        out.append(f"{R}/report/intermediate.csv")
    if LABEL_KINDS:
        out += [
            f"{R}/report/tables/label_quality.csv",
            f"{R}/report/fig_label_quality.png",
            f"{R}/report/label_examples.png",
        ]
    if BOTH_ADAPTATIONS:
        out.append(f"{R}/report/fig_probe_delta.png")
    out.append(f"{R}/report/convergence.csv")
    out += [f"{R}/report/fig_curves_{s}.png" for s in training_stages()]
    return out


def training_stages():
    """The grid's training stages, a learning-curve figure each (sslseg.report.curves)."""
    stages = ["pretrain"] * bool(PRETRAINED) + ["intermediate"] * bool(INTERMEDIATE)
    return stages + [a for a in ("finetune", "probe") if adapted(a)]


def label_sets(seeds=None):
    """The generated label packs of the grid (of `seeds`, default all), kind by kind."""
    seeds = config["grid"]["seeds"] if seeds is None else seeds
    return [label_set(k, s) for k in LABEL_KINDS for s in seeds]


# A stage that fails on bad input prints one line, `sslseg <rule>: error: <why>`, into its log
# file; on screen Snakemake's error block only names that file, and `show-failed-logs` (which
# prints whole logs) applies only where a profile sets it. So every failed run ends with each
# failed job's log and that line, whatever the profile (sslseg/failures.py).
onerror:
    _why = failures.summary(f"{R}/logs", STARTED)
    if _why:
        print(_why, file=sys.stderr)
