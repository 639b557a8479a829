# Segmentation fine-tune per (pretrain size p, intermediate i, subset size n, seed).


rule finetune:
    input:
        pets=rules.pack_pets.output.pack,
        rows=f"{R}/splits/finetune_n{{n}}_s{{seed}}.txt",
        init=init_checkpoint,
        code=code("finetune"),
    output:
        model=f"{R}/finetune/p{{p}}_i{{i}}/n{{n}}_s{{seed}}/model.pt",
        meta=f"{R}/finetune/p{{p}}_i{{i}}/n{{n}}_s{{seed}}/model.pt.json",
        train_log=f"{R}/finetune/p{{p}}_i{{i}}/n{{n}}_s{{seed}}/log.csv",
    params:
        settings=lambda w: settings("finetune", seed=int(w.seed)),
        init=lambda w, input: f"--init {input.init}" if input.init else "",
    log:
        f"{R}/logs/finetune/p{{p}}_i{{i}}/n{{n}}_s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/p{{p}}_i{{i}}/n{{n}}_s{{seed}}.tsv"
    threads: threads_of("finetune")
    resources:
        **res("finetune"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg finetune --pets {input.pets} --rows {input.rows} {params.init}"
        " --out {output.model} --log {output.train_log} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"
