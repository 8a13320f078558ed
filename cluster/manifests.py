"""KubeRay manifests generated from the platform's own specs (``--emit rayjob|rayservice``).

- :func:`rayjob_manifest`: a ``RayJob`` whose entrypoint is ``ldp submit --spec-json '<the
  resolved job spec>'``, i.e. the same command and the same validated spec that the user ran
  locally; the operator creates a cluster for it (one head without GPUs, GPU workers sized from
  ``--gpus``) and deletes it when the job ends.
- :func:`rayservice_manifest`: a ``RayService`` whose ``serveConfigV2`` is a Serve config dict
  (the one ``ldp serve`` builds), on a cluster with one GPU per Serve replica.
- :func:`raycluster_manifest`: a long-lived ``RayCluster`` for interactive use
  (``ldp submit --address http://<head>:8265``).

Secure defaults, the same for all three:

- KubeRay token auth (``authOptions.mode: token``): the dashboard and Jobs API on port 8265 answer
  only requests that carry the cluster's token. The dashboard listens on all pod interfaces so the
  operator's submitter (and ``kubectl port-forward``) can reach it; the token is what guards it.
- No credentials in environment variables. Pods run under a service account (``ldp`` by
  default) meant to carry a cloud IAM role (IRSA on EKS, Workload Identity on GKE), so there is no
  secret at all. Where that is not possible, ``credentials_secret`` names a Secret holding an AWS
  ``credentials`` file; it is mounted read-only, into the head and worker containers only (the
  only ones that read or write the registry), and pointed at by ``AWS_SHARED_CREDENTIALS_FILE``.
- The image is pinned by version (``ldp:<package version>`` unless given), containers run as
  non-root without privilege escalation and with all capabilities dropped.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any

import yaml

from ldp.errors import UsageError

__all__ = [
    "DEFAULT_SERVICE_ACCOUNT",
    "RAY_VERSION",
    "default_image",
    "dns_name",
    "raycluster_manifest",
    "rayjob_manifest",
    "rayservice_manifest",
    "to_yaml",
]

RAY_VERSION = "2.60.0"
"""The Ray version of the image (``infra/Dockerfile``); KubeRay needs it in ``rayVersion``."""

DEFAULT_SERVICE_ACCOUNT = "ldp"
"""Service account of every pod; bind a cloud IAM role to it (see ``infra/README.md``)."""

_CREDENTIALS_DIR = "/home/ray/.aws"
_NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
_OBJECT_STORES = ("s3://", "gs://", "gcs://", "az://", "abfs://")


def default_image() -> str:
    """``ldp:<installed package version>``: pinned, so every pod runs the code that wrote it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ldp:{version('ldp')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "ldp:0.1.0"


def dns_name(text: str, kind: str) -> str:
    """``text`` as a DNS label short enough for a ``kind`` (lowercase, ``-``, trimmed)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = name[: _NAME_LIMITS[kind]].rstrip("-")
    if not name:
        raise UsageError(f"cannot make a {kind} name from {text!r}")
    return name


def to_yaml(manifest: dict[str, Any]) -> str:
    """A manifest as YAML (key order kept; multi-line strings such as ``serveConfigV2`` as blocks)."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)


# -- building blocks ----------------------------------------------------------------------------
def _security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}


def _container(name: str, image: str, resources: dict[str, Any], *, ports=None, credentials=None):
    container: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent"}
    if ports:
        container["ports"] = ports
    container["resources"] = {"limits": resources, "requests": resources}
    if credentials:
        container["env"] = [{"name": "AWS_SHARED_CREDENTIALS_FILE", "value": f"{_CREDENTIALS_DIR}/credentials"}]
        container["volumeMounts"] = [{"name": "registry-credentials", "mountPath": _CREDENTIALS_DIR, "readOnly": True}]
    container["securityContext"] = _security()
    return container


def _pod(container: dict[str, Any], service_account: str, credentials: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100},
        "containers": [container],
    }
    if credentials:
        spec["volumes"] = [{"name": "registry-credentials", "secret": {"secretName": credentials, "defaultMode": 0o400}}]
    return {"spec": spec}


def cluster_spec(
    *,
    image: str,
    gpus: int,
    gpus_per_node: int,
    cpus_per_gpu: int = 8,
    memory_per_gpu_gb: int = 64,
    head_cpus: int = 4,
    head_memory_gb: int = 16,
    serve_port: bool = False,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    credentials_secret: str | None = None,
    autoscale: bool = False,
) -> dict[str, Any]:
    """A ``rayClusterSpec``: a head without GPUs (``num-cpus: 0``, so no training lands on it)
    and ``ceil(gpus / gpus_per_node)`` workers with ``min(gpus, gpus_per_node)`` GPUs each (or one
    CPU worker when ``gpus`` is 0)."""
    if gpus < 0 or gpus_per_node < 1:
        raise UsageError(f"gpus must be >= 0 and gpus per node >= 1, got {gpus} and {gpus_per_node}")
    ports = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    if serve_port:
        ports.append({"containerPort": 8000, "name": "serve"})
    head = _container(
        "ray-head", image, {"cpu": str(head_cpus), "memory": f"{head_memory_gb}Gi"},
        ports=ports, credentials=credentials_secret,
    )
    per_node = min(gpus, gpus_per_node) if gpus else 0
    replicas = math.ceil(gpus / gpus_per_node) if gpus else 1
    limits: dict[str, Any] = {
        "cpu": str(max(1, per_node) * cpus_per_gpu),
        "memory": f"{max(1, per_node) * memory_per_gpu_gb}Gi",
    }
    if per_node:
        limits["nvidia.com/gpu"] = str(per_node)
    worker = _container("ray-worker", image, limits, credentials=credentials_secret)
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscale,
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod(head, service_account, credentials_secret),
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu-workers" if per_node else "cpu-workers",
                "replicas": replicas,
                "minReplicas": replicas if not autoscale else 0,
                "maxReplicas": replicas if not autoscale else max(replicas, 8),
                "rayStartParams": {},
                "template": _pod(worker, service_account, credentials_secret),
            }
        ],
    }


