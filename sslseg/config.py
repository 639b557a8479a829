"""The one config path: YAML → schema validation (with defaults filled in) → plain dict.

Used by the Snakefile and by the command line alike; the schema in
workflow/schemas/config.schema.yaml holds every key, its default and its meaning.
Errors come out as one line naming the key and what to do.
"""

from __future__ import annotations

import copy
import json
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
        raise UserError(f"{source}: {key}: {message}; {hint}")
    from sslseg import grid

    grid.check(config)
    return config


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


# The objective each stage trains, and the classes it predicts (fixed by its dataset).
STAGE_OBJECTIVES = {"intermediate": ("classify", 6), "finetune": ("segment", 3)}


def model_settings(config: dict, backbone: str) -> dict:
    """The `model` slice every model-building stage receives: the run's backbone + `model:`."""
    return {"backbone": backbone, **config["model"]}


def stage_settings(config: dict, stage: str, run) -> dict:
    """What one training stage of `run` (a sslseg.grid.Run) depends on: its own section, the
    objective and its settings, the model, the loop settings that change results, the device.
    Rules pass exactly this as `params`, so only a change here reruns the stage."""
    if stage == "pretrain":
        objective, extra = run.objective, config["objectives"][run.objective]
    else:
        objective, classes = STAGE_OBJECTIVES[stage]
        extra = {"classes": classes}
    s = {"stage": stage, "objective": objective, "model": model_settings(config, run.backbone),
         "device": config["device"], **config["train"], **config[stage], **extra}
    if stage == "finetune":
        s["seed"] = run.seed
    return s


def eval_settings(config: dict, backbone: str, stage: str = "finetune") -> dict:
    """What evaluating a `stage` model (finetune: a segmenter, intermediate: a classifier), or
    drawing its examples, depends on."""
    objective, classes = STAGE_OBJECTIVES[stage]
    return {"objective": objective, "classes": classes, "model": model_settings(config, backbone),
            "device": config["device"], "amp": config["train"]["amp"], **config["evaluate"]}


def runtime_settings(config: dict) -> dict:
    """Settings that cannot change a result (the `runtime:` section): handed to jobs outside
    their params (sslseg.runtime)."""
    return dict(config["runtime"])


def rule_resources(config: dict, rule: str) -> dict:
    """threads, mem_mb, runtime, gpu, gpu_model of one rule's resources entry (the schema
    fills every key), as the workflow, the planner and the benchmark all read them."""
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
            sub = resolve(sub)
            name = f"{prefix}{key}"
            if sub.get("type") == "object" and "properties" in sub and key not in ("augment",) \
                    and not prefix.startswith("resources."):
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
