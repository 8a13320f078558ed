"""A Serve config file for ``serve deploy`` or a KubeRay ``RayService`` (its ``serveConfigV2``)."""

from __future__ import annotations

from typing import Any

from ldp.serve.deployment import DEPLOYMENT_NAME
from ldp.serve.options import ServeOptions

__all__ = ["serve_config", "check_serve_config"]

IMPORT_PATH = "ldp.serve.deployment:app_builder"


def serve_config(
    options: ServeOptions, *, name: str = "ldp", route_prefix: str = "/",
    host: str = "0.0.0.0", port: int = 8000,
) -> dict[str, Any]:
    """The config as a dict (dump it as YAML); checked with Serve's own schema."""
    args = {k: v for k, v in options.to_dict().items() if k not in ("replicas", "num_cpus")}
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": name,
            "route_prefix": route_prefix,
            "import_path": IMPORT_PATH,
            "args": args,
            "deployments": [{
                "name": DEPLOYMENT_NAME,
                "num_replicas": options.replicas,
                "max_ongoing_requests": max(64, 4 * options.max_batch_size),
                "ray_actor_options": {"num_cpus": options.num_cpus},
            }],
        }],
    }
    check_serve_config(config)
    return config


def check_serve_config(config: dict[str, Any]) -> None:
    """Validate with ``ServeDeploySchema`` and refuse keys it would silently ignore."""
    from ray.serve.schema import ServeDeploySchema

    from ldp.errors import UsageError

    try:
        schema = ServeDeploySchema.model_validate(config)
    except Exception as exc:  # pydantic's ValidationError: report its first line
        raise UsageError(f"invalid Serve config: {str(exc).splitlines()[0]}") from None
    known_app = set(type(schema.applications[0]).model_fields)
    for app in config.get("applications", []):
        unknown = set(app) - known_app
        if unknown:
            raise UsageError(f"invalid Serve config: unknown application key {sorted(unknown)[0]!r}")
    if ServeOptions(**config["applications"][0]["args"]) is None:  # the args must build options
        raise UsageError("invalid Serve config args")
