"""The OpenAI-compatible HTTP API (FastAPI): routes, request parsing, limits and errors; what it
sends back is shaped by app/serve/output.py.

A thin layer over the engine interface and the task records, like the CLI: a route parses the
body, app/serve/planner.py decides in one call what it runs (the adapter its `model` names, the
task's prompt and settings), and the answer is one app.plan.answer job on the single engine queue
(app/serve/queue.py); on an engine that batches (llama.cpp), the jobs run side by side and its
scheduler interleaves them.
Errors always come back in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import EngineError
from app.plan import answer
from app.serve import catalog
from app.serve.output import ApiError, Output
from app.serve.planner import Planned, plan_chat, plan_completion, target_for
from app.serve.queue import EngineQueue, Executor, QueueFull
from app.tasks import GenerationSettings

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """How the server listens and what it accepts."""

    host: str = "127.0.0.1"  # loopback only unless asked; any other address needs `api_key`
    port: int = 8000  # 0: a free port
    api_key: str | None = None  # clients send `Authorization: Bearer KEY`; None: no check (loopback only)
    max_pending: int = 16  # requests queued or running; one more is refused with 503 + Retry-After
    max_request_bytes: int = 1 << 20  # larger request bodies get 413
    max_tokens_limit: int = 4096  # a request asking for more gets 400

    def __post_init__(self):
        if self.host not in LOOPBACK and not self.api_key:
            raise ValueError(f"serving on {self.host} makes the model reachable from other machines; "
                             "set an API key (--api-key KEY) or serve on 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0-65535, got {self.port}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {self.max_pending}")


@dataclass
class Backend:
    """Where requests go: the engine now (None while a model loads) and the engine thread."""

    engine: Callable[[], Any]
    executor: Executor


# -- request bodies ---------------------------------------------------------------------------
class _Body(BaseModel):
    # Unknown fields (user, logit_bias, frequency_penalty, ...) are accepted and ignored, as most
    # OpenAI-compatible servers do: editors send them by default.
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = 1
    stream: bool = False
    stream_options: dict | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    options: dict[str, str] | None = None  # LoRA Desk extension: task options, e.g. {"length": "short"}


class CompletionBody(_Body):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None


def _parse(model_cls, data: dict):
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, f"invalid parameter {param}: {err['msg']}", param=param, code="invalid_value") from None


def generation_job(backend: Backend, target: catalog.Target, prompt, settings: GenerationSettings):
    """The engine job of one request: its answer under its own adapter. The engine's active
    adapter, which the app's tabs use, is left as it was."""

    def job(cancel):
        engine = backend.engine()
        if engine is None:
            raise ApiError(503, "the model is loading; retry in a moment", "server_error", code="model_loading")
        yield from answer(engine, target.adapter, prompt, settings, cancel, folder=target.folder)

    return job


# -- the app ----------------------------------------------------------------------------------
def create_app(backend: Backend, config: ServeConfig | None = None) -> FastAPI:
    """The server for `backend`: the routes of `router`, which find the backend, the config and the
    engine queue on `request.app.state`."""
    config = config or ServeConfig()
    app = FastAPI(title="LoRA Desk", description="OpenAI-compatible API over one model and its task adapters",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = EngineQueue(backend.executor, max_pending=config.max_pending)
    app.state.config, app.state.backend = config, backend
    if config.host in LOOPBACK:
        app.add_middleware(_LoopbackHostOnly)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
    app.include_router(router)
    return app


async def _api_error(_request, e: ApiError):
    return e.response()


async def _http_error(_request, e: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    return ApiError(e.status_code, str(e.detail), code=code).response()


async def _bug(_request, e: Exception):
    log.error("server error: %s", e, exc_info=(type(e), e, e.__traceback__))
    return ApiError(500, f"internal error ({type(e).__name__}); see the LoRA Desk log", "server_error").response()


def check_key(request: Request) -> None:
    config = request.app.state.config
    if not config.api_key:
        return
    got = request.headers.get("authorization", "")
    token = got[7:] if got.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), config.api_key.encode()):
        raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                       param=None, code="invalid_api_key")


async def read_json(request: Request) -> dict:
    limit = request.app.state.config.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > limit:
            raise _too_large(limit)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def engine_or_503(request: Request):
    engine = request.app.state.backend.engine()
    if engine is None or engine.model_info is None:
        raise ApiError(503, "the model is loading; retry in a moment", "server_error", code="model_loading",
                       headers={"Retry-After": "5"})
    return engine


