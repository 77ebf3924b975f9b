"""The run layout: one name per file, and the readers that check what a file was made from."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.data.artefacts import (
    read_final,
    read_json,
    read_log,
    read_samples,
    settings_digest,
    write_samples,
)
from ddpm.pipeline import stages
from ddpm.pipeline.config import Config
from ddpm.pipeline.layout import NetworkFiles, PipelineFiles, VariantFiles
from ddpm.plumbing.errors import ArtefactError


def test_samples_are_uint8_and_float_samples_are_refused_not_guessed(tmp_path):
    """uint8 samples load as they are, with their record. Float samples could be in [-1, 1],
    [0, 1] or [0, 255]; clamping 0..255 floats as if in [-1, 1] once gave an FID of 1.8e6
    without an error."""
    path = tmp_path / "s.npz"
    pixels = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    write_samples(path, pixels, {"network": "T~20", "image_size": 4})
    images, record = read_samples(path)
    assert np.array_equal(images, pixels) and record["network"] == "T~20"
    assert read_samples(path, limit=1)[0].shape == (1, 3, 4, 4)
    np.savez(path, images=pixels)  # made elsewhere: no record
    assert read_samples(path)[1] == {}
    np.savez(path, images=pixels.astype(np.float32))
    with pytest.raises(ArtefactError, match="float32 .* expected uint8"):
        read_samples(path)


def test_every_file_the_stage_table_names_comes_from_the_layout():
    """The stage table's templates are the layout's names: a file renamed in
    ddpm/pipeline/layout.py is renamed for Snakemake, DVC, the writers and the report at once."""
    cfg = Config()
    runs = PipelineFiles(Path(cfg.results_dir)).runs
    net, var = NetworkFiles(runs / "N"), VariantFiles(runs / "N" / "V")
    table = stages.table(cfg)
    filled = {
        stages.fill(t, "N/V")
        for s in table.values()
        for t in (*s.outs.values(), *s.persist.values())
    }
    for path in (net.final, net.checkpoint, net.log, net.summary):
        assert str(path) in filled
    for path in (var.samples, var.grid, var.trajectory, var.summary, var.metrics, var.evaluation):
        assert str(path) in filled


def test_readers_name_the_file_and_never_raise_a_traceback(tmp_path):
    with pytest.raises(ArtefactError, match="does not exist"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ArtefactError, match="not hold a JSON object"):
        read_json(tmp_path / "list.json")
    (tmp_path / "log.csv").write_text("step,loss\n10,abc\n")
    with pytest.raises(ArtefactError, match="not a training log"):
        read_log(tmp_path / "log.csv")


def test_a_final_pt_of_another_network_or_other_settings_is_refused(tmp_path):
    settings = {"diffusion": {"T": 50}}
    state = {
        "network": "T~50",
        "settings": settings,
        "code": "c",
        "dataset_sha256": "d",
        "image_size": 16,
        "step": 3,
        "ema": {},
    }
    torch.save(state, tmp_path / "final.pt")
    assert read_final(tmp_path / "final.pt")["network"] == "T~50"
    with pytest.raises(ArtefactError, match="is network T~50, not T~100"):
        read_final(tmp_path / "final.pt", {"network": "T~100"})
    other = settings_digest({"diffusion": {"T": 100}})
    with pytest.raises(ArtefactError, match="other training settings"):
        read_final(tmp_path / "final.pt", {"network": "T~50", "settings_digest": other})
    same = {"network": "T~50", "settings_digest": settings_digest(settings)}
    assert read_final(tmp_path / "final.pt", same)["step"] == 3
    torch.save({"ema": {}}, tmp_path / "old.pt")
    with pytest.raises(ArtefactError, match="not a final.pt"):
        read_final(tmp_path / "old.pt")
