"""The adapter registry over fsspec (``file://``, ``s3://``). Imported as ``ldp.store``.

    from ldp.store import Registry

    reg = Registry()                                   # LDP_REGISTRY or ~/.ldp/registry
    ref = reg.publish("adapters/sst2/lora-diffusion", "out/adapter", base="bases/tiny@latest",
                      job="job-42", metadata={"steps": 600})
    reg.set_alias(ref, "prod")
    folder = reg.pull("adapters/sst2/lora-diffusion@prod")   # verified, content-addressed cache
    metrics = reg.read_json(ref, "metrics.json")

Modules: ``refs`` (references and names), ``manifest``, ``backend`` (fsspec + atomic primitives),
``claims`` (version numbers), ``cache`` (blob cache), ``gc``, ``sources`` (publish inputs),
``registry`` (the :class:`Registry`). Importing this package touches no storage.
"""

from .gc import GcRecord
from .manifest import FileEntry, Manifest
from .refs import KINDS, LATEST, Ref, parse_ref
from .registry import ANY, AliasConflictError, Registry, VerifyResult, VersionInfo

__all__ = [
    "ANY",
    "KINDS",
    "LATEST",
    "AliasConflictError",
    "FileEntry",
    "GcRecord",
    "Manifest",
    "Ref",
    "Registry",
    "VerifyResult",
    "VersionInfo",
    "parse_ref",
]
