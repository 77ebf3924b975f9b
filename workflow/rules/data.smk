if "download" in STAGES:

    rule download:
        input:
            **get_inputs("download"),
        output:
            **get_outputs("download"),
        log:
            f"{RESULTS}/logs/download.log",
        conda:
            "../envs/ddpm.yaml"
        shell:
            get_shell("download")


rule preprocess:
    input:
        **get_inputs("preprocess"),
    output:
        **get_outputs("preprocess"),
    log:
        f"{RESULTS}/logs/preprocess.log",
    conda:
        "../envs/ddpm.yaml"
    threads: 8
    resources:
        tune=get_tuning("preprocess"),
    shell:
        get_shell("preprocess")