def _metadata(name: str, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    labels = {k: v for k, v in labels.items() if v}
    meta["labels"] = {"app.kubernetes.io/part-of": "ldp", **labels}
    return meta


# -- the three kinds ----------------------------------------------------------------------------
def rayjob_manifest(
    spec: dict[str, Any],
    *,
    job_id: str,
    gpus: int,
    gpus_per_node: int = 8,
    image: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    credentials_secret: str | None = None,
    ttl_seconds: int = 3600,
) -> dict[str, Any]:
    """A ``RayJob`` running the resolved job ``spec`` with ``ldp submit`` on a fresh cluster.

    The spec must name an object-store registry (``s3://``...): the pod's local disk is gone
    when the cluster is deleted. Local data folders cannot travel either: ``data_dir`` must be a
    URL or unset (the Hugging Face hub). Checkpoints default to ``<registry>-runs`` in the same
    store so that a restarted job resumes from them.
    """
    registry = spec.get("registry") or ""
    if not registry.startswith(_OBJECT_STORES):
        raise UsageError(
            "--emit rayjob needs an object-store registry the cluster can reach: "
            "--registry s3://BUCKET/PREFIX"
        )
    data_dir = spec.get("data_dir")
    if data_dir and "://" not in data_dir and data_dir != "hub":
        raise UsageError(
            f"--emit rayjob: data folder {data_dir} is on this machine; use an s3:// mirror or "
            "leave --data-dir unset (the Hugging Face hub)"
        )
    base = spec.get("base")
    if base and not base.startswith("bases/"):
        raise UsageError(f"--emit rayjob: base {base} is a local folder; publish it and pass its bases/... reference")
    spec = dict(spec)
    spec.setdefault("storage_path", None)
    if not spec["storage_path"] or "://" not in spec["storage_path"]:
        spec["storage_path"] = registry.rstrip("/") + "-runs"
    payload = json.dumps(spec, separators=(",", ":"), sort_keys=True)
    entrypoint = f"ldp submit --spec-json {shlex.quote(payload)} --job-id {shlex.quote(job_id)}"
    runtime_env = {"env_vars": {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1", "LDP_REGISTRY": registry}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(dns_name(job_id, "RayJob"), **{"ldp.io/task": dns_name(str(spec.get("task", "")), "RayJob")}),
        "spec": {
            "entrypoint": entrypoint,
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=False),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": int(ttl_seconds),
            "backoffLimit": 0,
            "rayClusterSpec": cluster_spec(
                image=image or default_image(), gpus=gpus, gpus_per_node=gpus_per_node,
                service_account=service_account, credentials_secret=credentials_secret,
            ),
        },
    }


def rayservice_manifest(
    serve_config: dict[str, Any],
    *,
    name: str,
    gpus: int = 1,
    gpus_per_node: int = 1,
    image: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    credentials_secret: str | None = None,
) -> dict[str, Any]:
    """A ``RayService`` serving ``serve_config`` (a Serve config dict with ``applications``:
    what ``serve build`` writes and ``ServeDeploySchema`` accepts) on ``gpus`` GPUs."""
    if not isinstance(serve_config, dict) or not isinstance(serve_config.get("applications"), list):
        raise UsageError("a Serve config is a mapping with an 'applications' list")
    from ldp.cluster.validate import serve_config_problems

    text = yaml.safe_dump(serve_config, sort_keys=False)
    problems = serve_config_problems(text)
    if problems:
        raise UsageError(f"invalid Serve config: {problems[0]}")
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _metadata(dns_name(name, "RayService")),
        "spec": {
            "serveConfigV2": text,
            "rayClusterConfig": cluster_spec(
                image=image or default_image(), gpus=gpus, gpus_per_node=gpus_per_node,
                serve_port=True, service_account=service_account,
                credentials_secret=credentials_secret, autoscale=True,
            ),
        },
    }


def raycluster_manifest(
    *,
    name: str = "ldp",
    gpus: int = 8,
    gpus_per_node: int = 8,
    image: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    credentials_secret: str | None = None,
) -> dict[str, Any]:
    """A long-lived, autoscaling ``RayCluster`` for ``ldp submit --address http://<head>:8265``."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _metadata(dns_name(name, "RayCluster")),
        "spec": cluster_spec(
            image=image or default_image(), gpus=gpus, gpus_per_node=gpus_per_node, serve_port=True,
            service_account=service_account, credentials_secret=credentials_secret, autoscale=True,
        ),
    }
