# One settings file per stage instance: exactly the settings that the instance's job reads, and
# a fingerprint of the stage's code. The text comes from ddpm/pipeline/stages.py; Snakemake reruns this
# rule when the text changes (a params change), and the stage's job then reruns because its
# input changed (the file's content differs, so Snakemake's input checksums do not mask it).
# Written with printf and renamed into place: instant, and complete or not at all.


rule settings:
    output:
        f"{RESULTS}/settings/{{name}}.json",
    log:
        f"{RESULTS}/logs/settings/{{name}}.log",
    wildcard_constraints:
        name=_alternatives(SETTINGS),
    localrule: True
    conda:
        "../envs/ddpm.yaml"
    params:
        text=get_settings_text,
    shell:
        "(printf '%s' {params.text:q} > {output}.tmp && mv {output}.tmp {output}) 2> {log}"
