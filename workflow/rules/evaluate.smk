# Evaluation: confusion matrix over the whole test set → accuracy, per-class IoU, mIoU,
# written with the run's grid coordinates.


rule evaluate:
    input:
        model=f"{R}/runs/{{run}}/model.pt",  # made by the finetune or the probe rule
        trained=f"{R}/runs/{{run}}/model.pt.json",  # its sidecar: `images` → labelled_images
        pets=rules.pack_pets.output.pack,
        rows=rules.splits.output.test,
        code=code("evaluate", stage_objective("finetune")),
    output:
        metrics=f"{R}/runs/{{run}}/metrics.json",
        meta=f"{R}/runs/{{run}}/metrics.json.json",
    log:
        f"{R}/logs/evaluate/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{run}}.tsv"
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    params:
        settings=lambda w: as_json(eval_settings(config, BY_RUN[w.run].backbone)),
        run=lambda w: as_json(grid.coordinates(BY_RUN[w.run])),
    shell:
        "python -m sslseg evaluate --ckpt {input.model} --pets {input.pets} --rows {input.rows}"
        " --out {output.metrics} --settings {params.settings:q} --run {params.run:q}"
        " --threads {threads} > {log} 2>&1"
