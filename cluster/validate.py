"""Offline checks of KubeRay manifests (``ldp infra check``): no cluster, no network.

What a manifest must pass, in order:

1. **Schema**: the object against a JSON schema of its kind, every object closed
   (``additionalProperties: false`` wherever the schema lists properties), so a misspelt key such
   as ``serveConfigv2`` fails. The schemas are either the project's minimal ones
   (:func:`ldp.cluster.schemas.builtin_schemas`) or the operator's CustomResourceDefinitions read
   from a folder (:func:`load_crd_schemas`, the ``openAPIV3Schema`` of API version ``v1``).
2. **Operator rules** that no schema states: names are DNS labels (lowercase letters, digits and
   ``-``) of at most 53 characters for a RayCluster and 47 for a RayJob or RayService (the operator
   derives longer pod and service names from them); ``suspend: true`` and
   ``ttlSecondsAfterFinished > 0`` need ``shutdownAfterJobFinishes: true``; ``submissionMode:
   SidecarMode`` forbids ``submitterPodTemplate``.
3. **Embedded documents**: ``runtimeEnvYAML`` must parse to a mapping (``env_vars`` a mapping of
   strings); ``serveConfigV2`` must parse, pass Ray Serve's own ``ServeDeploySchema`` and contain
   no key that schema does not know (Serve ignores unknown keys silently, so a typo would
   otherwise deploy a default).
"""

from __future__ import annotations

import copy
import functools
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ldp.errors import UsageError, first_line

__all__ = [
    "NAME_LIMITS",
    "check_file",
    "check_manifest",
    "close_schema",
    "load_crd_schemas",
    "serve_config_problems",
]

NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
"""Longest ``metadata.name`` the KubeRay operator accepts per kind."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CRD_FILES = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}


def close_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with ``additionalProperties: false`` on every object that lists
    ``properties`` and says nothing about extra keys (Kubernetes' ``x-kubernetes-preserve-unknown-
    fields`` objects stay open)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: CRDs are megabytes


def load_crd_schemas(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{kind: closed schema}`` from ``ray.io_{rayclusters,rayjobs,rayservices}.yaml`` in
    ``folder`` (the operator's CRDs); the top level gets ``apiVersion``/``kind`` pinned and
    ``metadata.name`` required. Read once per folder and process (the files are large)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--schemas: no such folder: {folder}")
    stamp = tuple(
        (p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("ray.io_*.yaml"))
    )
    return _load_crds(str(folder.resolve()), stamp)  # shared: callers only read it


@functools.lru_cache(maxsize=4)
def _load_crds(folder_text: str, stamp: tuple) -> dict[str, dict[str, Any]]:
    folder = Path(folder_text)
    out = {}
    for kind, plural in _CRD_FILES.items():
        path = folder / f"ray.io_{plural}.yaml"
        if not path.is_file():
            raise UsageError(f"--schemas: {folder} has no ray.io_{plural}.yaml")
        try:
            crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
            versions = crd["spec"]["versions"]
            schema = next(v for v in versions if v["name"] == "v1")["schema"]["openAPIV3Schema"]
        except (yaml.YAMLError, KeyError, TypeError, StopIteration, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not a KubeRay CRD with a v1 schema ({first_line(exc)})") from None
        schema = close_schema(schema)
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"const": "ray.io/v1"}
        props["kind"] = {"const": kind}
        props["metadata"] = {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        }
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        out[kind] = schema
    return out


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _schema_problems(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(err.absolute_path)
        if err.validator == "additionalProperties" and err.validator_value is False:
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            problems.append(f"{where}: unknown key {', '.join(map(repr, extra))}")
        else:
            problems.append(f"{where}: {first_line(err.message)}")
    return problems


def _rule_problems(doc: dict[str, Any]) -> list[str]:
    kind = doc.get("kind")
    problems = []
    name = (doc.get("metadata") or {}).get("name")
    if isinstance(name, str):
        limit = NAME_LIMITS.get(kind)
        if limit is not None and len(name) > limit:
            problems.append(f"metadata.name: {name!r} is {len(name)} characters; a {kind} allows {limit}")
        if not _DNS_LABEL.match(name):
            problems.append(
                f"metadata.name: {name!r} is not a DNS label (lowercase letters, digits, '-')"
            )
    spec = doc.get("spec")
    if kind == "RayJob" and isinstance(spec, dict):
        shutdown = spec.get("shutdownAfterJobFinishes") is True
        if spec.get("suspend") is True and not shutdown:
            problems.append("spec.suspend: needs shutdownAfterJobFinishes: true")
        ttl = spec.get("ttlSecondsAfterFinished")
        if isinstance(ttl, int) and ttl > 0 and not shutdown:
            problems.append("spec.ttlSecondsAfterFinished: > 0 needs shutdownAfterJobFinishes: true")
        if spec.get("submissionMode") == "SidecarMode" and "submitterPodTemplate" in spec:
            problems.append("spec.submitterPodTemplate: not allowed with submissionMode: SidecarMode")
        if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
            problems.append("spec: a RayJob needs rayClusterSpec or clusterSelector")
        if "entrypoint" not in spec and spec.get("submissionMode") != "InteractiveMode":
            problems.append("spec.entrypoint: missing")
        if isinstance(spec.get("runtimeEnvYAML"), str):
            problems += [f"spec.runtimeEnvYAML: {p}" for p in _runtime_env_problems(spec["runtimeEnvYAML"])]
    if kind == "RayService" and isinstance(spec, dict):
        text = spec.get("serveConfigV2")
        if isinstance(text, str):
            problems += [f"spec.serveConfigV2: {p}" for p in serve_config_problems(text)]
    return problems


def _runtime_env_problems(text: str) -> list[str]:
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not valid YAML ({first_line(exc)})"]
    if env is None:
        return []
    if not isinstance(env, dict):
        return ["expected a mapping"]
    env_vars = env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        return ["env_vars: expected a mapping of strings to strings (quote numbers)"]
    return []


def _unknown_keys(model: Any, data: Any, where: str) -> list[str]:
    """Keys in ``data`` that pydantic ``model`` (and its nested models) does not declare."""

    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    out = [f"{where}{k}: unknown key" for k in data if k not in known]
    for name, info in fields.items():
        value = data.get(name, data.get(info.alias) if info.alias else None)
        if value is None:
            continue
        for tp in _models_in(info.annotation):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += _unknown_keys(tp, item, f"{where}{name}[{i}].")
            elif isinstance(value, dict):
                out += _unknown_keys(tp, value, f"{where}{name}.")
            break
    return out


def _models_in(annotation: Any) -> list[Any]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    origin = typing.get_origin(annotation)
    if origin is not None and origin is not dict:
        for arg in typing.get_args(annotation):
            found += _models_in(arg)
    return found


def serve_config_problems(text: str) -> list[str]:
    """Problems of a Serve config (``serveConfigV2``): YAML, Ray's ``ServeDeploySchema``, and
    keys that schema does not declare."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not valid YAML ({first_line(exc)})"]
    if not isinstance(data, dict):
        return ["expected a mapping with 'applications'"]
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    problems = _unknown_keys(ServeDeploySchema, data, "")
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{loc}: {first_line(err['msg'])}")
    return problems


def check_manifest(doc: Any, schemas: dict[str, dict[str, Any]]) -> list[str]:
    """Every problem of one manifest object (empty when it passes)."""
    if not isinstance(doc, dict):
        return ["expected a mapping (a Kubernetes object)"]
    kind = doc.get("kind")
    if kind not in schemas:
        return [f"kind: {kind!r} is not one of {', '.join(sorted(schemas))}"]
    return _schema_problems(doc, schemas[kind]) + _rule_problems(doc)


def check_file(path: str | Path, schemas: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """``[(label, problems)]`` for each document in a YAML file; ``label`` is ``Kind/name``.
    Raises :class:`UsageError` when the file is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not docs:
        raise UsageError(f"{path}: no YAML documents")
    out = []
    for i, doc in enumerate(docs):
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        kind = doc.get("kind") if isinstance(doc, dict) else None
        out.append((f"{kind or f'document {i + 1}'}/{name or '?'}", check_manifest(doc, schemas)))
    return out
