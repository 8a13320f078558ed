"""Minimal, closed JSON schemas of the KubeRay kinds LDP writes (``RayCluster``, ``RayJob``,
``RayService``, API version ``ray.io/v1``).

They describe only the fields the project's manifests use (those :mod:`ldp.cluster.manifests`
emits and those in ``infra/``), and every object is closed (``additionalProperties: false``), so
a misspelt key fails. ``ldp infra check`` uses them when no ``--schemas DIR`` is given; with
``--schemas`` it reads the operator's own CustomResourceDefinitions instead
(:func:`ldp.cluster.validate.load_crd_schemas`), which cover every field of that operator version.
Written for this project from the KubeRay v1 API; they are not copies of the CRD files.
"""

from __future__ import annotations

from typing import Any

__all__ = ["builtin_schemas"]


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


def _map(values: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": values}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
_STR_MAP = _map(_STR)


def _container() -> dict[str, Any]:
    env_var = _obj(
        {
            "name": _STR,
            "value": _STR,
            "valueFrom": _obj(
                {
                    "secretKeyRef": _obj({"name": _STR, "key": _STR, "optional": _BOOL}, ("key",)),
                    "fieldRef": _obj({"fieldPath": _STR}, ("fieldPath",)),
                }
            ),
        },
        ("name",),
    )
    return _obj(
        {
            "name": _STR,
            "image": _STR,
            "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            "command": {"type": "array", "items": _STR},
            "args": {"type": "array", "items": _STR},
            "env": {"type": "array", "items": env_var},
            "envFrom": {
                "type": "array",
                "items": _obj({"secretRef": _obj({"name": _STR}), "configMapRef": _obj({"name": _STR})}),
            },
            "ports": {
                "type": "array",
                "items": _obj(
                    {"containerPort": _INT, "name": _STR, "protocol": {"enum": ["TCP", "UDP", "SCTP"]}},
                    ("containerPort",),
                ),
            },
            "resources": _obj({"limits": _map(_QUANTITY), "requests": _map(_QUANTITY)}),
            "volumeMounts": {
                "type": "array",
                "items": _obj({"name": _STR, "mountPath": _STR, "readOnly": _BOOL}, ("name", "mountPath")),
            },
            "securityContext": _obj(
                {
                    "allowPrivilegeEscalation": _BOOL,
                    "runAsNonRoot": _BOOL,
                    "runAsUser": _INT,
                    "readOnlyRootFilesystem": _BOOL,
                    "capabilities": _obj({"drop": {"type": "array", "items": _STR}}),
                }
            ),
        },
        ("name",),
    )


def _pod_template() -> dict[str, Any]:
    volume = _obj(
        {
            "name": _STR,
            "secret": _obj({"secretName": _STR, "defaultMode": _INT}),
            "emptyDir": _obj({"medium": _STR, "sizeLimit": _QUANTITY}),
        },
        ("name",),
    )
    spec = _obj(
        {
            "containers": {"type": "array", "items": _container()},
            "volumes": {"type": "array", "items": volume},
            "serviceAccountName": _STR,
            "automountServiceAccountToken": _BOOL,
            "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
            "nodeSelector": _STR_MAP,
            "tolerations": {
                "type": "array",
                "items": _obj({"key": _STR, "operator": _STR, "value": _STR, "effect": _STR}),
            },
            "securityContext": _obj({"runAsNonRoot": _BOOL, "runAsUser": _INT, "fsGroup": _INT}),
        },
        ("containers",),
    )
    return _obj({"metadata": _obj({"labels": _STR_MAP, "annotations": _STR_MAP}), "spec": spec})


def _cluster_spec() -> dict[str, Any]:
    params = _map({"anyOf": [_STR, _INT, _BOOL]})
    head = _obj(
        {"rayStartParams": params, "serviceType": _STR, "template": _pod_template()},
        ("template",),
    )
    worker = _obj(
        {
            "groupName": _STR,
            "replicas": _INT,
            "minReplicas": _INT,
            "maxReplicas": _INT,
            "rayStartParams": params,
            "template": _pod_template(),
        },
        ("groupName", "template"),
    )
    return _obj(
        {
            "rayVersion": _STR,
            "enableInTreeAutoscaling": _BOOL,
            "authOptions": _obj({"mode": {"enum": ["disabled", "token"]}, "secretName": _STR}),
            "headGroupSpec": head,
            "workerGroupSpecs": {"type": "array", "items": worker},
        },
        ("headGroupSpec",),
    )


def _top(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = _obj(
        {"name": _STR, "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP}, ("name",)
    )
    return _obj(
        {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind}, "metadata": metadata, "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )


def builtin_schemas() -> dict[str, dict[str, Any]]:
    """``{kind: JSON schema of the whole object}`` for RayCluster, RayJob, RayService."""
    job = _obj(
        {
            "entrypoint": _STR,
            "runtimeEnvYAML": _STR,
            "rayClusterSpec": _cluster_spec(),
            "clusterSelector": _STR_MAP,
            "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
            "shutdownAfterJobFinishes": _BOOL,
            "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
            "activeDeadlineSeconds": {"type": "integer", "minimum": 0},
            "backoffLimit": {"type": "integer", "minimum": 0},
            "suspend": _BOOL,
            "submitterPodTemplate": _pod_template(),
            "metadata": _STR_MAP,
        },
    )
    service = _obj(
        {
            "serveConfigV2": _STR,
            "rayClusterConfig": _cluster_spec(),
            "serviceUnhealthySecondThreshold": _INT,
            "deploymentUnhealthySecondThreshold": _INT,
        },
        ("rayClusterConfig",),
    )
    return {
        "RayCluster": _top("RayCluster", _cluster_spec()),
        "RayJob": _top("RayJob", job),
        "RayService": _top("RayService", service),
    }
