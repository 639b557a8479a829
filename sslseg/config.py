"""The one config path: YAML → schema validation (with defaults filled in) → plain dict.

Used by the Snakefile and by the command line alike; the schema in
workflow/schemas/config.schema.yaml holds every key, its default and its meaning.
Errors come out as one line naming the key and what to do.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import yaml

from sslseg.io import UserError

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def validate(config: dict, source: str = "config") -> dict:
    """Fill defaults into `config` in place and check it; raise UserError on the first problem."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    _check_finite(config, source)
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = _with_defaults(Draft202012Validator)(schema)
    error = best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        hint = "remove it (see README's config reference)" if error.validator == "additionalProperties" else \
            "see the schema's description of this key"
        message = error.message
        if error.validator == "additionalProperties":
            message = message.replace("Additional properties are not allowed", "unknown key")
            close = _did_you_mean(error)
            if close:
                message, hint = f"{message}; did you mean {close!r}?", "rename it (see README's config reference)"
        if error.validator == "pattern" and error.schema.get("description"):  # the form in words, not the regex
            message, hint = f"{error.instance!r} does not fit this key ({error.schema['description']})", "fix it"
        if error.validator == "type" and _number_as_text(error.instance):  # Snakemake's --config k={"a": [0]}
            hint = "a value inside a --config mapping arrives as text: set this key in a --configfile instead"
        raise UserError(f"{source}: {key}: {message}; {hint}")
    from sslseg import grid

    try:
        grid.check(config)
        _check_across_keys(config)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return config


def _number_as_text(value) -> bool:
    """A string that reads as a number or boolean: how a nested value given on Snakemake's command
    line (--config 'grid={"seeds": [0]}') reaches the config."""
    if not isinstance(value, str):
        return False
    try:
        return isinstance(yaml.safe_load(value), (int, float, bool))
    except yaml.YAMLError:
        return False


def _did_you_mean(error) -> str:
    """The allowed key closest to an unknown one (a typo: 'seed' for 'seeds'), else ''."""
    import difflib

    allowed = list(error.schema.get("properties", {}))
    unknown = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
    close = difflib.get_close_matches(unknown[0], allowed, n=1) if unknown else []
    return close[0] if close else ""


def _check_finite(value, source: str, key: str = "") -> None:
    # YAML reads `.nan` and `.inf` as floats, and NaN passes every "greater than" of the schema
    # (all comparisons with NaN are false), so it would surface as a torch error after packing.
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{source}: {key}: {value} is not a finite number; give a number")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        _check_finite(v, source, f"{key}.{k}" if key else str(k))


