# Aggregation, tables and figures; every figure and table goes into `snakemake --report`.


# Seconds of work each: run them where Snakemake runs, not as cluster jobs.
localrules:
    aggregate,
    intermediate_accuracies,
    tables,
    figures,


rule aggregate:
    input:
        metrics=[f"{d}/metrics.json" for d in run_dirs()],
        code=["sslseg/report/tables.py"],
    output:
        report(
            f"{R}/report/runs.csv",
            caption="../report/runs.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/aggregate.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg aggregate --out {output} --metrics {input.metrics} > {log} 2>&1"


rule intermediate_accuracies:
    input:
        acc=[f"{R}/intermediate/p{p}/accuracy.json" for p in PRETRAIN_SIZES],
        code=["sslseg/report/tables.py"],
    output:
        report(
            f"{R}/report/intermediate.csv",
            caption="../report/intermediate.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/intermediate_accuracies.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg aggregate --out {output} --metrics {input.acc} > {log} 2>&1"


rule tables:
    input:
        runs=rules.aggregate.output[0],
        code=code("tables"),
    output:
        summary=report(
            f"{R}/report/tables/summary.csv",
            caption="../report/tables.rst",
            category="Tables",
        ),
        tables=directory(f"{R}/report/tables/study"),
    log:
        f"{R}/logs/tables.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg tables --runs {input.runs} --outdir {output.tables} > {log} 2>&1"


rule figures:
    input:
        runs=rules.aggregate.output[0],
        code=code("figures"),
    output:
        miou=report(
            f"{R}/report/fig_miou.png", caption="../report/fig_miou.rst", category="Figures"
        ),
        miou_pdf=f"{R}/report/fig_miou.pdf",
        delta=(
            report(
                f"{R}/report/fig_delta.png",
                caption="../report/fig_delta.rst",
                category="Figures",
            )
            if INTERMEDIATE == [0, 1]
            else []
        ),
    params:
        settings=report_settings("style", "dpi"),
        delta=lambda w, output: f"--delta-out {output.delta}" if output.delta else "",
    log:
        f"{R}/logs/figures.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg figures --runs {input.runs} --out {output.miou} {params.delta}"
        " --settings {params.settings:q} > {log} 2>&1"


rule reconstructions:
    input:
        model=f"{R}/pretrain/p{max(PRETRAIN_SIZES)}/model.pt",
        pack=rules.pack_pretrain.output.pack,
        code=code("examples"),
    output:
        report(
            f"{R}/report/reconstructions.png",
            caption="../report/reconstructions.rst",
            category="Figures",
        ),
    params:
        settings=settings("pretrain") if any(PRETRAIN_SIZES) else "{}",
        report=report_settings("examples", "dpi"),
    log:
        f"{R}/logs/reconstructions.log",
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg reconstructions --ckpt {input.model} --pack {input.pack} --out {output}"
        " --settings {params.settings:q} --report {params.report:q} > {log} 2>&1"


rule segmentations:
    input:
        model=largest_run(),
        pets=rules.pack_pets.output.pack,
        rows=rules.splits.output.test,
        code=code("examples"),
    output:
        report(
            f"{R}/report/segmentations.png",
            caption="../report/segmentations.rst",
            category="Figures",
        ),
    params:
        settings=settings("evaluate"),
        report=report_settings("examples", "dpi"),
    log:
        f"{R}/logs/segmentations.log",
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg segmentations --ckpt {input.model} --pets {input.pets} --rows {input.rows}"
        " --out {output} --settings {params.settings:q} --report {params.report:q} > {log} 2>&1"
