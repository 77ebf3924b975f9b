from pathlib import Path

import pytest
import yaml

from ddpm.pipeline.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_hash,
    expand_grid,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_load_and_real_configs_validate():
    cfg = config_from_dict({})
    assert cfg == Config()
    for name in ("config.yaml", "demo.yaml"):
        load_config(ROOT / "config" / name)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"stepz": 3}}, "train.stepz"),
        ({"trian": {}}, "trian"),
        ({"diffusion": {"T": 1}}, "diffusion.T"),
        ({"diffusion": {"T": "100"}}, "diffusion.T"),
        ({"train": {"lr": 0.0}}, "train.lr"),
        ({"train": {"lr": "1e-4"}}, "train.lr"),
        ({"diffusion": {"beta_start": 1.5}}, "diffusion.beta_start"),
        ({"diffusion": {"beta_end": 0.0}}, "diffusion.beta_end"),
        ({"diffusion": {"schedule": "quadratic"}}, "diffusion.schedule"),
        ({"diffusion": {"objective": "score"}}, "diffusion.objective"),
        ({"data": {"splits": ["train", "dev"]}}, "data.splits[1]"),
        ({"grid": {"diffusion.T": [100, 0]}}, "diffusion.T"),
        ({"grid": {"nonsense": [1, 2]}}, "nonsense"),
        ({"grid": {"steps": [1, 2]}}, "steps"),  # ambiguous: train.steps or sample.steps
        ({"sample": {"method": "ddim", "steps": 2000}}, "sample.steps"),
        ({"sample": {"method": "ddim", "call_at_zero": False}}, "sample.call_at_zero"),
        ({"sample": {"method": "dpmpp-2m", "spacing": "uniform"}}, "sample.spacing"),
        ({"sample": {"method": "ddim", "ddim_target": "prev"}}, "sample.ddim_target"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert key in str(e.value)


def test_error_lists_valid_keys_and_allowed_values():
    with pytest.raises(ConfigError, match="valid keys in train: .*batch_size"):
        config_from_dict({"train": {"batchsize": 3}})
    with pytest.raises(ConfigError, match="'linear', 'rescaled_linear', 'cosine', 'sigmoid'"):
        config_from_dict({"diffusion": {"schedule": "quad"}})
    # A name that diffusers uses for something else was renamed; the error says to what.
    with pytest.raises(ConfigError, match="use rescaled_linear .*linear in sqrt"):
        config_from_dict({"diffusion": {"schedule": "scaled_linear"}})
    with pytest.raises(ConfigError, match="1.0e-4"):
        config_from_dict({"train": {"lr": "2e-4"}})


def test_grid_expansion_is_deterministic_unique_and_resolved():
    raw = {
        "grid": {
            "T": [1000, 350],
            "diffusion.schedule": ["linear", "cosine"],
            "sample.steps": [50],
        },
        "sample": {"method": "ddim"},
    }
    runs = expand_grid(config_from_dict(raw))
    ids = [r.id for r in runs]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert "T~350_diffusion.schedule~cosine_sample.steps~50" in ids
    assert ids == [r.id for r in expand_grid(config_from_dict(raw))]
    run = runs[ids.index("T~350_diffusion.schedule~cosine_sample.steps~50")]
    assert run.config.diffusion.T == 350 and run.config.diffusion.schedule == "cosine"
    assert run.config.sample.steps == 50 and run.config.grid == {}
    assert run.params == {"T": 350, "diffusion.schedule": "cosine", "sample.steps": 50}


def test_every_run_is_validated_and_an_empty_grid_gives_one_run():
    with pytest.raises(ConfigError, match="sample.steps"):
        config_from_dict({"grid": {"T": [10, 1000]}, "sample": {"method": "ddim", "steps": 50}})
    assert [r.id for r in expand_grid(config_from_dict({}))] == ["default"]


def test_overrides_and_hash(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 10}}))
    cfg = load_config(path, {"train.steps": 20, "T": 50})
    assert cfg.train.steps == 20 and cfg.diffusion.T == 50
    assert config_hash(cfg) != config_hash(load_config(path))
    assert config_hash(cfg) == config_hash(load_config(path, {"train.steps": 20, "T": 50}))
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path, {"train.nope": 1})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_params_layer_replaces_the_configs_settings_and_refuses_unknown_ones(tmp_path):
    config, layer = tmp_path / "c.yaml", tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump({"train": {"steps": 10, "lr": 1.0e-4}}))
    layer.write_text(yaml.safe_dump({"train": {"lr": 3.0e-4}, "sample": {"eta": 1.0}}))
    cfg = load_config(config, layer=layer)
    assert (cfg.train.steps, cfg.train.lr, cfg.sample.eta) == (10, 3.0e-4, 1.0)
    assert load_config(config, {"train.lr": 5.0e-4}, layer=layer).train.lr == 5.0e-4
    layer.write_text(yaml.safe_dump({"train": {"lrr": 3.0e-4}}))
    with pytest.raises(ConfigError, match=r"params.yaml: unknown setting 'train.lrr'.*train.lr"):
        load_config(config, layer=layer)
    layer.write_text(yaml.safe_dump({"train": 3}))
    with pytest.raises(ConfigError, match="expected sections of settings"):
        load_config(config, layer=layer)
    layer.write_text(yaml.safe_dump({"train": {"lr": -1.0}}))
    with pytest.raises(ConfigError, match="with .*params.yaml: .*train.lr"):
        load_config(config, layer=layer)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"evaluate": {"metrics": ["kid", "is"]}},
            r"evaluate.metrics: \['kid', 'is'\] must list fid",
        ),
        ({"evaluate": {"metrics": ["fid", "lpips"]}}, "evaluate.metrics.*'lpips'.*'fd_dinov2'"),
        (
            {"evaluate": {"metrics": ["fid"]}, "report": {"metric": "fd_dinov2"}},
            r"report.metric: 'fd_dinov2' ranks the verdict, so evaluate.metrics must list it",
        ),
        ({"report": {"metric": "kid"}}, "report.metric.*'fid', 'fd_dinov2'"),
    ],
)
def test_scores_that_cannot_be_computed_or_ranked_by_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(settings)
