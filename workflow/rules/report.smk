rule summary:
    input:
        metrics=get_all("metrics.json"),
        train=get_all("train_summary.json"),
        sample=get_all("sample_summary.json"),
    output:
        get_final_target(),
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/ddpm.yaml"
    params:
        ddpm=DDPM,
        config=CONFIG,
        runs=lambda w, input: os.path.dirname(os.path.dirname(input.metrics[0])),
    shell:
        "{params.ddpm} summary --config {params.config} --runs {params.runs} --out {output} > {log} 2>&1"
