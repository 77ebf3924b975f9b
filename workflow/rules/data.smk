if CFG.data.source == "flowers102":

    rule download:
        output:
            archive=f"{RESULTS}/raw/102flowers.tgz",
            labels=f"{RESULTS}/raw/imagelabels.mat",
            splits=f"{RESULTS}/raw/setid.mat",
        log:
            f"{RESULTS}/logs/download.log",
        conda:
            "../envs/ddpm.yaml"
        params:
            ddpm=DDPM,
            config=CONFIG,
            out=lambda w, output: os.path.dirname(output.archive),
        shell:
            "{params.ddpm} download --config {params.config} --out {params.out} > {log} 2>&1"


rule preprocess:
    input:
        get_raw_inputs,
    output:
        data=f"{RESULTS}/data/dataset.npy",
        manifest=f"{RESULTS}/data/dataset.json",
    log:
        f"{RESULTS}/logs/preprocess.log",
    conda:
        "../envs/ddpm.yaml"
    threads: 8
    params:
        ddpm=DDPM,
        config=CONFIG,
        raw=f"--raw {RESULTS}/raw" if CFG.data.source == "flowers102" else "",
        data_hash=get_data_hash(),
    shell:
        "{params.ddpm} preprocess --config {params.config} {params.raw} --out {output.data} > {log} 2>&1"
