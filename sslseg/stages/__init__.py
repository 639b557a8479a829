"""The workflow's stages as plain functions with explicit inputs and outputs, usable without
Snakemake. A rule, its `python -m sslseg` sub-command and its function share one name
(sslseg/cli.py's table). Each takes the stage's settings (a validated slice of the config;
see workflow/schemas/config.schema.yaml) and writes its artifacts atomically, with a
`<artifact>.json` provenance sidecar. Glue only: the work is in data/, train.py, models/,
objectives/, metrics.py and report/.
"""
