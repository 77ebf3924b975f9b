"""Documents generated from the declarations: the JSON schema and config/README.md."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from ddpm.pipeline.config import ConfigError, config_from_dict, leaf_keys
from ddpm.pipeline.docs import config_reference_markdown, schema_yaml, stages_markdown
from ddpm.pipeline.stages import EVERYTHING, STAGES, read_keys

ROOT = Path(__file__).resolve().parents[2]


def test_schema_file_is_generated_from_the_dataclasses():
    on_disk = (ROOT / "workflow/schemas/config.schema.yaml").read_text()
    assert on_disk == schema_yaml(), (
        "run `python -m ddpm schema --out workflow/schemas/config.schema.yaml`"
    )


def test_schema_agrees_with_the_dataclasses_on_examples():
    schema = yaml.safe_load(schema_yaml())
    validator = jsonschema.Draft202012Validator(schema)
    good = [
        {},
        {"grid": {"T": [10, 20]}, "train": {"lr": 1.0e-3}},
        yaml.safe_load((ROOT / "config/config.yaml").read_text()),
    ]
    bad = [
        {"train": {"stepz": 1}},
        {"diffusion": {"T": 1}},
        {"train": {"lr": "1e-4"}},
        {"diffusion": {"schedule": "quad"}},
        {"model": {"dropout": 1.0}},
    ]
    for raw in good:
        config_from_dict(raw)
        validator.validate(raw)
    for raw in bad:
        with pytest.raises(ConfigError):
            config_from_dict(raw)
        assert list(validator.iter_errors(raw)), raw


def test_config_readme_is_generated_and_explains_every_key():
    text = (ROOT / "config/README.md").read_text()
    assert text == config_reference_markdown(), (
        "run `python -m ddpm config-docs --out config/README.md`"
    )
    for key in (*leaf_keys(), "grid"):
        assert f"`{key}`" in text, key


def test_the_stages_doc_is_generated_from_the_stage_table():
    """docs/stages.md is current, names every stage with its code, and for every setting a
    stage reads says what a change reruns."""
    text = (ROOT / "docs/stages.md").read_text()
    assert text == stages_markdown(), "run `python -m ddpm stages-docs --out docs/stages.md`"
    for stage in STAGES:
        section = text.split(f"## `{stage.name}`\n")[1].split("\n## ")[0]
        assert f"`{stage.code[0]}`" in section, stage.name
        if EVERYTHING not in stage.reads:
            for key in read_keys(stage):
                assert f"| `{key}` |" in section, (stage.name, key)
    train = text.split("## `train`\n")[1].split("\n## ")[0]
    lr = "| `train.lr` | **train**, progress, sample, evaluate, **summary**, **report** |"
    assert lr in train


def _row(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


@pytest.mark.parametrize(
    "key, reruns",
    [
        ("report.title", "**report**"),
        ("progress.num_images", "**progress**, **report**"),
        ("sample.eta", "**sample**, evaluate, **summary**, **report**"),
        ("data.workers", "nothing"),
        ("sample.batch_size", "nothing"),
        (
            "train.steps",
            "**train**, progress, sample, evaluate, **summary**, **report** (training resumes "
            "from its checkpoint)",
        ),
        (
            "evaluate.inception_weights",
            "**inception_weights**, reference_stats, progress, evaluate, summary, report",
        ),
    ],
)
def test_config_readme_says_what_a_change_to_each_key_reruns(key, reruns):
    assert _row(config_reference_markdown(), key)[-1] == reruns


def test_the_readme_folder_map_names_every_folder_and_stage_entry():
    """A newcomer finds a behaviour from README's map: each folder of the package has its row,
    with the entry modules of the stages it holds."""
    rows = {
        cells[1].strip(" `"): cells[3]
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `ddpm/") and (cells := line.split("|"))
    }
    folders = {f"ddpm/{p.name}/" for p in (ROOT / "ddpm").iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(rows)
    for stage in STAGES:
        folder, entry = stage.entry.split("/")
        assert f"`{entry}`" in rows[f"ddpm/{folder}/"], stage.name
