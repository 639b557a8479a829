# Evaluation: confusion matrix over the whole test set → accuracy, per-class IoU, mIoU.


rule evaluate:
    input:
        model=rules.finetune.output.model,
        pets=rules.pack_pets.output.pack,
        rows=rules.splits.output.test,
        code=code("evaluate"),
    output:
        metrics=f"{R}/finetune/p{{p}}_i{{i}}/n{{n}}_s{{seed}}/metrics.json",
        meta=f"{R}/finetune/p{{p}}_i{{i}}/n{{n}}_s{{seed}}/metrics.json.json",
    params:
        settings=settings("evaluate"),
    log:
        f"{R}/logs/evaluate/p{{p}}_i{{i}}/n{{n}}_s{{seed}}.log",
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg evaluate --ckpt {input.model} --pets {input.pets} --rows {input.rows}"
        " --out {output.metrics} --settings {params.settings:q} --threads {threads} > {log} 2>&1"
