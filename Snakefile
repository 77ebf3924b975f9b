# The entry point: config, validation, rule files, and the final target.
#   snakemake --cores all --use-conda                 the real sweep (config/config.yaml)
#   snakemake --cores all --configfile config/demo.yaml   the offline CPU demo (`make demo`)
# profiles/default (picked up by itself) makes a plain rerun resume whatever was interrupted.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/settings.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_targets(),