# -- the routes -------------------------------------------------------------------------------
router = APIRouter()


@router.get("/health")
async def health(request: Request):
    engine, queue = request.app.state.backend.engine(), request.app.state.queue
    return {"status": "ok" if engine is not None and engine.model_info is not None else "loading",
            "model": str(engine.model_info.ref) if engine is not None and engine.model_info else None,
            "engine": getattr(engine, "kind", None), "pending": queue.pending, "served": queue.served}


@router.get("/v1/models")
async def list_models(request: Request):
    check_key(request)
    return {"object": "list", "data": catalog.models(engine_or_503(request))}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    check_key(request)
    engine = engine_or_503(request)
    target_for(model_id, engine)
    listed = {m["id"]: m for m in catalog.models(engine)}
    return listed.get(model_id) or {"id": model_id, "object": "model", "owned_by": "loradesk", "parent": "base"}


@router.post("/v1/chat/completions")
async def chat(request: Request):
    check_key(request)
    body = _parse(ChatBody, await read_json(request))
    todo = plan_chat(body, lambda: engine_or_503(request), request.app.state.config.max_tokens_limit)
    return await _answer(request, body, todo, chat=True)


@router.post("/v1/completions")
async def completions(request: Request):
    check_key(request)
    body = _parse(CompletionBody, await read_json(request))
    todo = plan_completion(body, lambda: engine_or_503(request), request.app.state.config.max_tokens_limit)
    return await _answer(request, body, todo, chat=False)


async def _answer(request: Request, body, todo: Planned, chat: bool):
    backend, queue, target = request.app.state.backend, request.app.state.queue, todo.target
    try:
        ticket, chunks = queue.submit(generation_job(backend, target, todo.prompt, todo.settings), label=target.id,
                                      side_by_side=getattr(backend.engine(), "max_batch", 1) > 1)
    except QueueFull as e:
        raise ApiError(503, str(e), "server_error", code="queue_full",
                       headers={"Retry-After": str(e.retry_after)}) from None
    out = Output(chat, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], target.id,
                 _fingerprint(backend), bool((body.stream_options or {}).get("include_usage")))
    streaming = False
    try:
        # Wait for the first piece (queue time + prompt) watching for the client leaving; a
        # request that fails before any text gets a real HTTP error status, stream or not.
        first = await _until_disconnect(request, ticket, chunks.__anext__())
        if first is None:  # the client is gone: nobody reads an answer
            return JSONResponse({}, status_code=499)
        if not body.stream:
            rest = [] if first.finish_reason else await _until_disconnect(request, ticket, _collect(chunks))
            if rest is None:
                return JSONResponse({}, status_code=499)
            return out.whole([first, *rest])
        streaming = True
    finally:
        if not streaming:
            await chunks.aclose()

    async def close() -> None:  # after the response, however it ended (also if never started)
        ticket.cancel.set()
        await chunks.aclose()

    return StreamingResponse(out.events(first, chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(close))


class _LoopbackHostOnly:
    """Pure ASGI (streams and disconnects pass untouched): a web page can make a browser send
    requests to 127.0.0.1 under a name of its own (DNS rebinding), so a loopback server answers
    only to loopback names in the Host header."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host[1:host.find("]")] if host.startswith("[") else host.split(":")[0]
            if name not in LOOPBACK:
                response = ApiError(403, f"this server answers only on 127.0.0.1 / localhost, not {host!r}",
                                    code="host_not_allowed").response()
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def _fingerprint(backend: Backend) -> str:
    engine = backend.engine()
    return f"loradesk-{getattr(engine, 'kind', '?')}"


async def _collect(it) -> list:
    return [c async for c in it]


async def _until_disconnect(request: Request, ticket, awaitable):
    """Await `awaitable`, or return None if the client disconnects first (its job is cancelled,
    as it is when this handler itself is cancelled, e.g. at shutdown).
    The request body has been read, so the next ASGI message can only be the disconnect."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        ticket.cancel.set()
        await _settle(work, watch)
        raise
    if work in done:
        await _settle(watch)
        try:
            return work.result()
        except StopAsyncIteration:
            raise ApiError(500, "the engine ended the answer without any output", "server_error") from None
        except (EngineError, ValueError) as e:  # the engine's message says what to change
            raise ApiError(400, str(e), code="engine_error") from None
    ticket.cancel.set()
    await _settle(work)  # let the iterator unwind before anyone closes it
    return None


async def _settle(*tasks) -> None:
    """Cancel `tasks` and wait until they have ended."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - they were cancelled on purpose
            pass


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
