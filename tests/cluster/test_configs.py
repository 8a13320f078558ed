"""Shipped Ray cluster-launcher configs are valid for Ray's own schema (what `ray up` checks)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "cluster" / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"local.yaml", "aws-gpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid_for_ray_up(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    assert raw["cluster_name"].startswith("ldp")
    # The head starts with a local-only dashboard and without usage stats, like `ldp cluster up`.
    head_cmd = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd and "--disable-usage-stats" in head_cmd
    prepared = prepare_config(copy.deepcopy(raw))  # fills provider defaults, as `ray up` does
    validate_config(prepared)  # jsonschema against ray/autoscaler/ray-schema.json
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validation_is_strict():
    """The check above would catch a typo: unknown keys are rejected by Ray's schema."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CONFIGS[0].parent / "aws-gpu.yaml").read_text())
    raw["available_node_types"]["gpu-8x"]["max_worker"] = 4  # typo for max_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))
