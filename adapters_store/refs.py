"""References to stored things: ``KIND/NAME@VERSION``.

``bases/tiny@3``, ``adapters/sst2/lora-diffusion@latest``, ``routers/all@prod``. Adapters have
two-part names (task/method); every other kind has one. A version is a positive integer, ``latest``
(the highest complete version) or an alias name (``prod``). Every part is checked against a fixed
charset before it is turned into a storage key, so a reference can never address anything outside
its own folder (no ``..``, no absolute paths, no empty parts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ldp.errors import UsageError

__all__ = ["KINDS", "LATEST", "Ref", "check_alias", "check_name", "parse_prefix", "parse_ref"]

# kind -> number of name parts
KINDS: dict[str, int] = {"bases": 1, "adapters": 2, "routers": 1, "bundles": 1, "sweeps": 1}
LATEST = "latest"

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ALIAS = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def check_name(part: str, *, what: str = "name") -> str:
    """Return ``part`` if it is a valid name part (``[a-z0-9][a-z0-9._-]*``, no ``..``)."""
    if not isinstance(part, str) or not _NAME.fullmatch(part) or ".." in part:
        raise UsageError(
            f"invalid {what} {part!r}: use lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (at most 64 characters, no '..')"
        )
    return part


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name (not ``latest``, not a number)."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or ".." in alias:
        raise UsageError(
            f"invalid alias {alias!r}: use lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter"
        )
    if alias == LATEST:
        raise UsageError("'latest' is computed by the registry and cannot be set as an alias")
    return alias


@dataclass(frozen=True)
class Ref:
    """``kind/name@version``; ``version`` is an int once resolved, else ``latest`` or an alias."""

    kind: str
    name: str
    version: int | str = LATEST

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        parts = self.name.split("/") if isinstance(self.name, str) else [self.name]
        if len(parts) != KINDS[self.kind]:
            shape = "TASK/METHOD" if self.kind == "adapters" else "NAME"
            raise UsageError(
                f"{self.kind} are named {self.kind}/{shape}, got {self.kind}/{self.name}"
            )
        for part in parts:
            check_name(part)
        v = self.version
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise UsageError(f"invalid version {v!r}")
        if isinstance(v, int) and v < 1:
            raise UsageError(f"invalid version {v!r}: versions start at 1")
        if isinstance(v, str) and v != LATEST:
            check_alias(v)

    @property
    def key(self) -> str:
        """The storage folder of this name: ``kind/name`` (no version)."""
        return f"{self.kind}/{self.name}"

    @property
    def concrete(self) -> bool:
        """True when the version is a number (not ``latest`` or an alias)."""
        return isinstance(self.version, int)

    def at(self, version: int | str) -> Ref:
        return Ref(self.kind, self.name, version)

    def __str__(self) -> str:
        return f"{self.key}@{self.version}"


def parse_ref(text: str | Ref, *, versioned: bool | None = None) -> Ref:
    """Parse ``KIND/NAME[@VERSION]`` (version defaults to ``latest``).

    ``versioned=False`` refuses a version (publishing names a thing, the registry picks the
    number); ``versioned=True`` requires one.
    """
    if isinstance(text, Ref):
        ref, has_version = text, True
    else:
        if not isinstance(text, str) or not text.strip():
            raise UsageError("empty reference; expected KIND/NAME@VERSION")
        body, sep, version = text.strip().partition("@")
        has_version = bool(sep)
        if has_version and not version:
            raise UsageError(f"invalid reference {text!r}: empty version after '@'")
        if body.startswith("/") or "\\" in body or body.endswith("/"):
            raise UsageError(f"invalid reference {text!r}: expected KIND/NAME@VERSION")
        kind, _, name = body.partition("/")
        if kind not in KINDS:
            raise UsageError(f"invalid reference {text!r}: kind must be one of {', '.join(KINDS)}")
        parsed: int | str = LATEST
        if has_version:
            if version.isdigit():
                if not _VERSION.fullmatch(version):
                    raise UsageError(f"invalid version {version!r} in {text!r}")
                parsed = int(version)
            else:
                parsed = version
        ref = Ref(kind, name, parsed)
    if versioned is False and has_version:
        raise UsageError(
            f"{text}: give KIND/NAME without '@VERSION'; the registry numbers versions"
        )
    if versioned is True and not has_version:
        raise UsageError(f"{text}: give an explicit version, e.g. {ref.key}@1")
    return ref


def parse_prefix(prefix: str | None) -> str:
    """A listing prefix (``""``, ``adapters``, ``adapters/sst2``, ``bases/tiny``) as a key."""
    if prefix is None or prefix.strip() in ("", "/"):
        return ""
    parts = prefix.strip().strip("/").split("/")
    kind = parts[0]
    if kind not in KINDS:
        raise UsageError(f"invalid prefix {prefix!r}: must start with one of {', '.join(KINDS)}")
    if len(parts) - 1 > KINDS[kind]:
        raise UsageError(f"invalid prefix {prefix!r}: too many parts for {kind}")
    for part in parts[1:]:
        check_name(part)
    return "/".join(parts)
