"""Task specs for the 15-task suite: data in ``tasks.yaml``, typed frozen dataclasses here.

A :class:`TaskSpec` says where a task's data lives (hub id, config, split names), how a raw row
(with the hub dataset's own field names) becomes an :class:`Example` (prompt, target, references,
label), how long generations may be and which metrics score it. Specs are validated when the YAML
is loaded, so a bad template or an unknown metric fails before any data is read.

Prompts follow one Super-NaturalInstructions style layout::

    Definition: In this task, you are given a sentence from a movie review. Your task is ...

    Sentence: a sometimes tedious film .
    Sentiment:

and the target is the answer text (a verbaliser for classification-style tasks).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from ldp import config as _config
from ldp.errors import NotFoundError, UsageError

__all__ = [
    "FAMILIES",
    "METRICS",
    "SPLITS",
    "Example",
    "FieldSpec",
    "LabelSpec",
    "TaskSpec",
    "all_tasks",
    "get_task",
    "load_task_specs",
    "resolve_path",
    "task_names",
]

Family = Literal["classification", "qa", "math", "summarization", "translation", "data-to-text"]
FAMILIES: tuple[str, ...] = Family.__args__  # type: ignore[attr-defined]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Metric names a spec may list; ldp.data.metrics computes each of them.
METRICS: tuple[str, ...] = (
    "accuracy", "macro_f1", "exact_match", "f1", "rougeL", "bleu", "chrf++", "cider"
)
_LABEL_METRICS = {"accuracy", "macro_f1"}
_QA_METRICS = {"exact_match", "f1"}
_HUB_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]+(\[[^\[\]]+\])?$")
_TABLE_SEP = " | "


@dataclasses.dataclass(frozen=True)
class Example:
    """One formatted row: what the model sees, what it should produce, what it is scored against."""

    prompt: str
    """Instruction + input, rendered from the task's prompt template."""
    target: str
    """The training target (gold answer text); empty for unlabelled rows."""
    references: list[str]
    """Evaluation references (several for QA aliases or CommonGen); empty when unlabelled."""
    label: int | None
    """Gold label id for classification-style tasks, else None."""
    id: str
    """The row's id field, or ``<task>-<row index>`` when the dataset has none."""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """How one template variable is read from a raw row."""

    path: str
    """Dotted path into the row (``translation.de``); numeric segments index lists (``answers.text.0``)."""
    join: str = ", "
    """Separator used when the value is a list of strings."""
    format: Literal["text", "table"] = "text"
    """``table``: a WikiBio-style ``{column_header, content}`` mapping linearised as
    ``header: content | header: content`` (underscores in headers become spaces)."""
    remove: str | None = None
    """A regular expression whose matches are deleted from the text (e.g. GSM8K's ``<<calc>>``)."""

    def __post_init__(self) -> None:
        _check_path(self.path)
        if self.remove is not None:
            try:
                re.compile(self.remove)
            except re.error as exc:
                raise ValueError(f"remove: bad regular expression {self.remove!r} ({exc})") from None

    def render(self, row: Mapping[str, Any]) -> str:
        value = resolve_path(row, self.path)
        if self.format == "table":
            text = _linearise_table(value, self.path)
        else:
            text = _to_text(value, self.join)
        if self.remove is not None:
            text = re.sub(self.remove, "", text)
        return text.strip()


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """Label field and verbalisers (one per label id) of a classification-style task."""

    field: str
    """Dotted path of the label: an int id, a bool (False -> 0, True -> 1) or a verbaliser string."""
    verbalizers: tuple[str, ...]
    """Answer text per label id; predictions are mapped back by :meth:`TaskSpec.parse_label`."""

    def __post_init__(self) -> None:
        _check_path(self.field)
        if len(self.verbalizers) < 2:
            raise ValueError("label.verbalizers needs at least two labels")
        norm = [_norm_label(v) for v in self.verbalizers]
        if any(not v for v in norm):
            raise ValueError("label.verbalizers must be non-empty")
        if len(set(norm)) != len(norm):
            raise ValueError(f"label.verbalizers are not distinct: {list(self.verbalizers)}")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of the suite (see ``tasks.yaml`` for the field meanings in context)."""

    name: str
    """Task key, e.g. ``sst2``."""
    family: Family
    """classification | qa | math | summarization | translation | data-to-text."""
    dataset: str
    """Hugging Face hub dataset id (``load_dataset``'s ``path``)."""
    config: str | None
    """Hub config name, or None for the default one."""
    splits: dict[str, str]
    """``train``/``validation``/``test`` -> the hub's split expression (e.g. ``val``, ``train[95%:]``)."""
    fields: dict[str, FieldSpec]
    """Template variable -> where it is read from in a raw row."""
    instruction: str
    """Super-NaturalInstructions style task definition."""
    prompt: str
    """``str.format`` template over ``{instruction}`` and the field variables."""
    target: str
    """``str.format`` template over the field variables and ``{label}``."""
    max_new_tokens: int
    """Generation budget in tokens (also the default target truncation)."""
    metrics: tuple[str, ...]
    """Metric names (from :data:`METRICS`)."""
    primary_metric: str
    """The metric that ranks runs; one of ``metrics``."""
    max_prompt_tokens: int = 256
    """Default prompt budget in tokens when encoding for SFT."""
    label: LabelSpec | None = None
    """Label field and verbalisers for classification-style tasks."""
    references: tuple[str, ...] = ()
    """Dotted paths of the evaluation references; empty: the rendered target."""
    id_field: str | None = None
    """Dotted path of the row id; None: the row index."""
    group_by: str | None = None
    """Rows with the same value here form one evaluation item (references pooled)."""
    notes: str = ""
    """Caveats: split mapping, approximations."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"task name {self.name!r} must be lowercase letters, digits, _")
        if set(self.splits) != set(SPLITS):
            raise ValueError(f"splits must map exactly {', '.join(SPLITS)}; got {sorted(self.splits)}")
        for ours, hub in self.splits.items():
            if not _HUB_SPLIT_RE.match(hub):
                raise ValueError(f"splits.{ours}: {hub!r} is not a hub split expression")
        for var in self.fields:
            if not var.isidentifier() or var in ("instruction", "label"):
                raise ValueError(f"fields: {var!r} is not a usable template variable name")
        if self.family == "classification" and self.label is None:
            raise ValueError("a classification task needs a label with verbalizers")
        if not self.instruction.strip():
            raise ValueError("instruction is empty")
        prompt_vars = _template_vars(self.prompt, "prompt")
        target_vars = _template_vars(self.target, "target")
        if "instruction" not in prompt_vars:
            raise ValueError("prompt must contain {instruction}")
        known = set(self.fields) | {"instruction"} | ({"label"} if self.label else set())
        for where, used in (("prompt", prompt_vars), ("target", target_vars)):
            unknown = sorted(set(used) - known)
            if unknown:
                raise ValueError(f"{where} uses unknown variable {{{unknown[0]}}}; known: {sorted(known)}")
        if self.label is not None:
            if "label" not in target_vars:
                raise ValueError("a task with a label must use {label} in its target")
            if self.references:
                raise ValueError("a task with a label takes its reference from the label")
        for path in (*self.references, self.id_field, self.group_by):
            if path is not None:
                _check_path(path)
        if self.max_new_tokens <= 0 or self.max_prompt_tokens <= 0:
            raise ValueError("max_new_tokens and max_prompt_tokens must be > 0")
        if not self.metrics:
            raise ValueError("metrics is empty")
        for metric in self.metrics:
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
            if metric in _LABEL_METRICS and self.label is None:
                raise ValueError(f"metric {metric} needs a label with verbalizers")
            if metric in _QA_METRICS and self.family not in ("qa", "math"):
                raise ValueError(f"metric {metric} is for qa/math tasks, not {self.family}")
        if self.family == "math" and "f1" in self.metrics:
            raise ValueError("math tasks are scored by exact match of the final number only")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("metrics has duplicates")
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not in metrics")
        # Read-only views: a spec is shared by every caller.
        object.__setattr__(self, "splits", MappingProxyType(dict(self.splits)))
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    # -- derived views -------------------------------------------------------------------------

    @property
    def metrics_ordered(self) -> tuple[str, ...]:
        """Metric names, primary first."""
        return (self.primary_metric, *(m for m in self.metrics if m != self.primary_metric))

    @property
    def num_labels(self) -> int | None:
        return len(self.label.verbalizers) if self.label else None

    def hub_split(self, split: str) -> str:
        """Our split name -> the hub's split expression."""
        if split not in self.splits:
            raise UsageError(f"unknown split {split!r} for task {self.name}; use one of {', '.join(SPLITS)}")
        return self.splits[split]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict (the inverse of the YAML entry, with ``name``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["splits"] = dict(self.splits)
        out["fields"] = {k: _config.to_dict(v) for k, v in self.fields.items()}
        return _config.to_dict(out)

    # -- formatting ----------------------------------------------------------------------------

    def label_of(self, row: Mapping[str, Any]) -> int | None:
        """Gold label id of a raw row; None when the row is unlabelled (e.g. hub label -1)."""
        if self.label is None:
            return None
        value = resolve_path(row, self.label.field)
        n = len(self.label.verbalizers)
        if value is None:
            return None
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            if 0 <= value < n:
                return value
            if value < 0:
                return None
        if isinstance(value, str):
            for i, verb in enumerate(self.label.verbalizers):
                if _norm_label(verb) == _norm_label(value):
                    return i
        raise UsageError(f"task {self.name}: label {value!r} at {self.label.field!r} is not one of 0..{n - 1}")

    def to_example(self, row: Mapping[str, Any], index: int | None = None) -> Example:
        """Format one raw row (hub field names) into an :class:`Example`."""
        values = {var: spec.render(row) for var, spec in self.fields.items()}
        values["instruction"] = " ".join(self.instruction.split())
        label = self.label_of(row)
        if self.label is not None:
            values["label"] = self.label.verbalizers[label] if label is not None else ""
        prompt = self.prompt.format_map(values).strip()
        target = self.target.format_map(values).strip()
        if self.label is not None:
            references = [values["label"]] if label is not None else []
        elif self.references:
            references = _unique(
                text for path in self.references for text in _texts(resolve_path(row, path))
            )
        else:
            references = [target] if target else []
        if self.id_field is not None:
            ident = str(resolve_path(row, self.id_field))
        else:
            ident = f"{self.name}-{index}" if index is not None else self.name
        return Example(prompt=prompt, target=target, references=references, label=label, id=ident)

    def group_key(self, row: Mapping[str, Any]) -> str | None:
        """The evaluation-item key of a row (``group_by``), or None for one item per row."""
        return None if self.group_by is None else str(resolve_path(row, self.group_by))

    def parse_label(self, prediction: str) -> int:
        """Map generated text to a label id via the verbalisers; -1 when none matches.

        After lowercasing and collapsing whitespace: a prediction equal to a verbaliser (ignoring
        surrounding punctuation) is that label; otherwise the verbaliser that occurs first as a
        whole word (longest on a tie) wins, so ``"Answer: positive."`` is ``positive``.
        """
        if self.label is None:
            raise UsageError(f"task {self.name} has no label verbalizers")
        text = _norm_label(prediction)
        verbs = [_norm_label(v) for v in self.label.verbalizers]
        if text in verbs:
            return verbs.index(text)
        best: tuple[int, int, int] | None = None  # (position, -length, label)
        for i, verb in enumerate(verbs):
            m = re.search(r"(?<!\w)" + re.escape(verb) + r"(?!\w)", text)
            if m and (best is None or (m.start(), -len(verb)) < best[:2]):
                best = (m.start(), -len(verb), i)
        return best[2] if best is not None else -1


# -- loading the shipped specs -------------------------------------------------------------------


def load_task_specs(path: str | Path | None = None) -> dict[str, TaskSpec]:
    """Read and validate a tasks YAML file (default: the shipped ``tasks.yaml``), in file order."""
    if path is None:
        text = resources.files("ldp.data").joinpath("tasks.yaml").read_text(encoding="utf-8")
        where = "tasks.yaml"
    else:
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"task spec file not found: {path}")
        text, where = path.read_text(encoding="utf-8"), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{where}: expected a mapping of task name -> spec")
    specs: dict[str, TaskSpec] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: task {name!r} must be a mapping")
        entry = dict(entry)
        if "name" in entry and entry["name"] != name:
            raise UsageError(f"{where}: task {name!r} has name {entry['name']!r}")
        entry["name"] = str(name)
        if isinstance(entry.get("fields"), dict):
            entry["fields"] = {
                k: {"path": v} if isinstance(v, str) else v for k, v in entry["fields"].items()
            }
        try:
            specs[str(name)] = _config.build(TaskSpec, entry, where=f"{name}.")
        except UsageError as exc:
            message = str(exc).removeprefix(f"invalid config {name}: ")
            raise UsageError(f"{where}: task {name}: {message}") from None
    return specs


@functools.lru_cache(maxsize=1)
def _shipped() -> dict[str, TaskSpec]:
    return load_task_specs()


def all_tasks() -> tuple[TaskSpec, ...]:
    """The shipped task specs in suite order."""
    return tuple(_shipped().values())


def task_names() -> tuple[str, ...]:
    return tuple(_shipped())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The spec of task ``name`` (a :class:`TaskSpec` is passed through)."""
    if isinstance(name, TaskSpec):
        return name
    specs = _shipped()
    if name not in specs:
        raise UsageError(f"unknown task {name!r}; known tasks: {', '.join(specs)}")
    return specs[name]


# -- helpers -------------------------------------------------------------------------------------


def resolve_path(row: Any, path: str) -> Any:
    """Value at dotted ``path`` in a nested row.

    Mapping keys by name; a numeric segment indexes a list; a name applied to a list of mappings
    maps over it (``answers.text`` on ``[{"text": ..}, ..]``).
    """
    node = row
    for i, seg in enumerate(path.split(".")):
        try:
            if isinstance(node, Mapping):
                node = node[seg]
            elif isinstance(node, Sequence) and not isinstance(node, str):
                if seg.isdigit():
                    node = node[int(seg)]
                else:
                    node = [resolve_path(item, seg) for item in node]
            else:
                raise KeyError(seg)
        except (KeyError, IndexError):
            here = ".".join(path.split(".")[: i + 1])
            keys = f" (has: {', '.join(map(str, node))})" if isinstance(node, Mapping) else ""
            raise UsageError(f"row has no field {here!r}{keys}") from None
    return node


def _check_path(path: str) -> None:
    if not path or any(not seg for seg in path.split(".")):
        raise ValueError(f"bad field path {path!r}")


def _template_vars(template: str, where: str) -> list[str]:
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{where} template: {exc}") from None
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(f"{where} template: use plain {{name}} placeholders, got {{{name}}}")
        names.append(name)
    return names


def _to_text(value: Any, join: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return join.join(_to_text(v, join) for v in value)
    return str(value)


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _texts(v)]
    return [str(value)]


def _unique(texts: Any) -> list[str]:
    out: list[str] = []
    for text in texts:
        text = text.strip()
        if text and text not in out:
            out.append(text)
    return out


def _linearise_table(value: Any, path: str) -> str:
    if not isinstance(value, Mapping) or "column_header" not in value or "content" not in value:
        raise UsageError(f"field {path!r} is not a table with column_header and content")
    headers, cells = value["column_header"], value["content"]
    if len(headers) != len(cells):
        raise UsageError(f"field {path!r}: {len(headers)} headers but {len(cells)} cells")
    pairs = (f"{h.replace('_', ' ').strip()}: {c.strip()}" for h, c in zip(headers, cells))
    return _TABLE_SEP.join(p for p in pairs if not p.endswith(":"))


def _norm_label(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" \t.,;:!?\"'()[]")
