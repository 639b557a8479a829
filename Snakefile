# sslseg: what self-supervised pretraining buys a segmentation model at each label budget.
# This file only wires: config, schema validation, the rule files, and `rule all`.
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config.yaml"  # the defaults, whatever --directory is


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/intermediate.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_outputs(),