def _check_across_keys(config: dict) -> None:
    """Constraints between keys that the schema cannot express, checked before any work; each
    error is one line naming both keys."""
    from sslseg import grid

    g, model = config["grid"], config["model"]
    patched = [b for b in g["backbones"] if grid.backbones()[b]["accepts_mask"]]
    if patched and model["image_size"] % model["patch_size"]:
        size, p = model["image_size"], model["patch_size"]
        near = sorted({size // p * p or p, (size // p + 1) * p})
        raise UserError(f"model.image_size: {size} is not a multiple of model.patch_size {p} (the ViT "
                        f"backbones {', '.join(patched)} cut the image into patches); use {' or '.join(map(str, near))}")
    _check_names(config)
    counts = known_counts(config)
    _check_same_sizes(g["finetune_sizes"], pool_size(config))
    # which stages run (fractions count even where the pool, and so their image count, is unknown)
    used = {"pretrain": [n for n in g["pretrain_sizes"] if n > 0], "intermediate": [True] if any(g["intermediate"])
            else [], **{a: g["finetune_sizes"] for a in ("finetune", "probe") if a in g["adaptations"]}}
    # the recipe each stage runs with, and where its keys come from (named in errors): per objective
    # for pretraining (objectives.<o>.pretrain over pretrain:), a named recipe over a fine-tune's section
    recipes = {f"pretrain (with objectives.{o}.pretrain)" if config["objectives"][o].get("pretrain") else "pretrain":
               {**config["pretrain"], **config["objectives"][o].get("pretrain", {})} for o in g["objectives"]}
    recipes.update({f"{stage} (with recipes.{config[stage]['recipe']})" if config[stage].get("recipe") else stage:
                    finetune_recipe(config, stage) if stage in ("finetune", "probe") else config[stage]
                    for stage in ("intermediate", "finetune", "probe")})
    for where, c in recipes.items():
        stage, source = where.split()[0], where[len(where.split()[0]):]
        if not used.get(stage):
            continue  # the stage never runs
        if c["iterations"] == 0 and c["epochs"] < 1:
            raise UserError(f"{stage}.epochs{source}: 0 with {stage}.iterations 0 trains nothing (the model would "
                            f"be scored untrained); set {stage}.epochs or {stage}.iterations to at least 1")
        budget, unit = (c["iterations"], "iterations") if c["iterations"] else (c["epochs"], "epochs")
        late = [m for m in c["milestones"] if m >= budget] if c["schedule"] == "multistep" else []
        if late:
            raise UserError(f"{stage}.milestones{source}: {late[0]} is not below {stage}.{unit} {budget}, so the "
                            f"learning rate never drops there; lower it, or remove it")
        if c["warmup"] >= budget:
            raise UserError(f"{stage}.warmup{source}: {c['warmup']} is not below {stage}.{unit} {budget}; the whole "
                            "run would be warm-up")
    smallest = {"pretrain": ("grid.pretrain_sizes", min(used["pretrain"], default=0)),
                **{a: ("grid.finetune_sizes", min(counts, default=0)) for a in ("finetune", "probe") if a in used}}
    for where, c in recipes.items():
        stage = where.split()[0]
        key, n = smallest.get(stage, ("", 0))
        if n and c["drop_last"] and c["batch_size"] > n:
            raise UserError(f"{stage}.batch_size: {c['batch_size']} is larger than {key} "
                            f"{n}, so with {stage}.drop_last that run would have no batch; lower "
                            f"{stage}.batch_size or set {stage}.drop_last false")
    normed = [b for b in g["backbones"] if grid.backbones()[b]["batch_norm"]]
    tune = finetune_recipe(config, "finetune")
    b = tune["batch_size"]  # (a probe keeps its frozen BatchNorm in eval mode)
    single = [n for n in counts if n % b == 1 or b == 1]
    if "finetune" in used and normed and single and (b == 1 or not tune["drop_last"]):  # (fractions: stages/train.py)
        raise UserError(f"finetune.batch_size: {b} leaves a last batch of one image for grid.finetune_sizes "
                        f"{single[0]}, which BatchNorm ({normed[0]}) cannot train on; change the batch "
                        "or set finetune.drop_last true")
    demo, data = config["data"]["demo"], config["data"]
    intel = 6 * demo["intel_per_class"]  # the demo's intermediate training set: 6 scene classes
    if used["intermediate"] and data["intermediate"]["source"] == "demo" and config["intermediate"]["batch_size"] > intel:
        raise UserError(f"intermediate.batch_size: {config['intermediate']['batch_size']} is larger than the {intel} "
                        f"images of data.demo.intel_per_class {demo['intel_per_class']} x 6 classes; lower the batch "
                        "or raise intel_per_class")
    if data["pets"]["source"] == "demo" and data["pets"]["split"] == "test_draw" and counts:
        need = data["pets"]["test_size"] + max(counts)
        if need > demo["pets"]:
            raise UserError(f"data.demo.pets: {demo['pets']} generated pets cannot hold "
                            f"data.pets.test_size {data['pets']['test_size']} + the largest of grid.finetune_sizes "
                            f"{max(counts)}; raise data.demo.pets to {need}")
    if data["pretrain"]["source"] == "demo" and max(g["pretrain_sizes"]) > demo["pretrain"]:
        raise UserError(f"grid.pretrain_sizes: {max(g['pretrain_sizes'])} is larger than data.demo.pretrain "
                        f"{demo['pretrain']} generated images; raise data.demo.pretrain or lower the size")


def _check_same_sizes(sizes: list, pool: int | None) -> None:
    """Two label budgets that are one: "5%" and "5.0%" always, 4 and "25%" of a 16-image pool (where
    the pool is known), would train and score every run of that size twice (under two paths)."""
    from sslseg.sizes import parse_size, resolve_size

    parsed = [parse_size(v) for v in sizes]
    same = (lambda a, b: resolve_size(a, pool) == resolve_size(b, pool)) if pool is not None else \
        (lambda a, b: isinstance(a, str) and isinstance(b, str) and float(a[:-1]) == float(b[:-1]))
    for j in range(len(sizes)):
        for i in range(j):
            if same(parsed[i], parsed[j]):
                n = f"{resolve_size(parsed[i], pool)} of the {pool}-image pool" if pool is not None else "one budget"
                raise UserError(f"grid.finetune_sizes: {sizes[i]!r} and {sizes[j]!r} are {n}, so every run of that "
                                "size would be trained twice; keep one")


def pool_size(config: dict) -> int | None:
    """The fine-tune pool's size where the config alone fixes it (the generated demo pets), else
    None (the real dataset's size is known once it is packed)."""
    pets = config["data"]["pets"]
    n = config["data"]["demo"]["pets"] if pets["source"] == "demo" else None
    if n is None:
        return None
    if pets["split"] == "train_val_test":
        return n - round(n * pets["val_fraction"]) - round(n * pets["test_fraction"])
    return n - pets["test_size"]


def known_counts(config: dict) -> list[int]:
    """The label budgets of grid.finetune_sizes as image counts, as far as the config fixes them:
    every count, and the fractions where the pool size is known (pool_size)."""
    from sslseg.sizes import resolve_size

    pool = pool_size(config)
    return [resolve_size(v, pool or 0) for v in config["grid"]["finetune_sizes"]
            if isinstance(v, int) or pool is not None]


def _check_names(config: dict) -> None:
    """Names one key gives that another must hold: recipes, the DDeP encoder, weights files."""
    from sslseg import grid

    g = config["grid"]
    for stage in ("finetune", "probe"):
        name = config[stage].get("recipe", "")
        if name and name not in config["recipes"]:
            raise UserError(f"{stage}.recipe: {name!r} is not in recipes (available: "
                            f"{', '.join(config['recipes']) or 'none'}); name one of them or add it under recipes:")
    pets = config["data"]["pets"]
    if pets["split"] == "train_val_test" and pets["val_fraction"] + pets["test_fraction"] >= 1:
        raise UserError(f"data.pets.val_fraction: {pets['val_fraction']} + data.pets.test_fraction "
                        f"{pets['test_fraction']} leave no pets to train on; lower them")
    for name in g["objectives"]:
        gammas = config["objectives"][name].get("gamma_range", [])
        if len(gammas) == 1 or (len(gammas) == 2 and gammas[0] > gammas[1]):
            raise UserError(f"objectives.{name}.gamma_range: {gammas} is not [low, high]; give two numbers, "
                            "low first, or [] for a fixed γ")
    pretraining = any(g["pretrain_sizes"])
    if pretraining and "ddep" in g["objectives"]:
        enc = config["objectives"]["ddep"]["encoder"]
        if grid.is_path(enc):
            if not Path(enc).is_file():
                raise UserError(f"objectives.ddep.encoder: {enc} is not a file; give a checkpoint file, or a "
                                f"pretraining objective of grid.objectives ({', '.join(g['objectives'])})")
        elif enc not in g["objectives"] or enc == "ddep":
            raise UserError(f"objectives.ddep.encoder: {enc!r} is not another objective of grid.objectives "
                            f"({', '.join(o for o in g['objectives'] if o != 'ddep')}); add it there, or give a checkpoint file")
    for backbone, path in config["model"]["weights"].items():
        if backbone not in grid.backbones():
            raise UserError(f"model.weights.{backbone}: no such backbone; available: {', '.join(grid.backbones())}")
        if backbone in g["backbones"] and not Path(path).is_file():
            raise UserError(f"model.weights.{backbone}: {path} is not a file (nothing is downloaded at run time); "
                            "put the weights file there, or remove the key to start from random weights")
    decoders = any(grid.uses_decoder(config, a, o) for a in g["adaptations"]
                   for o in ([*g["objectives"], grid.NONE] if pretraining else [grid.NONE]))
    if len(g["decoder_widths"]) > 1 and not decoders:
        raise UserError(f"grid.decoder_widths: {g['decoder_widths']} changes nothing: no run has a UNet decoder "
                        "(set finetune.head unet, or pretrain with dep or ddep); use [1]")


def merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base` (as Snakemake merges --configfile)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    return data


def load_config(path: str | Path = "config.yaml", extra: str | Path | None = None) -> dict:
    config = read_yaml(path)
    if extra:
        config = merge(config, read_yaml(extra))
    return validate(config, str(extra or path))


# The objective each stage trains, and the classes it predicts (fixed by its dataset). The
# segmentation stage runs the recipe of its run's adaptation: `finetune:` or `probe:`.
STAGE_OBJECTIVES = {"intermediate": ("classify", 6), "finetune": ("segment", 3), "probe": ("segment", 3)}
FROZEN = {"probe": ["backbone."]}  # what an adaptation never trains


MODEL_KEYS = ("image_size", "patch_size")  # the `model:` keys every model is built with


def model_settings(config: dict, backbone: str, decoder: int | None = None, weights: bool = False) -> dict:
    """The `model` slice a model-building stage receives: the run's backbone, image and patch
    size; the UNet decoder's channels and width where the stage builds one (`decoder`: the
    run's width); with `weights` (a stage that starts from no checkpoint), the backbone's
    weights file where model.weights names one. Nothing else, so a decoder or weights setting
    reruns only the stages it shapes."""
    m = {"backbone": backbone, **{k: config["model"][k] for k in MODEL_KEYS}}
    if decoder is not None:
        m.update(decoder_channels=config["model"]["decoder_channels"], decoder_width=decoder)
    if weights and backbone in config["model"]["weights"]:
        m["weights"] = config["model"]["weights"][backbone]
    return m


def finetune_recipe(config: dict, stage: str) -> dict:
    """A segmentation stage's section with its named recipe (`<stage>.recipe`) applied."""
    section = dict(config[stage])
    name = section.pop("recipe", "")
    return {**section, **(config["recipes"][name] if name else {})}


def stage_settings(config: dict, stage: str, run) -> dict:
    """What one training stage of `run` (a sslseg.grid.Run) depends on: its own section (a
    downstream run's stage is its adaptation: finetune or probe), the
    objective and its settings, the model, the loop settings that change results, the device.
    Rules pass exactly this as `params`, so only a change here reruns the stage."""
    if stage in ("finetune", "probe") and stage != run.adaptation:
        raise ValueError(f"run {run} is adapted by {run.adaptation}, not {stage}")
    from sslseg import grid
    from sslseg.objectives import constant

    if stage == "pretrain":
        objective, extra = run.objective, dict(config["objectives"][run.objective])
        section = {**config["pretrain"], **extra.pop("pretrain", {})}  # the objective's own recipe keys win
        decoder = run.decoder if grid.has_decoder(objective) else None
    else:
        objective, classes = STAGE_OBJECTIVES[stage]
        extra = {"classes": classes}
        section = finetune_recipe(config, stage) if stage in ("finetune", "probe") else config[stage]
        decoder = run.decoder if stage != "intermediate" and section["head"] == "unet" else None
    # where the stage starts from no checkpoint, model.weights initialises its backbone
    fresh = not constant(objective, "INIT") if stage == "pretrain" else \
        not run.pretrain if stage == "intermediate" else not (run.pretrain or run.intermediate)
    s = {"stage": stage, "objective": objective, "model": model_settings(config, run.backbone, decoder, fresh),
         "device": config["device"], **config["train"], **section, **extra,
         "cuda_batch_multiplier": stage_multiplier(config["train"]["cuda_batch_multiplier"], stage)}
    frozen = FROZEN.get(stage, []) + (constant(objective, "FREEZE") or [])
    if frozen:
        s["freeze"] = sorted({*s.get("freeze", []), *frozen})
    if objective == "segment":
        s["seed"] = run.seed
    return s


MULTIPLIED = ("pretrain", "intermediate")  # the stages a plain train.cuda_batch_multiplier multiplies


def stage_multiplier(setting: int | dict, stage: str) -> int:
    """The batch multiplier `stage` asks for on CUDA (train.cuda_batch_multiplier): a number
    multiplies pretraining and the intermediate step only, since a fine-tune's or probe's batch
    is part of the label-budget protocol (250 pets at 64: 4 steps an epoch) and its small set
    leaves nothing to gain; a mapping names each stage's, 1 for a stage it leaves out.
    (sslseg.optim.device_scaling caps it so no batch exceeds its set.)"""
    if isinstance(setting, dict):
        return setting.get(stage, 1)
    return setting if stage in MULTIPLIED else 1


def eval_settings(config: dict, backbone: str, stage: str = "finetune") -> dict:
    """What evaluating a `stage` model (finetune: a segmenter, intermediate: a classifier), or
    drawing its examples, depends on. (The model is built as its checkpoint records it:
    sslseg.models.predict.trained_settings.)"""
    objective, classes = STAGE_OBJECTIVES[stage]
    return {"objective": objective, "classes": classes, "model": model_settings(config, backbone),
            "device": config["device"], "amp": config["train"]["amp"], **config["evaluate"]}


def runtime_settings(config: dict) -> dict:
    """Settings that cannot change a result (the `runtime:` section): handed to jobs outside
    their params (sslseg.runtime)."""
    return dict(config["runtime"])


def compile_cache_env(config: dict, workdir: str | Path = ".") -> dict[str, str]:
    """The environment that gives every job of a results folder one torch.compile cache:
    TORCHINDUCTOR_CACHE_DIR (inductor's FX-graph and kernel cache) and TRITON_CACHE_DIR (the
    compiled GPU kernels) under results/<name>/.cache/. Their defaults sit in /tmp of each node,
    so on a cluster every job would pay a cold compile (~36 s for ViNy, BENCHMARKS.md) instead
    of ~5 s from a warm cache; both write entries atomically, so concurrent jobs can share them.
    Absolute (resolved against `workdir`, the workflow's working directory), so nothing that
    changes a job's directory can split the cache. Results never depend on them."""
    root = (Path(workdir) / "results" / config["name"] / ".cache").resolve()
    return {"TORCHINDUCTOR_CACHE_DIR": str(root / "torchinductor"), "TRITON_CACHE_DIR": str(root / "triton")}


def rule_resources(config: dict, rule: str) -> dict:
    """threads, mem_mb, runtime, gpu, gpu_share, gpu_model and the SLURM keys (slurm_partition,
    constraint, slurm_extra; cpus_per_gpu where set) of one rule's resources entry (the schema
    fills every other key), as plain numbers and strings: the workflow (common.smk's `res`, which makes
    mem_mb grow with the retry attempt), the planner and the benchmark all read them."""
    return config["resources"][rule]


def reference_markdown() -> str:
    """The config reference table of the README, generated from the schema (a test keeps them equal)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    defs = schema.get("$defs", {})
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]

    def resolve(sub: dict) -> dict:
        ref = sub.get("$ref", "")
        if ref.startswith("#/$defs/"):
            target = defs
            for part in ref[len("#/$defs/"):].split("/"):
                target = target[part]
            return {**target, **{k: v for k, v in sub.items() if k != "$ref"}}
        return sub

    def walk(props: dict, prefix: str) -> None:
        for key, sub in props.items():
            recipe = sub.get("$ref", "").endswith("/recipe")  # overrides: its keys are the stage's, listed there
            sub = resolve(sub)
            name = f"{prefix}{key}"
            if sub.get("type") == "object" and "properties" in sub and key not in ("augment",) \
                    and not prefix.startswith("resources.") and not recipe:
                walk(sub["properties"], name + ".")
                continue
            default = json.dumps(sub.get("default")) if "default" in sub else ""
            meaning = sub.get("description", "")
            if "enum" in sub:
                meaning = (meaning + "; " if meaning else "") + "one of " + ", ".join(f"`{v}`" for v in sub["enum"])
            rows.append(f"| `{name}` | `{default}` | {meaning} |")

    walk(schema["properties"], "")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
