"""The resolved configuration is a frozen RunConfig in sections generated from OPTIONS, its metadata beside them."""

import dataclasses

import pytest

from pprs_mpi import config
from pprs_mpi.config import ConfigError, RunConfig


def test_every_option_sits_in_one_section_and_reads_by_section_only():
    cfg = config.resolve({"problem": "lad", "depth": 3, "lr": 0.5, "schedule": "1f1b"})
    assert isinstance(cfg, RunConfig)
    assert cfg.algorithm.lr == 0.5 and cfg.pipeline.schedule == "1f1b" and cfg.device.device == "cpu"
    assert cfg.meta.given == ("depth", "lr", "problem", "schedule") and cfg.meta.problem_params["depth"] == 3
    assert {f.name for section in config.SECTIONS for f in dataclasses.fields(getattr(cfg, section))} == set(
        config.BY_NAME)
    with pytest.raises(TypeError):  # no string look-ups: a misspelt name cannot pass unnoticed
        cfg["lr"]


def test_it_is_frozen_and_a_replacement_is_validated():
    cfg = config.resolve({"problem": "lad"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algorithm.lr = 1.0
    changed = cfg.replace(K=3, preset_source="Theorem 3")
    assert (changed.algorithm.K, changed.meta.preset_source, cfg.algorithm.K) == (3, "Theorem 3", 8)
    with pytest.raises(ConfigError, match="K must be >= 1"):
        cfg.replace(K=0)


def test_the_stored_form_is_the_flat_dict_traces_always_held():
    flat = config.resolve({"problem": "lad"}).as_dict()
    assert set(flat) == set(config.BY_NAME) | {"given", "problem_params"}
    assert RunConfig.of(flat) == config.resolve({"problem": "lad"})
