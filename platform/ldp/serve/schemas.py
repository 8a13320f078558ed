"""Request and response bodies of the HTTP API (pydantic models: FastAPI validates and documents
them in the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AdapterInfo",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "GenerateRequest",
    "GenerateResponse",
    "ModelCard",
    "ModelList",
]

Mix = Union[str, dict[str, float]]
"""``"auto"``, one reference or task name, or ``{reference_or_task: weight}``."""


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=20000, description="Instruction / prompt text.")
    input: str | None = Field(None, max_length=20000, description="Input appended after the prompt.")
    adapters: Mix | None = Field(
        None,
        description='"auto" (the bundle\'s router), an adapter reference or task name, or '
        '{reference_or_task: weight}; weights >= 0 with a positive sum (normalised). '
        "Omitted: the base alone.",
    )
    bundle: str | None = Field(None, description="Bundle reference for \"auto\" (default: the server's).")
    steps: int | None = Field(None, ge=1, description="Denoising steps (default: 4 per token, at most T).")
    max_new_tokens: int | None = Field(None, ge=1, description="Answer length in tokens.")
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    threshold: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Parallel decoding: reveal every token at least this confident per step.",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1)
    stream: bool = Field(False, description="Server-sent events: one per denoising step.")


class GenerateResponse(BaseModel):
    text: str
    weights: dict[str, float]
    steps: int
    timings: dict[str, float]


class AdapterInfo(BaseModel):
    ref: str
    task: str
    method: str
    loaded: bool
    composable: bool


class CompletionRequest(BaseModel):
    """The OpenAI ``/v1/completions`` request (fields this server does not use are accepted)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(..., min_length=1, description='An adapter reference or task, a bundle, "auto" or "base".')
    prompt: Union[str, list[str]] = Field(...)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=10.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: dict[str, int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "ldp"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
