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


rule report:
    input:
        metrics=get_all("metrics.json"),
        train=get_all("train_summary.json"),
        logs=get_all("train_log.csv"),
        samples=get_all("samples.npz"),
        trajectories=get_all("trajectory.png"),
        data=get_dataset(),
    output:
        report(
            get_report(),
            caption="../report/report.rst",
            category="Comparison",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../envs/ddpm.yaml"
    params:
        ddpm=DDPM,
        config=CONFIG,
        runs=lambda w, input: os.path.dirname(os.path.dirname(input.metrics[0])),
    shell:
        "{params.ddpm} report --config {params.config} --runs {params.runs}"
        " --data {input.data} --out {output} > {log} 2>&1"
