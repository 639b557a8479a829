# Segmentation fine-tune, one job per downstream run of the grid, e.g.
# results/<name>/runs/viny/simmim-random-45000-i1/finetune-full-n250-s0/model.pt.


rule finetune:
    input:
        pets=rules.pack_pets.output.pack,
        rows=lambda w: subset_file(BY_RUN[w.run]),
        init=lambda w: init_checkpoint(BY_RUN[w.run]),
        code=code("finetune", stage_objective("finetune")),
    output:
        model=f"{R}/runs/{{run}}/model.pt",
        meta=f"{R}/runs/{{run}}/model.pt.json",
        train_log=f"{R}/runs/{{run}}/log.csv",
    log:
        f"{R}/logs/finetune/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{run}}.tsv"
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("finetune")
    resources:
        **res("finetune"),
    params:
        settings=lambda w: as_json(stage_settings(config, "finetune", BY_RUN[w.run])),
        init=init_flag,
    shell:
        "python -m sslseg finetune --pets {input.pets} --rows {input.rows} {params.init}"
        " --out {output.model} --log {output.train_log} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"
