"""The HTTP API as a FastAPI app over an :class:`~ldp.serve.engine.Engine`-like backend.

Routes: ``GET /`` (playground), ``GET /healthz``, ``GET /adapters``, ``POST /generate`` (JSON or
server-sent events, one per denoising step), and the OpenAI shapes ``POST /v1/completions`` and
``GET /v1/models``. Every client error is a 4xx with ``{"error": {"message": <one line>, ...}}``
(the OpenAI error shape, which its client reads); validation of the body is FastAPI's (422).

The routes call the backend through four coroutines (``prepare``, ``generate``, ``describe``,
``models``) so that the same app runs inside the Serve deployment (batched) and in a plain
process (tests of the API alone, ``ldp generate``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from ldp.errors import IntegrityError, LdpError, NotFoundError, UsageError
from ldp.serve.schemas import (
    AdapterInfo,
    CompletionRequest,
    CompletionResponse,
    GenerateRequest,
    GenerateResponse,
    ModelList,
)

__all__ = ["create_api", "error_body", "one_line"]


def one_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


def _status(exc: BaseException) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, IntegrityError):
        return 502  # the registry holds a damaged artifact: not the client's doing
    return 500


def create_api(backend: Any) -> FastAPI:
    """The app; ``backend`` provides ``prepare/generate/describe/models`` (see module docstring)."""
    api = FastAPI(
        title="LDP composed inference",
        description="Diffusion LM generation with task adapters mixed per request over one base.",
        version="1",
    )

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        msg = f"{where}: {first.get('msg', 'invalid request')}"
        return JSONResponse(error_body(422, one_line(msg), "invalid_request_error"), status_code=422)

    @api.exception_handler(LdpError)
    async def _ldp(request: Request, exc: LdpError):
        status = _status(exc)
        return JSONResponse(error_body(status, one_line(exc), "invalid_request_error"), status_code=status)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> str:
        return resources.files("ldp.serve").joinpath("playground.html").read_text()

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **(await backend.describe())["health"]}

    @api.get("/adapters", response_model=list[AdapterInfo])
    async def adapters() -> list[dict[str, Any]]:
        return (await backend.describe())["adapters"]

    @api.get("/v1/models", response_model=ModelList)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "ldp"}
                                           for m in await backend.models()]}

    @api.post("/generate", response_model=GenerateResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def generate(req: GenerateRequest):
        job = await backend.prepare(req.model_dump(exclude={"stream"}))
        if not req.stream:
            out = await backend.generate(job)
            return GenerateResponse(text=out.text, weights=out.weights, steps=out.steps,
                                    timings=out.timings)

        async def events():
            async for kind, payload in _stream(backend, job):
                if kind == "step":
                    k, ids, weights = payload
                    data = {"step": k, "text": backend.partial_text(ids), "weights": weights}
                elif kind == "error":
                    data = {"error": payload}
                else:
                    data = {"done": True, "text": payload.text, "weights": payload.weights,
                            "steps": payload.steps, "timings": payload.timings}
                yield f"data: {json.dumps(data)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.post("/v1/completions", response_model=CompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if len(prompts) != 1:
            raise UsageError("prompt must be one string (or a list of one)")
        model = req.model
        adapters: Any = None if model == "base" else model
        job = await backend.prepare({
            "prompt": prompts[0], "adapters": adapters, "max_new_tokens": req.max_tokens,
            "temperature": req.temperature or 0.0, "seed": req.seed or 0,
        })
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        n_prompt = len(job.prompt_ids)
        if not req.stream:
            out = await backend.generate(job)
            text, reason = _apply_stop(out.text, stops)
            return {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(out.ids),
                              "total_tokens": n_prompt + len(out.ids)}}

        async def chunks():
            async for kind, payload in _stream(backend, job):
                if kind != "done":
                    continue  # a diffusion LM's text is final only at the end: one chunk
                text, reason = _apply_stop(payload.text, stops)
                chunk = {"id": cid, "object": "text_completion", "created": created, "model": model,
                         "choices": [{"text": text, "index": 0, "logprobs": None,
                                      "finish_reason": reason}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return api


def _apply_stop(text: str, stops: list[str]) -> tuple[str, str]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], "stop") if cut >= 0 else (text, "length")


async def _stream(backend: Any, job: Any):
    """Yield ``("step", (k, ids, weights))`` per denoising step, then ``("done", Output)``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    job.on_step = lambda k, ids, w: loop.call_soon_threadsafe(queue.put_nowait, ("step", (k, ids, w)))
    task = asyncio.ensure_future(backend.generate(job))
    task.add_done_callback(lambda _t: loop.call_soon_threadsafe(queue.put_nowait, ("end", None)))
    while True:
        kind, payload = await queue.get()
        if kind == "end":
            break
        yield kind, payload
    if task.exception() is not None:
        yield "error", one_line(task.exception())
    else:
        yield "done", task.result()
