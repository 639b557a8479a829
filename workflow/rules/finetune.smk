# Segmentation, one job per downstream run of the grid: a fine-tune (every weight trained,
# recipe `finetune:`) or a frozen probe (backbone frozen, linear head, recipe `probe:`), on the
# true trimaps or on generated imperfect labels, e.g.
# results/<name>/runs/viny/simmim-random-45000-i1/probe-scribbles-n250-s0/model.pt.
# Under data.pets.split train_val_test (VALIDATE, data.smk) each job also scores splits/val.txt
# after every epoch (`--val`): val_loss, val_miou, val_pixel_acc in its log.csv.


rule finetune:
    input:
        pets=rules.pack_pets.output.pack,
        rows=lambda w: subset_file(BY_RUN[w.run]),
        init=lambda w: init_checkpoint(BY_RUN[w.run]),
        labels=lambda w: labels_file(BY_RUN[w.run]),
        val=lambda w: [rules.splits.output.val] if VALIDATE else [],
        code=code("finetune", stage_objective("finetune")),
    output:
        model=f"{R}/runs/{{run}}/model.pt",
        meta=f"{R}/runs/{{run}}/model.pt.json",
        train_log=f"{R}/runs/{{run}}/log.csv",
    log:
        f"{R}/logs/finetune/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{run}}.tsv"
    wildcard_constraints:
        run=grid.wildcard(adapted("finetune")),
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("finetune")
    resources:
        **res("finetune"),
    params:
        settings=lambda w: as_json(stage_settings(config, "finetune", BY_RUN[w.run])),
        init=init_flag,
        labels=labels_flag,
        val=lambda w, input: f"--val {input.val}" if input.val else "",
    shell:
        "python -m sslseg finetune --pets {input.pets} --rows {input.rows} {params.init} {params.labels}"
        " {params.val}"
        " --out {output.model} --log {output.train_log} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"


rule probe:
    input:
        pets=rules.pack_pets.output.pack,
        rows=lambda w: subset_file(BY_RUN[w.run]),
        init=lambda w: init_checkpoint(BY_RUN[w.run]),
        labels=lambda w: labels_file(BY_RUN[w.run]),
        val=lambda w: [rules.splits.output.val] if VALIDATE else [],
        code=code("probe", stage_objective("probe")),
    output:
        model=f"{R}/runs/{{run}}/model.pt",
        meta=f"{R}/runs/{{run}}/model.pt.json",
        train_log=f"{R}/runs/{{run}}/log.csv",
    log:
        f"{R}/logs/probe/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/probe/{{run}}.tsv"
    wildcard_constraints:
        run=grid.wildcard(adapted("probe")),
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("finetune")
    resources:
        **res("finetune"),
    params:
        settings=lambda w: as_json(stage_settings(config, "probe", BY_RUN[w.run])),
        init=init_flag,
        labels=labels_flag,
        val=lambda w, input: f"--val {input.val}" if input.val else "",
    shell:
        "python -m sslseg probe --pets {input.pets} --rows {input.rows} {params.init} {params.labels}"
        " {params.val}"
        " --out {output.model} --log {output.train_log} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"
