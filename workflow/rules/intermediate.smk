# Optional intermediate supervised step: classify Intel scenes from the pretrained backbone.


rule intermediate:
    input:
        pack=f"{R}/data/intermediate_train.h5",
        init=lambda w: f"{R}/pretrain/p{w.p}/model.pt" if int(w.p) else [],
        code=code("intermediate"),
    output:
        model=f"{R}/intermediate/p{{p}}/model.pt",
        meta=f"{R}/intermediate/p{{p}}/model.pt.json",
        train_log=f"{R}/intermediate/p{{p}}/log.csv",
    params:
        settings=settings("intermediate", classes=6),
        init=lambda w, input: f"--init {input.init}" if input.init else "",
    log:
        f"{R}/logs/intermediate/p{{p}}.log",
    benchmark:
        f"{R}/benchmarks/intermediate/p{{p}}.tsv"
    threads: threads_of("intermediate")
    resources:
        **res("intermediate"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg intermediate --pack {input.pack} {params.init} --out {output.model}"
        " --log {output.train_log} --settings {params.settings:q} --threads {threads} > {log} 2>&1"


rule intermediate_eval:
    input:
        model=rules.intermediate.output.model,
        pack=f"{R}/data/intermediate_test.h5",
        code=code("intermediate"),
    output:
        f"{R}/intermediate/p{{p}}/accuracy.json",
    params:
        settings=settings("evaluate", classes=6),
    log:
        f"{R}/logs/intermediate_eval/p{{p}}.log",
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg intermediate-eval --ckpt {input.model} --pack {input.pack} --out {output}"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"
