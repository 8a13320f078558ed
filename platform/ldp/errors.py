"""User-facing errors.

Library code raises these with one clear line of text; the CLI turns them into that line on
stderr and an exit code, never a traceback.
"""

from __future__ import annotations

__all__ = ["LdpError", "UsageError", "NotFoundError", "IntegrityError"]


class LdpError(Exception):
    """A failure the user can act on (exit code 1)."""

    exit_code = 1


class UsageError(LdpError):
    """Bad input: an unknown option value, an invalid config or reference (exit code 2)."""

    exit_code = 2


class NotFoundError(LdpError):
    """A referenced thing (registry version, data file, task) does not exist (exit code 1)."""


class IntegrityError(LdpError):
    """Stored data failed verification: checksum or size mismatch (exit code 1)."""
