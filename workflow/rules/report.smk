rule summary:
    input:
        **get_inputs("summary"),
    output:
        **get_outputs("summary"),
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/ddpm.yaml"
    shell:
        get_shell("summary")


rule report:
    input:
        **get_inputs("report"),
    output:
        **get_outputs(
            "report",
            report=lambda path: report(
                path, caption="../report/report.rst", category="Comparison"
            ),
        ),
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../envs/ddpm.yaml"
    shell:
        get_shell("report")
