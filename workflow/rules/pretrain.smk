# Self-supervised pretraining: one job per (backbone, objective, data, size) of the grid (and
# decoder width, for objectives that pretrain a decoder), e.g.
# results/<name>/pretrain/viny/simmim-random-45000/model.pt. DDeP starts from its encoder's
# checkpoint (objectives.ddep.encoder: another objective's pretraining, or a file).


rule pretrain:
    input:
        pack=lambda w: f"{R}/data/pretrain-{PRETRAINED[w.pre].data}.h5",
        init=lambda w: encoder_checkpoint(PRETRAINED[w.pre]),
        code=lambda w: code("pretrain", objective_module(PRETRAINED[w.pre].objective)),
    output:
        model=f"{R}/pretrain/{{pre}}/model.pt",
        meta=f"{R}/pretrain/{{pre}}/model.pt.json",
        train_log=f"{R}/pretrain/{{pre}}/log.csv",
    log:
        f"{R}/logs/pretrain/{{pre}}.log",
    benchmark:
        f"{R}/benchmarks/pretrain/{{pre}}.tsv"
    # Most jobs wait on a pretraining (via the intermediate step and the fine-tunes): start the
    # chain first, and fill the other slots with jobs that need none (scratch fine-tunes).
    priority: 10
    conda:
        "../../envs/sslseg.yaml"
    threads: threads_of("pretrain")
    resources:
        **res("pretrain"),
    params:
        size=lambda w: PRETRAINED[w.pre].pretrain,
        init=init_flag,
        settings=lambda w: as_json(
            stage_settings(config, "pretrain", PRETRAINED[w.pre])
        ),
    shell:
        "python -m sslseg pretrain --pack {input.pack} --size {params.size} {params.init} --out {output.model}"
        " --log {output.train_log} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"
