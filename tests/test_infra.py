"""Deployment manifests are valid YAML of the KubeRay kinds they claim to be."""

from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"


@pytest.mark.parametrize("path", sorted((INFRA / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_parses_as_a_kuberay_object(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in {"RayCluster", "RayJob", "RayService"}
    assert doc["metadata"]["name"]
    if doc["kind"] == "RayService":
        serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
        assert serve["applications"][0]["import_path"].startswith("ldp.")


def test_dockerfile_installs_cpu_torch_before_the_project():
    text = (INFRA / "Dockerfile").read_text()
    assert text.index("torch==2.13.0") < text.index("pip install --no-cache-dir .")
