"""What a version folder of each kind may hold: the check behind ``ldp registry publish``.

A registry is shared: whatever is published is pulled by jobs and Serve replicas on other
machines. So a manual publish accepts only the files LDP itself writes for that kind, in formats
that carry no code: weights as ``*.safetensors`` (never pickles such as ``*.bin``/``*.pt``),
configs and metrics as JSON/YAML, tokenizer files, text. Hidden files, sub-folders of unknown
purpose and anything else are refused unless the caller forces it.

=========  ====================================================================================
kind       required
=========  ====================================================================================
adapters   ``adapter_config.json`` and at least one ``*.safetensors``
bases      ``config.json`` and at least one ``*.safetensors``
others     at least one file
=========  ====================================================================================
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ALLOWED_SUFFIXES", "layout_problems"]

ALLOWED_SUFFIXES = (".safetensors", ".json", ".yaml", ".yml", ".txt", ".md", ".model", ".jsonl")
"""File endings a version folder may hold (``.model``: a sentencepiece tokenizer)."""

_REQUIRED = {
    "adapters": ("adapter_config.json",),
    "bases": ("config.json",),
}
_RESERVED = {"manifest.json", "_claim.json"}


def layout_problems(kind: str, path: str | Path) -> list[str]:
    """Why ``path`` (a folder or a single file) is not a ``kind`` version; empty when it is."""
    path = Path(path)
    if path.is_file():
        files = [path]
        root = path.parent
    elif path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return [f"{path}: no such file or folder"]
    if not files:
        return [f"{path}: nothing to publish"]
    problems = []
    names = set()
    for f in files:
        rel = f.relative_to(root).as_posix()
        names.add(rel)
        if any(part.startswith(".") for part in Path(rel).parts):
            problems.append(f"{rel}: hidden file")
        elif rel in _RESERVED:
            problems.append(f"{rel}: written by the registry itself")
        elif not rel.endswith(ALLOWED_SUFFIXES):
            problems.append(f"{rel}: not part of the {kind} layout (allowed: {' '.join(ALLOWED_SUFFIXES)})")
    for required in _REQUIRED.get(kind, ()):
        if required not in names:
            problems.append(f"{required}: missing (a {kind} version needs it)")
    if kind in _REQUIRED and not any(n.endswith(".safetensors") for n in names):
        problems.append(f"no *.safetensors weights (a {kind} version needs them)")
    return problems
