"""Every shipped config builds into its typed object (no config fails an hour into a run)."""

from pathlib import Path

import pytest
import yaml

from ldp.config import build, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_job_specs_validate(path):
    from ldp.jobs.spec import JobSpec, train_config

    spec = build(JobSpec, yaml.safe_load(path.read_text()))
    cfg = train_config(spec)
    assert cfg["task"] == spec.task and cfg["method"] == spec.method


@pytest.mark.parametrize("path", sorted((CONFIGS / "pretrain").glob("*.yaml")), ids=lambda p: p.name)
def test_pretrain_configs_validate(path):
    from ldp.training.recipes.pretrain import PretrainConfig

    cfg = load(PretrainConfig, path)
    assert cfg.loop.max_steps > 0


def test_first_line_of_each_config_is_the_command_that_runs_it():
    for path in CONFIGS.rglob("*.yaml"):
        assert path.read_text().startswith("# ldp "), path
