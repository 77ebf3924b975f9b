rule train:
    input:
        data=get_dataset(),
    output:
        final=f"{RESULTS}/runs/{{run}}/final.pt",
        summary=f"{RESULTS}/runs/{{run}}/train_summary.json",
        log_csv=f"{RESULTS}/runs/{{run}}/train_log.csv",
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        ddpm=DDPM,
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output.final),
        run_hash=get_run_hash,
    shell:
        "{params.ddpm} train --config {params.config} --run {wildcards.run} --data {input.data}"
        " --out {params.out} > {log} 2>&1"


rule sample:
    input:
        final=rules.train.output.final,
    output:
        samples=f"{RESULTS}/runs/{{run}}/samples.npz",
        grid=report(
            f"{RESULTS}/runs/{{run}}/grid.png",
            caption="../report/grid.rst",
            category="Samples",
            subcategory="{run}",
        ),
        trajectory=report(
            f"{RESULTS}/runs/{{run}}/trajectory.png",
            caption="../report/trajectory.rst",
            category="Trajectories",
            subcategory="{run}",
        ),
        summary=f"{RESULTS}/runs/{{run}}/sample_summary.json",
    log:
        f"{RESULTS}/logs/sample/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample/{{run}}.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        ddpm=DDPM,
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output.samples),
        run_hash=get_run_hash,
    shell:
        "{params.ddpm} sample --config {params.config} --run {wildcards.run} --ckpt {input.final}"
        " --out {params.out} > {log} 2>&1"
