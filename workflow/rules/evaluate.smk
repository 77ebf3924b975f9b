rule inception_weights:
    input:
        **get_inputs("inception_weights"),
    output:
        **get_outputs("inception_weights"),
    log:
        f"{RESULTS}/logs/inception_weights.log",
    conda:
        "../envs/ddpm.yaml"
    threads: 8  # evaluate.inception_source synthetic trains a small network on the CPU
    shell:
        get_shell("inception_weights")


rule reference_stats:
    input:
        **get_inputs("reference_stats"),
    output:
        **get_outputs("reference_stats"),
    log:
        f"{RESULTS}/logs/reference_stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_stats.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 8
    resources:
        tune=get_tuning("reference_stats"),
    shell:
        get_shell("reference_stats")


if "dinov2_weights" in STAGES:  # evaluate.metrics lists fd_dinov2

    rule dinov2_weights:
        input:
            **get_inputs("dinov2_weights"),
        output:
            **get_outputs("dinov2_weights"),
        log:
            f"{RESULTS}/logs/dinov2_weights.log",
        conda:
            "../envs/ddpm.yaml"
        shell:
            get_shell("dinov2_weights")

    rule dinov2_reference:
        input:
            **get_inputs("dinov2_reference"),
        output:
            **get_outputs("dinov2_reference"),
        log:
            f"{RESULTS}/logs/dinov2_reference.log",
        benchmark:
            f"{RESULTS}/benchmarks/dinov2_reference.tsv"
        conda:
            "../envs/ddpm.yaml"
        threads: 8
        resources:
            gpu=1,
            tune=get_tuning("dinov2_reference"),
        shell:
            get_shell("dinov2_reference")


rule evaluate:
    input:
        **get_inputs("evaluate"),
    output:
        **get_outputs("evaluate"),
    log:
        f"{RESULTS}/logs/evaluate/{{network}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{network}}/{{variant}}.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 4
    resources:
        gpu=1,
        tune=get_tuning("evaluate"),
    shell:
        get_shell("evaluate")


rule progress:
    input:
        **get_inputs("progress"),
    output:
        **get_outputs("progress"),
    log:
        f"{RESULTS}/logs/progress/{{network}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/progress/{{network}}.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 4
    resources:
        gpu=1,
        tune=get_tuning("progress"),
    shell:
        get_shell("progress")
