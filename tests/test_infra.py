"""KubeRay manifests: what ``infra/`` ships and what ``--emit`` writes pass the offline check,
against the project's minimal schemas and the operator's own CRDs (v1.7.0, closed here so that a
misspelt key fails); the check catches misspelt keys, long names, broken embedded configs and the
operator's unstated rules; the defaults are the secure ones."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ldp.cli.main import main
from ldp.cluster.manifests import rayjob_manifest, raycluster_manifest, rayservice_manifest, to_yaml
from ldp.cluster.schemas import builtin_schemas
from ldp.cluster.validate import check_manifest, load_crd_schemas

INFRA = Path(__file__).resolve().parents[1] / "infra"
MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))
SERVE = {"applications": [{"name": "ldp", "route_prefix": "/", "import_path": "ldp.serve.deployment:app_builder",
                           "args": {"registry": "s3://b/reg"}}]}
SPEC = {"kind": "adapter", "task": "cnndm", "size": "7b", "method": "lora-diffusion", "base": "bases/7b@1",
        "registry": "s3://b/reg", "data_dir": None, "workers": 16, "use_gpu": True, "strategy": "zero3"}


@pytest.fixture(scope="module")
def crd_schemas(kuberay_crds):
    return load_crd_schemas(kuberay_crds)


@pytest.fixture(scope="module", params=["builtin", "crds"])
def schemas(request, kuberay_crds):
    return builtin_schemas() if request.param == "builtin" else load_crd_schemas(kuberay_crds)


def _docs():
    return {
        "rayjob": rayjob_manifest(SPEC, job_id="ldp-cnndm-20260101-000000-abcd", gpus=16, gpus_per_node=8),
        "rayservice": rayservice_manifest(SERVE, name="ldp-serve", gpus=2),
        "raycluster": raycluster_manifest(name="ldp"),
    }


def test_infra_and_generated_manifests_pass(schemas):
    assert len(MANIFESTS) == 3
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            assert check_manifest(doc, schemas) == [], path
    for name, doc in _docs().items():
        assert check_manifest(yaml.safe_load(to_yaml(doc)), schemas) == [], name


def test_ldp_infra_check_command(kuberay_crds, tmp_path, capsys):
    assert main(["infra", "check", *map(str, MANIFESTS)]) == 0
    assert main(["infra", "check", "--schemas", str(kuberay_crds), *map(str, MANIFESTS)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   ") == 6
    bad = tmp_path / "bad.yaml"
    doc = _docs()["rayservice"]
    doc["spec"]["serveConfigv2"] = doc["spec"].pop("serveConfigV2")
    bad.write_text(to_yaml(doc))
    assert main(["infra", "check", "--schemas", str(kuberay_crds), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "serveConfigv2" in captured.out and captured.err.count("\n") == 1
    assert main(["infra", "check", str(tmp_path / "missing.yaml")]) == 2
    assert main(["infra", "check", "--schemas", str(tmp_path), str(bad)]) == 2


def _mutations():
    def misspelt_top(d):
        d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartparams"] = {}

    def misspelt_container(d):
        d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"

    def long_name(d):
        d["metadata"]["name"] = "a" * 48

    def not_dns(d):
        d["metadata"]["name"] = "Upper_Case"

    def ttl_without_shutdown(d):
        d["spec"]["shutdownAfterJobFinishes"] = False

    def suspend_without_shutdown(d):
        d["spec"]["shutdownAfterJobFinishes"] = False
        d["spec"]["ttlSecondsAfterFinished"] = 0
        d["spec"]["suspend"] = True

    def sidecar_with_submitter(d):
        d["spec"]["submissionMode"] = "SidecarMode"
        d["spec"]["submitterPodTemplate"] = {"spec": {"containers": [{"name": "s", "image": "x"}]}}

    def runtime_env_broken(d):
        d["spec"]["runtimeEnvYAML"] = "env_vars: [unclosed"

    def runtime_env_numbers(d):
        d["spec"]["runtimeEnvYAML"] = "env_vars:\n  N: 1\n"

    def wrong_type(d):
        d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"

    def bad_auth(d):
        d["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"

    return {k: v for k, v in locals().items()}


@pytest.mark.parametrize("mutation", sorted(_mutations()))
def test_check_catches_rayjob_mistakes(mutation, schemas):
    doc = copy.deepcopy(_docs()["rayjob"])
    _mutations()[mutation](doc)
    problems = check_manifest(doc, schemas)
    assert problems, mutation


@pytest.mark.parametrize(
    "serve_text, needle",
    [
        ("applications: [{name: a, import_path: m:app, route_prefx: /}]", "route_prefx"),
        ("applications: [{name: a}]", "import_path"),
        ("applications: {not: a list}", "applications"),
        ("applications: [unclosed", "YAML"),
        ("http_options: {hostt: 0.0.0.0}\napplications: [{name: a, import_path: m:app}]", "hostt"),
        ("applications: [{name: a, import_path: m:app, deployments: [{name: D, num_replica: 2}]}]", "num_replica"),
    ],
)
def test_check_catches_broken_serve_configs(serve_text, needle, crd_schemas):
    doc = copy.deepcopy(_docs()["rayservice"])
    doc["spec"]["serveConfigV2"] = serve_text
    problems = check_manifest(doc, crd_schemas)
    assert any(needle in p for p in problems), problems


def test_long_raycluster_name_limit_is_53(crd_schemas):
    doc = raycluster_manifest(name="x")
    doc["metadata"]["name"] = "a" * 53
    assert check_manifest(doc, crd_schemas) == []
    doc["metadata"]["name"] = "a" * 54
    assert any("53" in p for p in check_manifest(doc, crd_schemas))


def test_secure_defaults_in_every_manifest():
    for path in MANIFESTS:
        text = path.read_text()
        doc = yaml.safe_load(text)
        cluster = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        assert cluster["authOptions"] == {"mode": "token"}, path
        assert "secretRef" not in text and "AWS_SECRET" not in text and "envFrom" not in text, path
        assert ":latest" not in text, path
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert pod["serviceAccountName"] == "ldp"
            for c in pod["containers"]:
                assert c["image"].startswith("ldp:") and c["image"] != "ldp:latest"
                assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_credentials_secret_is_mounted_read_only_not_in_env():
    doc = rayjob_manifest(SPEC, job_id="ldp-x", gpus=8, credentials_secret="ldp-s3")
    pod = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "registry-credentials", "secret": {"secretName": "ldp-s3", "defaultMode": 0o400}}]
    container = pod["containers"][0]
    assert container["volumeMounts"][0]["readOnly"] is True
    assert all("SECRET" not in e["name"] for e in container["env"])


def test_emit_rayjob_embeds_the_resolved_spec(data_dir, capsys, monkeypatch, crd_schemas):
    import json
    import shlex

    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    code = main(["submit", "--task", "sst2", "--size", "7b", "--gpus", "12", "--strategy", "zero3",
                 "--base", "bases/7b@2", "--registry", "s3://bucket/ldp", "--data-dir", "hub",
                 "--emit", "rayjob", "--image", "reg.example/ldp:0.1.0"])
    out = capsys.readouterr().out
    assert code == 0
    doc = yaml.safe_load(out)
    assert check_manifest(doc, crd_schemas) == []
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["ldp", "submit", "--spec-json"]
    spec = json.loads(argv[3])
    assert spec["task"] == "sst2" and spec["workers"] == 12 and spec["use_gpu"] is True
    assert spec["registry"] == "s3://bucket/ldp" and spec["storage_path"] == "s3://bucket/ldp-runs"
    assert spec["train"]["loop"]["precision"] == "bf16"
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 2
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert workers["template"]["spec"]["containers"][0]["image"] == "reg.example/ldp:0.1.0"


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--registry", "/tmp/local-reg"], "object-store registry"),
        (["--registry", "s3://b/r", "--data-dir", "DATA"], "data folder"),
        (["--registry", "s3://b/r", "--emit", "rayservice"], "rayservice"),
        (["--registry", "s3://b/r", "--dry-run"], "choose one"),
    ],
)
def test_emit_refuses_what_a_cluster_cannot_use(extra, needle, capsys, data_dir):
    code = main(["submit", "--task", "sst2", "--size", "7b", "--base", "bases/7b@1", "--gpus", "1",
                 "--strategy", "ddp", "--emit", "rayjob", *[str(data_dir) if a == "DATA" else a for a in extra]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1


def test_rayservice_refuses_invalid_serve_config():
    from ldp.errors import UsageError

    with pytest.raises(UsageError, match="route_prefx"):
        rayservice_manifest({"applications": [{"name": "a", "import_path": "m:a", "route_prefx": "/"}]}, name="s")


def test_dockerfile_installs_torch_before_the_project_with_gpu_extras():
    text = (INFRA / "Dockerfile").read_text()
    assert text.index("torch==2.13.0") < text.index('pip install --no-cache-dir ".[gpu]"')
    assert "USER ray" in text
