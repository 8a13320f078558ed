"""Loading a task split as raw rows: a local mirror, an ``s3://`` (any fsspec) mirror, or the hub.

Where data comes from (``data_dir``):

- ``None``: ``LDP_DATA_DIR`` if set (:func:`ldp.paths.default_data_dir`), else the hub;
- ``"hub"``: always the Hugging Face hub, ``datasets.load_dataset(id, config, split=...)`` with
  the spec's split expression (e.g. wikibio's ``val``, agnews' ``train[95%:]``);
- a folder or fsspec URL: a mirror laid out as ``<data_dir>/<task>/<split>.jsonl`` (or
  ``.parquet``), rows with the hub dataset's own field names, our split names
  (``train``/``validation``/``test``). Remote mirror files are copied into the LDP cache through
  fsspec (``s3://`` endpoint from ``LDP_S3_ENDPOINT_URL``; credentials the usual AWS way) and then
  read exactly like local ones.

Either way the result is a ``datasets.Dataset`` with the same columns, so formatting
(:meth:`ldp.data.tasks.TaskSpec.to_example`) does not care where rows came from. A mirror never
falls back to the hub silently: missing data is a :class:`~ldp.errors.NotFoundError` naming the
places looked at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from ldp import paths
from ldp.data.tasks import SPLITS, Example, TaskSpec, get_task
from ldp.errors import NotFoundError, UsageError

__all__ = [
    "HUB",
    "MIRROR_SUFFIXES",
    "count_rows",
    "load_examples",
    "load_split",
    "mirror_file",
    "resolve_data_dir",
    "storage_options",
]

HUB = "hub"
"""``data_dir`` value that forces the hub even when ``LDP_DATA_DIR`` is set."""
MIRROR_SUFFIXES = (".jsonl", ".parquet")
"""Mirror file formats, in lookup order."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    """``data_dir`` -> a mirror location (path or URL), or None for the hub."""
    if data_dir is None:
        data_dir = paths.default_data_dir()
    if data_dir is None or str(data_dir) == HUB:
        return None
    return str(data_dir)


def storage_options(url: str) -> dict[str, Any]:
    """fsspec storage options for ``url``: the S3 endpoint from ``LDP_S3_ENDPOINT_URL``."""
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("LDP_S3_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> Path:
    return Path(location.removeprefix("file://"))


def _check_split(spec: TaskSpec, split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r} for task {spec.name}; use one of {', '.join(SPLITS)}")


def _candidates(location: str, task: str, split: str) -> list[str]:
    base = location.rstrip("/")
    return [f"{base}/{task}/{split}{suffix}" for suffix in MIRROR_SUFFIXES]


def mirror_file(task: str | TaskSpec, split: str, data_dir: str | os.PathLike) -> str | None:
    """The mirror file holding ``task``/``split`` under ``data_dir`` (path or URL), or None.

    Raises :class:`NotFoundError` when a local ``data_dir`` does not exist at all.
    """
    spec = get_task(task)
    _check_split(spec, split)
    location = str(data_dir)
    if _is_url(location):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(location, **storage_options(location))
        for url in _candidates(location, spec.name, split):
            if fs.exists(url):
                return url
        return None
    root = _local(location)
    if not root.is_dir():
        raise NotFoundError(f"data dir {root} does not exist (set --data-dir or LDP_DATA_DIR to a mirror)")
    for candidate in _candidates(str(root), spec.name, split):
        if Path(candidate).is_file():
            return candidate
    return None


def count_rows(task: str | TaskSpec, split: str, data_dir: str | os.PathLike) -> int | None:
    """Number of rows of ``task``/``split`` in the mirror (None when the file is missing)."""
    found = mirror_file(task, split, data_dir)
    if found is None:
        return None
    import fsspec

    with fsspec.open(found, "rb", **storage_options(found)) as fh:
        if found.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(fh).metadata.num_rows
        return sum(1 for line in fh if line.strip())


def load_split(
    task: str | TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
):
    """Raw rows of ``task``/``split`` as a ``datasets.Dataset`` (hub field names).

    ``limit`` keeps the first ``limit`` rows. ``cache_dir``: where ``datasets`` keeps its Arrow
    files (default: the LDP cache for mirrors, ``datasets``' own cache for the hub).
    """
    spec = get_task(task)
    _check_split(spec, split)
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be >= 0, got {limit}")
    location = resolve_data_dir(data_dir)
    if location is None:
        ds = _load_hub(spec, split, cache_dir)
    else:
        ds = _load_mirror(spec, split, location, cache_dir)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return ds


def load_examples(
    task: str | TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    *,
    unique_groups: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> list[Example]:
    """Formatted examples of ``task``/``split``.

    For tasks with ``group_by`` (CommonGen: one row per reference), every example carries the
    pooled references of its group; ``unique_groups=True`` keeps one example per group, which is
    what evaluation wants (one prediction per concept set, scored against all its references).
    """
    spec = get_task(task)
    rows = load_split(spec, split, data_dir, limit, cache_dir=cache_dir)
    examples = [spec.to_example(row, i) for i, row in enumerate(rows)]
    if spec.group_by is None:
        return examples
    keys = [spec.group_key(row) for row in rows]
    pooled: dict[str, list[str]] = {}
    for key, ex in zip(keys, examples):
        refs = pooled.setdefault(key, [])
        refs.extend(r for r in ex.references if r not in refs)
    out, seen = [], set()
    for key, ex in zip(keys, examples):
        if unique_groups and key in seen:
            continue
        seen.add(key)
        out.append(dataclasses.replace(ex, references=list(pooled[key])))
    return out


# -- sources -------------------------------------------------------------------------------------


def _load_hub(spec: TaskSpec, split: str, cache_dir):
    import datasets
    from datasets.exceptions import DatasetsError

    hub_split = spec.hub_split(split)
    where = spec.dataset + (f" ({spec.config})" if spec.config else "")
    try:
        ds = datasets.load_dataset(
            spec.dataset,
            spec.config,
            split=hub_split,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except (OSError, ValueError, DatasetsError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotFoundError(
            f"could not load task {spec.name} split {split} from the hub "
            f"({where}, split {hub_split!r}): {reason}"
        ) from None
    return ds


def _load_mirror(spec: TaskSpec, split: str, location: str, cache_dir):
    found = mirror_file(spec, split, location)
    if found is None:
        looked = " or ".join(_candidates(location.rstrip("/"), spec.name, split))
        raise NotFoundError(
            f"no {split} data for task {spec.name} in the data mirror: looked for {looked}"
        )
    cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir("datasets")
    if _is_url(found):
        found = str(_fetch_remote(found, cache))
    return _read_file(found, cache)


def _fetch_remote(url: str, cache: Path) -> Path:
    """Copy a remote mirror file into the cache, keyed by its URL and fsspec's version key."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    version = fs.ukey(path)
    digest = hashlib.sha256(f"{url}\n{version}".encode()).hexdigest()[:16]
    local = cache / "mirror" / digest / url.rsplit("/", 1)[-1]
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        fs.get(path, str(tmp))
        tmp.replace(local)
    return local


def _read_file(path: str, cache: Path):
    import datasets
    from datasets.exceptions import DatasetsError

    builder = "parquet" if path.endswith(".parquet") else "json"
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=str(cache))
    except (OSError, ValueError, DatasetsError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read {path}: {reason}") from None
