if CFG.evaluate.inception_source == "test":

    rule inception_weights:
        output:
            get_weights(),
        log:
            f"{RESULTS}/logs/inception_weights.log",
        conda:
            "../envs/ddpm.yaml"
        params:
            ddpm=DDPM,
            config=CONFIG,
        shell:
            "{params.ddpm} make-test-inception --out {output} > {log} 2>&1"

else:

    rule inception_weights:
        output:
            get_weights(),
        log:
            f"{RESULTS}/logs/inception_weights.log",
        conda:
            "../envs/ddpm.yaml"
        params:
            ddpm=DDPM,
            config=CONFIG,
        shell:
            "{params.ddpm} fetch-weights --config {params.config} --out {output} > {log} 2>&1"


rule reference_stats:
    input:
        data=get_dataset(),
        weights=get_weights(),
    output:
        f"{RESULTS}/reference.pt",
    log:
        f"{RESULTS}/logs/reference_stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_stats.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 8
    params:
        ddpm=DDPM,
        config=CONFIG,
    shell:
        "{params.ddpm} reference-stats --config {params.config} --data {input.data}"
        " --weights {input.weights} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        samples=rules.sample.output.samples,
        reference=rules.reference_stats.output,
        weights=get_weights(),
    output:
        f"{RESULTS}/runs/{{run}}/metrics.json",
    log:
        f"{RESULTS}/logs/evaluate/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{run}}.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        ddpm=DDPM,
        config=CONFIG,
    shell:
        "{params.ddpm} evaluate --config {params.config} --samples {input.samples}"
        " --reference {input.reference} --weights {input.weights} --out {output} > {log} 2>&1"
