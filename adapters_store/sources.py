"""What a publisher hands over: a folder, files, or ``{name: path | bytes}``; checked up front.

Every name is validated (:func:`~ldp.store.manifest.check_file_name`); pickle-based files are
refused by suffix and by their leading bytes; every ``*.safetensors`` file must parse as
safetensors. All of this happens before a version number is claimed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ldp.errors import UsageError, first_line

from .manifest import MANIFEST, check_file_name

__all__ = ["Files", "Source", "collect"]

Files = str | os.PathLike | Mapping[str, str | os.PathLike | bytes] | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class Source:
    name: str  # relative name inside the version
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> IO[bytes]:
        return open(self.path, "rb") if self.path is not None else io.BytesIO(self.data or b"")


def collect(files: Files) -> list[Source]:
    """Turn the publisher's argument into checked sources, sorted by name."""
    if isinstance(files, (str, os.PathLike)):
        root = Path(files)
        if root.is_dir():
            sources = _walk(root)
        elif root.is_file():
            sources = [Source(root.name, path=root)]
        else:
            raise UsageError(f"nothing to publish: {root} does not exist")
    elif isinstance(files, Mapping):
        sources = []
        for name, value in files.items():
            if isinstance(value, (bytes, bytearray, memoryview)):
                sources.append(Source(str(name), data=bytes(value)))
            else:
                sources.append(Source(str(name), path=Path(value)))
    elif isinstance(files, Sequence):
        sources = [Source(Path(p).name, path=Path(p)) for p in files]
    else:
        raise UsageError(
            f"cannot publish {type(files).__name__}: give a folder, files or a mapping"
        )
    if not sources:
        raise UsageError("nothing to publish: no files")
    seen: set[str] = set()
    for s in sources:
        check_file_name(s.name)
        if s.name in seen:
            raise UsageError(f"file {s.name!r} given twice")
        seen.add(s.name)
        if s.path is not None and not s.path.is_file():
            raise UsageError(f"{s.path}: not a file")
        if s.name.endswith(".safetensors"):
            _check_safetensors(s)  # (its 8-byte length prefix may look like a pickle opcode)
        else:
            _refuse_pickle(s)
    return sorted(sources, key=lambda s: s.name)


def _walk(root: Path) -> list[Source]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise UsageError(
                    f"{Path(dirpath, d)}: symlinked folders are not followed; copy it in"
                )
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue  # .DS_Store, editor swap files, our own temp files
            path = Path(dirpath) / fn
            name = path.relative_to(root).as_posix()
            if name == MANIFEST:
                continue  # a pulled folder's manifest: the registry writes a new one
            out.append(Source(name, path=path))
    return out


def _head(source: Source, n: int) -> bytes:
    if source.data is not None:
        return source.data[:n]
    with open(source.path, "rb") as f:
        return f.read(n)


def _refuse_pickle(source: Source) -> None:
    head = _head(source, 2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise UsageError(
            f"refusing {source.name!r}: it is a Python pickle; store weights as .safetensors"
        )


def _check_safetensors(source: Source) -> None:
    import safetensors

    try:
        if source.data is not None:
            safetensors.deserialize(source.data)
        else:
            with safetensors.safe_open(str(source.path), framework="np") as f:
                f.keys()
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: one line
        raise UsageError(f"{source.name}: not a valid safetensors file ({first_line(exc)})") from None
