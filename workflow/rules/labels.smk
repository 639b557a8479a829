# Imperfect labels (study B): scribbles, points or noisy masks generated from the true trimaps
# of the fine-tune pool, per seed, cached as their own stage with their measured quality.


rule weak_labels:
    input:
        pets=rules.pack_pets.output.pack,
        pool=rules.splits.output.pool,
        code=code("weak_labels"),
    output:
        labels=f"{R}/labels/{{kind}}-s{{seed}}.h5",
        meta=f"{R}/labels/{{kind}}-s{{seed}}.h5.json",
        quality=f"{R}/labels/{{kind}}-s{{seed}}.quality.json",
    log:
        f"{R}/logs/weak_labels/{{kind}}-s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/weak_labels/{{kind}}-s{{seed}}.tsv"
    wildcard_constraints:
        kind="|".join(LABEL_KINDS) or "(?!)",
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("pack")
    resources:
        **res("pack"),
    params:
        settings=lambda w: as_json({"kind": w.kind, **config["labels"][w.kind]}),
    shell:
        "python -m sslseg weak_labels --pets {input.pets} --pool {input.pool} --out {output.labels}"
        " --quality {output.quality} --seed {wildcards.seed} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"
