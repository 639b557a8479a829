# Optional intermediate supervised step: classify Intel scenes from the pretrained backbone,
# one job per pretraining of the grid (and one from scratch), e.g.
# results/<name>/intermediate/viny/simmim-random-45000/model.pt.


rule intermediate:
    input:
        pack=f"{R}/data/intermediate_train.h5",
        init=lambda w: pretrain_checkpoint(INTERMEDIATE[w.inter]),
        code=code("intermediate", stage_objective("intermediate")),
    output:
        model=f"{R}/intermediate/{{inter}}/model.pt",
        meta=f"{R}/intermediate/{{inter}}/model.pt.json",
        train_log=f"{R}/intermediate/{{inter}}/log.csv",
    log:
        f"{R}/logs/intermediate/{{inter}}.log",
    benchmark:
        f"{R}/benchmarks/intermediate/{{inter}}.tsv"
    priority: 5  # after its pretraining, before the fine-tunes that wait on it (see pretrain)
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("intermediate")
    resources:
        **res("intermediate"),
    params:
        settings=lambda w: as_json(
            stage_settings(config, "intermediate", INTERMEDIATE[w.inter])
        ),
        init=init_flag,
    shell:
        "python -m sslseg intermediate --pack {input.pack} {params.init} --out {output.model}"
        " --log {output.train_log} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"


rule intermediate_eval:
    input:
        model=rules.intermediate.output.model,
        pack=f"{R}/data/intermediate_test.h5",
        code=code("intermediate_eval", stage_objective("intermediate")),
    output:
        f"{R}/intermediate/{{inter}}/accuracy.json",
    log:
        f"{R}/logs/intermediate_eval/{{inter}}.log",
    benchmark:
        f"{R}/benchmarks/intermediate_eval/{{inter}}.tsv"
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    params:
        settings=lambda w: as_json(
            eval_settings(config, INTERMEDIATE[w.inter].backbone, "intermediate")
        ),
        run=lambda w: as_json(grid.coordinates(INTERMEDIATE[w.inter], "intermediate")),
    shell:
        "python -m sslseg intermediate_eval --ckpt {input.model} --pack {input.pack} --out {output}"
        " --settings {params.settings:q} --run {params.run:q} --threads {threads} > {log} 2>&1"
