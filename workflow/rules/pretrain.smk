# Self-supervised pretraining (SimMIM) on the first p images of the pretraining pack.


rule pretrain:
    input:
        pack=rules.pack_pretrain.output.pack,
        code=code("pretrain"),
    output:
        model=f"{R}/pretrain/p{{p}}/model.pt",
        meta=f"{R}/pretrain/p{{p}}/model.pt.json",
        train_log=f"{R}/pretrain/p{{p}}/log.csv",
    params:
        settings=settings("pretrain"),
    log:
        f"{R}/logs/pretrain/p{{p}}.log",
    benchmark:
        f"{R}/benchmarks/pretrain/p{{p}}.tsv"
    threads: threads_of("pretrain")
    resources:
        **res("pretrain"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg pretrain --pack {input.pack} --size {wildcards.p} --out {output.model}"
        " --log {output.train_log} --settings {params.settings:q} --threads {threads} > {log} 2>&1"
