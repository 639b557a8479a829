# Data: generated demo set (offline default), packing to HDF5, test split and nested subsets.


# Seconds of work each: run them where Snakemake runs, not as cluster jobs.
localrules:
    splits,
    subset,


rule demo_data:
    input:
        code=code("demo"),
    output:
        touch(f"{R}/demo/.done"),
    params:
        demo=json.dumps(config["data"]["demo"], sort_keys=True),
        pets=config["data"]["demo"]["pets"],
        pretrain=config["data"]["demo"]["pretrain"],
        intel=config["data"]["demo"]["intel_per_class"],
        seed=config["data"]["demo"]["seed"],
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/demo_data.log",
    threads: threads_of("default")
    resources:
        **res("default"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg demo-data --out {params.out} --pets {params.pets} --pretrain {params.pretrain}"
        " --intel-per-class {params.intel} --seed {params.seed} > {log} 2>&1"


rule extract_intel:
    input:
        archive=config["data"]["intermediate"]["archive"] or [],
        code=code("pack"),
    output:
        touch(f"{R}/intel/.done"),
    params:
        dest=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/extract_intel.log",
    threads: threads_of("default")
    resources:
        **res("default"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg extract-intel --archive {input.archive} --out {params.dest} > {log} 2>&1"


rule pack_pets:
    input:
        source_input("pets"),
        code=code("pack"),
    output:
        pack=f"{R}/data/pets.h5",
        meta=f"{R}/data/pets.h5.json",
    params:
        root=lambda w: source_root("pets"),
        settings=json.dumps(
            {
                "image_size": config["model"]["image_size"],
                "download": config["data"]["pets"]["download"],
            }
        ),
    log:
        f"{R}/logs/pack_pets.log",
    benchmark:
        f"{R}/benchmarks/pack_pets.tsv"
    threads: threads_of("pack")
    resources:
        **res("pack"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg pack-pets --root {params.root} --out {output.pack}"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"


rule pack_pretrain:
    input:
        source_input("pretrain"),
        code=code("pack"),
    output:
        pack=f"{R}/data/pretrain.h5",
        meta=f"{R}/data/pretrain.h5.json",
    params:
        root=lambda w: source_root("pretrain"),
        settings=json.dumps(
            {
                k: v
                for k, v in config["data"]["pretrain"].items()
                if k in ("source", "download", "subset", "subset_seed", "pack_size")
            }
            | {"size": max(PRETRAIN_SIZES), "kind": "pretrain"},
            sort_keys=True,
        ),
    log:
        f"{R}/logs/pack_pretrain.log",
    benchmark:
        f"{R}/benchmarks/pack_pretrain.tsv"
    threads: threads_of("pack")
    resources:
        **res("pack"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg pack-folder --root {params.root} --out {output.pack}"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"


rule pack_intermediate:
    input:
        source_input("intermediate"),
        code=code("pack"),
    output:
        pack=f"{R}/data/intermediate_{{split}}.h5",
        meta=f"{R}/data/intermediate_{{split}}.h5.json",
    wildcard_constraints:
        split="train|test",
    params:
        root=lambda w: f"{source_root('intermediate')}/seg_{w.split}",
        settings=json.dumps(
            {
                "pack_size": config["data"]["intermediate"]["pack_size"],
                "resize": "crop",
                "classes": INTEL_CLASSES,
                "kind": "intermediate",
            }
        ),
    log:
        f"{R}/logs/pack_intermediate_{{split}}.log",
    threads: threads_of("pack")
    resources:
        **res("pack"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg pack-folder --root {params.root} --out {output.pack}"
        " --settings {params.settings:q} --threads {threads} > {log} 2>&1"


rule splits:
    input:
        pets=rules.pack_pets.output.pack,
        code=code("splits"),
    output:
        test=f"{R}/splits/test.txt",
        pool=f"{R}/splits/pool.txt",
    params:
        settings=json.dumps(
            {k: config["data"]["pets"][k] for k in ("test_size", "test_seed")}
        ),
    log:
        f"{R}/logs/splits.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg splits --pets {input.pets} --test {output.test} --pool {output.pool}"
        " --settings {params.settings:q} > {log} 2>&1"


rule subset:
    input:
        pool=rules.splits.output.pool,
        code=code("splits"),
    output:
        f"{R}/splits/finetune_n{{n}}_s{{seed}}.txt",
    log:
        f"{R}/logs/subset/n{{n}}_s{{seed}}.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg subset --pool {input.pool} --out {output} --size {wildcards.n}"
        " --seed {wildcards.seed} > {log} 2>&1"
