"""User-facing errors.

Library code raises these with one clear line of text; the CLI turns them into that line on
stderr and an exit code, never a traceback.
"""

from __future__ import annotations

__all__ = ["LdpError", "UsageError", "NotFoundError", "IntegrityError", "first_line"]


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


def first_line(error: BaseException | str, *, with_type: bool = False) -> str:
    """The first non-empty line of an exception's (or a text's) message: what the CLI prints.

    An exception with an empty message gives its class name; ``with_type`` prefixes the class
    name (``OSError: ...``) for errors that are not LDP's own, whose type tells the reader more.
    """
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    if isinstance(error, BaseException):
        name = type(error).__name__
        if not line:
            return name
        if with_type and not isinstance(error, LdpError):
            return f"{name}: {line}"
    return line
