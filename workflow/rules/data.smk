# Data: generated demo set (offline default), packing to HDF5, test split and nested subsets.


# Seconds of work each: run them where Snakemake runs, not as cluster jobs.
localrules:
    splits,
    subset,


rule demo_data:
    input:
        code=code("demo_data"),
    output:
        touch(f"{R}/demo/.done"),
    log:
        f"{R}/logs/demo_data.log",
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("default")
    resources:
        **res("default"),
    params:
        pets=config["data"]["demo"]["pets"],
        pretrain=config["data"]["demo"]["pretrain"],
        intel=config["data"]["demo"]["intel_per_class"],
        seed=config["data"]["demo"]["seed"],
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        "python -m sslseg demo_data --out {params.out} --pets {params.pets} --pretrain {params.pretrain}"
        " --intel-per-class {params.intel} --seed {params.seed} > {log} 2>&1"


rule extract_intel:
    input:
        archive=config["data"]["intermediate"]["archive"] or [],
        code=code("extract_intel"),
    output:
        touch(f"{R}/intel/.done"),
    log:
        f"{R}/logs/extract_intel.log",
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("default")
    resources:
        **res("default"),
    params:
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        "python -m sslseg extract_intel --archive {input.archive} --out {params.out} > {log} 2>&1"


rule pack_pets:
    input:
        source_input("pets"),
        code=code("pack_pets"),
    output:
        pack=f"{R}/data/pets.h5",
        meta=f"{R}/data/pets.h5.json",
    log:
        f"{R}/logs/pack_pets.log",
    benchmark:
        f"{R}/benchmarks/pack_pets.tsv"
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("pack")
    resources:
        **res("pack"),
    params:
        root=lambda w: source_root("pets"),
        settings=as_json(
            {
                "image_size": config["model"]["image_size"],
                "download": config["data"]["pets"]["download"],
                "resize": config["data"]["pets"]["resize"],
            }
        ),
    shell:
        "python -m sslseg pack_pets --root {params.root} --out {output.pack}"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"


rule pack_pretrain:
    input:
        source_input("pretrain"),
        classes=lambda w: domain_list(w.data),
        code=code("pack_pretrain"),
    output:
        pack=f"{R}/data/pretrain-{{data}}.h5",
        meta=f"{R}/data/pretrain-{{data}}.h5.json",
    log:
        f"{R}/logs/pack_pretrain-{{data}}.log",
    benchmark:
        f"{R}/benchmarks/pack_pretrain-{{data}}.tsv"
    wildcard_constraints:
        data=grid.wildcard(PRETRAIN_DATA),
    priority: 10  # the pretraining waits on it (see rule pretrain)
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("pack")
    resources:
        **res("pack"),
    params:
        root=lambda w: source_root("pretrain"),
        settings=lambda w: as_json(
            {
                k: config["data"]["pretrain"][k]
                for k in ("source", "download", "subset_seed", "pack_size", "resize")
            }
            | domain_settings(w.data)
            | {
                "subset": w.data,
                "size": max(r.pretrain for r in RUNS if r.data == w.data),
            }
        ),
    shell:
        "python -m sslseg pack_pretrain --root {params.root} --out {output.pack}"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"


rule pack_intermediate:
    input:
        source_input("intermediate"),
        code=code("pack_intermediate"),
    output:
        pack=f"{R}/data/intermediate_{{split}}.h5",
        meta=f"{R}/data/intermediate_{{split}}.h5.json",
    log:
        f"{R}/logs/pack_intermediate_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/pack_intermediate_{{split}}.tsv"
    wildcard_constraints:
        split="train|test",
    priority: 5  # the intermediate step waits on it
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("pack")
    resources:
        **res("pack"),
    params:
        root=lambda w: f"{source_root('intermediate')}/seg_{w.split}",
        settings=as_json({"pack_size": config["data"]["intermediate"]["pack_size"]}),
    shell:
        "python -m sslseg pack_intermediate --root {params.root} --out {output.pack}"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"


# train_val_test (seed 003's 70/15/15) also writes splits/val.txt, which every fine-tune and probe
# scores after each epoch. test_draw keeps the outputs and params it always had: its DAG stays
# the old one (no empty val.txt as an input of every fine-tune, no changed params to rerun on).
VALIDATE = config["data"]["pets"]["split"] == "train_val_test"


rule splits:
    input:
        pets=rules.pack_pets.output.pack,
        code=code("splits"),
    output:
        **({"val": f"{R}/splits/val.txt"} if VALIDATE else {}),
        test=f"{R}/splits/test.txt",
        pool=f"{R}/splits/pool.txt",
    log:
        f"{R}/logs/splits.log",
    conda:
        "../../envs/sslseg.yaml"
    params:
        settings=as_json(
            {
                k: config["data"]["pets"][k]
                for k in ("test_size", "test_seed")
                + (("split", "val_fraction", "test_fraction") if VALIDATE else ())
            }
        ),
        val=lambda w, output: f"--val {output.val}" if VALIDATE else "",
    shell:
        "python -m sslseg splits --pets {input.pets} --test {output.test} --pool {output.pool} {params.val}"
        " --settings {params.settings:q} > {log} 2>&1"


# The fine-tune rows of one size and seed: n is a count (250) or a fraction of the pool (5pct,
# 0.5pct), resolved against the pool here (max(1, round(P/100 · pool))); nested within a seed.
rule subset:
    input:
        pool=rules.splits.output.pool,
        code=code("subset"),
    output:
        f"{R}/splits/finetune_n{{n}}_s{{seed}}.txt",
    log:
        f"{R}/logs/subset/n{{n}}_s{{seed}}.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg subset --pool {input.pool} --out {output} --size {wildcards.n}"
        " --seed {wildcards.seed} > {log} 2>&1"
