# Wiring shared by the rule files. Everything a rule reads, writes and runs comes from the stage
# table in ddpm/pipeline/stages.py (which dvc.yaml is rendered from too); these helpers only translate it.
import re
import shlex
import sys

sys.path.insert(0, workflow.basedir)  # the ddpm package next to the Snakefile
# Every job imports that same package. The prefix is not part of the commands that Snakemake
# compares between runs, so they hold no absolute path and moving the project folder (with
# results/ and .snakemake/) reruns nothing. (Snakemake formats the prefix: braces are doubled.)
_PACKAGE_PATH = shlex.quote(workflow.basedir).replace("{", "{{").replace("}", "}}")
shell.prefix(
    f"export PYTHONPATH={_PACKAGE_PATH}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; set -euo pipefail; "
)

from snakemake.common.configfile import load_configfile  # noqa: E402

from ddpm.plumbing import jobstep
from ddpm.pipeline import stages  # noqa: E402
from ddpm.pipeline.config import config_from_dict, load_yaml  # noqa: E402

# Snakemake's YAML reader keeps the last of a key written twice; ours refuses it, naming lines.
for _path in workflow.configfiles:
    load_yaml(_path)

# A grid is one experiment design: a --configfile's grid replaces config/config.yaml's instead of
# adding to its axes (Snakemake merges mappings key by key; every other key is overridden so).
for _path in workflow.overwrite_configfiles:
    _grid = (load_configfile(_path) or {}).get("grid")
    if _grid is not None:
        config["grid"] = _grid

# A job step on a cluster: a SIGTERM from the scheduler (cancel, preemption, time limit) reaches
# this Snakemake alone; pass it on so a training checkpoints before the SIGKILL that follows.
if workflow.remote_exec:
    jobstep.forward_termination()

CFG = config_from_dict(config)  # raises ConfigError naming the key before any job runs
stages.check_results_dir(CFG)
PLAN = stages.plan(CFG)
STAGES = stages.table(CFG)
# Settings file name -> text. Nothing is written here: a dry run or --lint writes no file.
SETTINGS = stages.all_settings(CFG, workflow.basedir)
RESULTS = CFG.results_dir


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    network=_alternatives(n.id for n in PLAN.networks),
    variant=_alternatives(sorted({v.id for v in PLAN.variants})),


def _instance(stage):
    """The settings instance of a stage, in Snakemake wildcards."""
    return {
        "network": "{network}",
        "variant": "{network}/{variant}",
    }.get(stage.scope, "")


def get_settings_text(wildcards):
    return SETTINGS[wildcards.name]


def get_inputs(name):
    """A stage's inputs: its settings file, then the files its table entry reads."""
    stage = STAGES[name]
    inputs = {"settings": stages.settings_path(CFG, stage, _instance(stage))}
    for key, template in stage.deps.items():
        inputs[key] = (
            stages.expand(template, PLAN) if stage.scope == "all" else template
        )
    return inputs


def get_outputs(name, **flags):
    """A stage's outputs; `flags` wraps some of them, e.g. in report()."""
    outs = STAGES[name].outs
    return {
        key: flags[key](path) if key in flags else path for key, path in outs.items()
    }


def get_shell(name):
    """`exec` makes the job's process the ddpm command itself: signals reach it directly and
    no shell is left behind to orphan it."""
    stage = STAGES[name]
    args = stages.command_args(
        stage,
        lambda t: t.replace("{network}", "{wildcards.network}").replace(
            "{variant}", "{wildcards.variant}"
        ),
    )
    tune = ["--tune", "{resources.tune}"] if stage.tunes else []
    return (
        " ".join(
            [
                "exec python -m ddpm",
                stage.command,
                "--settings {input.settings}",
                *tune,
                *args,
            ]
        )
        + " > {log} 2>&1"
    )


def get_gpus(wildcards):
    """GPUs a network's training takes: its train.gpus (one process per GPU)."""
    return next(n.config.train.gpus for n in PLAN.networks if n.id == wildcards.network)


def get_tuning(name):
    """The tuning settings a stage takes, as `--tune` wants them. They travel as a resource,
    not a param: changing one cannot change a result, so it must not rerun anything."""
    tuning = stages.tuning_of(STAGES[name], CFG)
    return ",".join(f"{key}={value}" for key, value in tuning.items())


def get_final_targets():
    return [STAGES["summary"].outs["summary"], STAGES["report"].outs["report"]]
