# Aggregation, tables and figures; every figure and table goes into `snakemake --report`.


# Seconds of work each: run them where Snakemake runs, not as cluster jobs.
localrules:
    aggregate,
    intermediate_accuracies,
    tables,
    figures,
    learning_curves,
    label_quality,
    label_figures,
    published,


rule aggregate:
    input:
        metrics=[f"{d}/metrics.json" for d in run_dirs()],
        code=code("aggregate"),
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
    params:
        root=runs_root,
        grid=as_json(grid.view(config)),  # the grid + what decides its runs (the heads)
    shell:
        "python -m sslseg aggregate --root {params.root} --grid {params.grid:q} --out {output} > {log} 2>&1"


rule intermediate_accuracies:
    input:
        metrics=[f"{R}/intermediate/{d}/accuracy.json" for d in INTERMEDIATE],
        code=code("intermediate_accuracies"),
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
        "python -m sslseg intermediate_accuracies --out {output} --metrics {input.metrics} > {log} 2>&1"


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
        # every table of the folder (Tables 1, A2, A3, the Δ tables, study C's table_data and
        # study D's table_decoder where the grid has them) as its own report item
        tables=report(
            directory(f"{R}/report/tables/study"),
            patterns=["{table}.md"],
            caption="../report/study_tables.rst",
            category="Tables",
            subcategory="Study tables",
        ),
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
            f"{R}/report/fig_miou.png",
            caption="../report/fig_miou.rst",
            category="Figures",
        ),
        miou_pdf=f"{R}/report/fig_miou.pdf",
        delta=(
            report(
                f"{R}/report/fig_delta.png",
                caption="../report/fig_delta.rst",
                category="Figures",
            )
            if f"{R}/report/fig_delta.png" in all_outputs()
            else []
        ),
    log:
        f"{R}/logs/figures.log",
    conda:
        "../../envs/sslseg.yaml"
    params:
        settings=report_settings("style", "dpi"),
        delta=lambda w, output: f"--delta-out {output.delta}" if output.delta else "",
    shell:
        "python -m sslseg figures --runs {input.runs} --out {output.miou} {params.delta}"
        " --settings {params.settings:q} > {log} 2>&1"


# Per-epoch training loss of every training job (validation mIoU where logged), a figure per
# stage, and how flat each loss is at its end. The jobs are listed from the grid (as aggregate
# does), not on the command line, which has no room for thousands of paths.
rule learning_curves:
    input:
        pretrain=[f"{R}/pretrain/{d}/log.csv" for d in PRETRAINED],
        intermediate=[f"{R}/intermediate/{d}/log.csv" for d in INTERMEDIATE],
        runs=[f"{d}/log.csv" for d in run_dirs()],
        code=code("learning_curves"),
    output:
        convergence=report(
            f"{R}/report/convergence.csv",
            caption="../report/convergence.rst",
            category="Tables",
        ),
        figures=[
            report(
                f"{R}/report/fig_curves_{s}.png",
                caption="../report/fig_curves.rst",
                category="Figures",
            )
            for s in training_stages()
        ],
        pdfs=[f"{R}/report/fig_curves_{s}.pdf" for s in training_stages()],
    log:
        f"{R}/logs/learning_curves.log",
    conda:
        "../../envs/sslseg.yaml"
    params:
        # results/<name> read off the inputs as Snakemake sees them (as runs_root does)
        root=lambda w, input: input.runs[0][
            : -len(f"runs/{next(iter(BY_RUN))}/log.csv")
        ].rstrip(os.sep),
        grid=as_json(grid.view(config)),  # the grid + what decides its runs (the heads)
        outdir=lambda w, output: os.path.dirname(output.convergence),
        settings=report_settings("style", "dpi"),
    shell:
        "python -m sslseg learning_curves --root {params.root} --grid {params.grid:q} --outdir {params.outdir}"
        " --settings {params.settings:q} > {log} 2>&1"


# What each pretraining objective learned, from its largest pretraining: reconstructions of
# masked images (SimMIM, MAE) or denoised images (DeP, DDeP), one figure per objective.
rule reconstructions:
    input:
        model=lambda w: f"{R}/pretrain/{largest_pretraining(w.objective)[0]}/model.pt",
        pack=lambda w: f"{R}/data/pretrain-{largest_pretraining(w.objective)[1].data}.h5",
        code=lambda w: code("reconstructions", objective_module(w.objective)),
    output:
        report(
            f"{R}/report/reconstructions_{{objective}}.png",
            caption="../report/reconstructions.rst",
            category="Figures",
            subcategory="Reconstructions",
        ),
    log:
        f"{R}/logs/reconstructions_{{objective}}.log",
    benchmark:
        f"{R}/benchmarks/reconstructions_{{objective}}.tsv"
    wildcard_constraints:
        objective=grid.wildcard(pretraining_objectives()),
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    params:
        settings=lambda w: as_json(
            stage_settings(config, "pretrain", largest_pretraining(w.objective)[1])
        ),
        report=report_settings("examples", "dpi"),
    shell:
        "python -m sslseg reconstructions --ckpt {input.model} --pack {input.pack} --out {output}"
        " --settings {params.settings:q} --report {params.report:q} > {log} 2>&1"


