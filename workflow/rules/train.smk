rule train:
    input:
        **get_inputs("train"),
    output:
        **get_outputs("train"),
    log:
        f"{RESULTS}/logs/train/{{network}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{network}}.tsv"
    # Trainings are the long jobs: started before the shorter jobs of networks already trained,
    # they end sooner (the demo's last training started 3 minutes later without this).
    priority: 1
    conda:
        "../envs/ddpm.yaml"
    threads: 4
    resources:
        gpu=get_gpus,
        mem_mb=16000,
        runtime=240,
    shell:
        get_shell("train")


rule sample:
    input:
        **get_inputs("sample"),
    output:
        **get_outputs(
            "sample",
            grid=lambda path: report(
                path,
                caption="../report/grid.rst",
                category="Samples",
                subcategory="{network}/{variant}",
            ),
            trajectory=lambda path: report(
                path,
                caption="../report/trajectory.rst",
                category="Trajectories",
                subcategory="{network}/{variant}",
            ),
        ),
    log:
        f"{RESULTS}/logs/sample/{{network}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample/{{network}}/{{variant}}.tsv"
    conda:
        "../envs/ddpm.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
        tune=get_tuning("sample"),
    shell:
        get_shell("sample")