rule segmentations:
    input:
        model=f"{R}/runs/{grid.run_dir(largest_run())}/model.pt",
        pets=rules.pack_pets.output.pack,
        rows=rules.splits.output.test,
        code=code("segmentations", stage_objective("finetune")),
    output:
        report(
            f"{R}/report/segmentations.png",
            caption="../report/segmentations.rst",
            category="Figures",
        ),
    log:
        f"{R}/logs/segmentations.log",
    benchmark:
        f"{R}/benchmarks/segmentations.tsv"
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("evaluate")
    resources:
        **res("evaluate"),
    params:
        settings=as_json(eval_settings(config, largest_run().backbone)),
        report=report_settings("examples", "dpi"),
    shell:
        "python -m sslseg segmentations --ckpt {input.model} --pets {input.pets} --rows {input.rows}"
        " --out {output} --settings {params.settings:q} --report {params.report:q} > {log} 2>&1"


# Study B: what the generated labels are worth, and what a frozen probe buys on them.
rule label_quality:
    input:
        quality=[f"{p}.quality.json" for p in label_sets()],
        code=code("label_quality"),
    output:
        csv=report(
            f"{R}/report/tables/label_quality.csv",
            caption="../report/label_quality.rst",
            category="Tables",
        ),
        md=f"{R}/report/tables/label_quality.md",
    log:
        f"{R}/logs/label_quality.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg label_quality --out {output.csv} --quality {input.quality} > {log} 2>&1"


rule label_figures:
    input:
        runs=rules.aggregate.output[0],
        quality=(f"{R}/report/tables/label_quality.csv" if LABEL_KINDS else []),
        code=code("label_figures"),
    output:
        quality=(
            report(
                f"{R}/report/fig_label_quality.png",
                caption="../report/fig_label_quality.rst",
                category="Figures",
            )
            if LABEL_KINDS
            else []
        ),
        delta=(
            report(
                f"{R}/report/fig_probe_delta.png",
                caption="../report/fig_probe_delta.rst",
                category="Figures",
            )
            if BOTH_ADAPTATIONS
            else []
        ),
    log:
        f"{R}/logs/label_figures.log",
    conda:
        "../../envs/sslseg.yaml"
    params:
        settings=report_settings("style", "dpi"),
        quality=lambda w, input, output: (
            f"--quality {input.quality} --out {output.quality}"
            if output.quality
            else ""
        ),
        delta=lambda w, output: f"--delta-out {output.delta}" if output.delta else "",
    shell:
        "python -m sslseg label_figures --runs {input.runs} {params.quality} {params.delta}"
        " --settings {params.settings:q} > {log} 2>&1"


rule label_examples:
    input:
        pets=rules.pack_pets.output.pack,
        pool=rules.splits.output.pool,
        labels=[f"{p}.h5" for p in label_sets(config["grid"]["seeds"][:1])],
        code=code("label_examples"),
    output:
        report(
            f"{R}/report/label_examples.png",
            caption="../report/label_examples.rst",
            category="Figures",
        ),
    log:
        f"{R}/logs/label_examples.log",
    benchmark:
        f"{R}/benchmarks/label_examples.tsv"
    conda:
        "../../envs/sslseg.yaml"
    params:
        report=report_settings("examples", "dpi"),
    shell:
        "python -m sslseg label_examples --pets {input.pets} --pool {input.pool} --labels {input.labels}"
        " --out {output} --report {params.report:q} > {log} 2>&1"


rule published:
    input:
        runs=rules.aggregate.output[0],
        paper=os.path.relpath(
            os.path.join(workflow.basedir, "sslseg/report/published.csv")
        ),
        code=code("published"),
    output:
        csv=f"{R}/report/published.csv",
        md=report(
            f"{R}/report/published.md",
            caption="../report/published.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/published.log",
    conda:
        "../../envs/sslseg.yaml"
    shell:
        "python -m sslseg published --runs {input.runs} --out {output.csv} --md {output.md} > {log} 2>&1"
