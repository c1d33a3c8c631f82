"""The OpenAI-compatible HTTP API (FastAPI): routes, request parsing, limits and errors.

A thin layer over the engine interface and the task records, like the CLI: the request's `model`
picks the adapter (app/serve/catalog.py), the task record gives the prompt and the default
decoding settings, and every generation is one job on the single engine queue (app/serve/queue.py);
on an engine that batches (llama.cpp), the jobs run side by side and its scheduler interleaves them.
Errors always come back in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.engine.base import EngineError
from app.serve import catalog
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


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


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


def _text(content, i: int) -> str:
    """A message's text: a string, or the text parts of a content list (editors send either)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{i}]: only text content is supported, got a {part.get('type')!r} part",
                           param=f"messages.{i}.content", code="invalid_value")
        parts.append(part["text"])
    return "".join(parts)


def chat_messages(body: ChatBody, target: catalog.Target) -> list[dict]:
    """The messages the engine sees. A task model runs as its tab does (system prompt, user
    template on each user turn) unless the request brings its own system message: then the
    messages go to the task's adapter unchanged."""
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content, i)}
            for i, m in enumerate(body.messages)]
    task = target.task
    if task is None or any(m["role"] == "system" for m in msgs):
        return msgs
    options = body.options or {}
    try:
        turns = [{**m, "content": task.user_message(m["content"], **options)} if m["role"] == "user" else m
                 for m in msgs]
    except ValueError as e:
        raise ApiError(400, str(e), param="options", code="invalid_value") from None
    return [{"role": "system", "content": task.system_prompt}, *turns]


def settings_for(body: _Body, target: catalog.Target, limit: int, max_tokens: int | None) -> GenerationSettings:
    """The task's generation settings (the base model: the engine defaults), overridden by the request."""
    if body.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n", code="invalid_value")
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {limit}",
                       param="max_tokens", code="invalid_value")
    stop = body.stop
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and len(stop) > 4:
        raise ApiError(400, "stop takes at most 4 strings", param="stop", code="invalid_value")
    base = target.task.generation if target.task else GenerationSettings()
    try:
        s = base.replace(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                         stop=tuple(stop) if stop is not None else None)
        return s.replace(max_tokens=min(s.max_tokens, limit))
    except ValueError as e:
        raise ApiError(400, str(e), code="invalid_value") from None


def generation_job(backend: Backend, target: catalog.Target, prompt, settings: GenerationSettings):
    """The engine job of one request: its answer under its own adapter. The engine's active
    adapter, which the app's tabs use, is left as it was."""

    def job(cancel):
        engine = backend.engine()
        if engine is None:
            raise ApiError(503, "the model is loading; retry in a moment", "server_error", code="model_loading")
        if target.folder is not None and target.adapter not in engine.adapters:
            engine.add_adapter(target.adapter, target.folder)  # stays resident for the next requests
        yield from engine.stream_generate(prompt, settings, cancel, adapter=target.adapter)

    return job


# -- the app ----------------------------------------------------------------------------------
def create_app(backend: Backend, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    app = FastAPI(title="LoRA Desk", description="OpenAI-compatible API over one model and its task adapters",
                  docs_url=None, redoc_url=None, openapi_url=None)
    queue = EngineQueue(backend.executor, max_pending=config.max_pending)
    app.state.queue, app.state.config, app.state.backend = queue, config, backend

    if config.host in LOOPBACK:
        app.add_middleware(_LoopbackHostOnly)

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return ApiError(e.status_code, str(e.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _bug(_request, e: Exception):
        log.error("server error: %s", e, exc_info=(type(e), e, e.__traceback__))
        return ApiError(500, f"internal error ({type(e).__name__}); see the LoRA Desk log", "server_error").response()

    def check_key(request: Request) -> None:
        if not config.api_key:
            return
        got = request.headers.get("authorization", "")
        token = got[7:] if got.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                           param=None, code="invalid_api_key")

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_request_bytes:
            raise _too_large(config.max_request_bytes)
        raw = bytearray()
        async for piece in request.stream():
            raw += piece
            if len(raw) > config.max_request_bytes:
                raise _too_large(config.max_request_bytes)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return data

    def engine_or_503():
        engine = backend.engine()
        if engine is None or engine.model_info is None:
            raise ApiError(503, "the model is loading; retry in a moment", "server_error", code="model_loading",
                           headers={"Retry-After": "5"})
        return engine

    def target_for(model_id: str, engine, prompt: str | None = None) -> catalog.Target:
        try:
            return catalog.resolve(model_id, engine, prompt)
        except ValueError as e:  # a malformed mix, or nothing to route
            raise ApiError(400, str(e), param="model", code="invalid_value") from None
        except KeyError:
            known = ", ".join(m["id"] for m in catalog.models(engine))
            raise ApiError(404, f"the model {model_id!r} does not exist; this server has: {known}",
                           param="model", code="model_not_found") from None

    @app.get("/health")
    async def health():
        engine = backend.engine()
        return {"status": "ok" if engine is not None and engine.model_info is not None else "loading",
                "model": str(engine.model_info.ref) if engine is not None and engine.model_info else None,
                "engine": getattr(engine, "kind", None), "pending": queue.pending, "served": queue.served}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_key(request)
        return {"object": "list", "data": catalog.models(engine_or_503())}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        check_key(request)
        engine = engine_or_503()
        target_for(model_id, engine)
        listed = {m["id"]: m for m in catalog.models(engine)}
        return listed.get(model_id) or {"id": model_id, "object": "model", "owned_by": "loradesk", "parent": "base"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request)
        body = _parse(ChatBody, await read_json(request))
        users = [_text(m.content, i) for i, m in enumerate(body.messages) if m.role == "user"]
        target = target_for(body.model, engine_or_503(), users[-1] if users else None)  # auto routes on the last
        messages = chat_messages(body, target)
        settings = settings_for(body, target, config.max_tokens_limit, body.max_completion_tokens or body.max_tokens)
        return await _answer(request, body, target, messages, settings, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request)
        body = _parse(CompletionBody, await read_json(request))
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "send one prompt per request", param="prompt", code="invalid_value")
            prompt = prompt[0]
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="prompt", code="invalid_value")
        target = target_for(body.model, engine_or_503(), prompt)
        for field, bad in (("echo", body.echo), ("logprobs", body.logprobs), ("suffix", body.suffix)):
            if bad:
                raise ApiError(400, f"{field} is not supported", param=field, code="unsupported_parameter")
        settings = settings_for(body, target, config.max_tokens_limit, body.max_tokens)
        return await _answer(request, body, target, prompt, settings, chat=False)

    async def _answer(request, body, target, prompt, settings, chat: bool):
        try:
            engine = backend.engine()
            ticket, chunks = queue.submit(generation_job(backend, target, prompt, settings), label=target.id,
                                          side_by_side=getattr(engine, "max_batch", 1) > 1)
        except QueueFull as e:
            raise ApiError(503, str(e), "server_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        out = _Output(chat, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], target.id,
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

    return app


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


@dataclass
class _Output:
    """OpenAI's response and stream-event shapes for one answer (chat or text completion)."""

    chat: bool
    id: str
    model: str
    fingerprint: str
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def _choice(self, text: str | None, finish: str | None, delta: dict | None = None) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if delta is not None:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}

    def whole(self, chunks: list) -> dict:
        last = chunks[-1]
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "system_fingerprint": self.fingerprint,
                "choices": [self._choice("".join(c.text for c in chunks), last.finish_reason)],
                "usage": _usage(last)}

    def _event(self, choices: list, usage: dict | None = None) -> str:
        payload = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                   "created": self.created, "model": self.model, "system_fingerprint": self.fingerprint,
                   "choices": choices}
        if self.include_usage:  # null on every chunk but the last, as OpenAI sends it
            payload["usage"] = usage
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def events(self, first, rest):
        """Server-sent events: role, text pieces, the finish reason, usage (when asked), [DONE]."""
        try:
            if self.chat:
                yield self._event([self._choice(None, None, {"role": "assistant", "content": ""})])
            last = first
            if first.text:
                yield self._event([self._choice(first.text, None, {"content": first.text})])
            if not first.finish_reason:
                async for c in rest:
                    last = c
                    if c.text:
                        yield self._event([self._choice(c.text, None, {"content": c.text})])
            yield self._event([self._choice("", last.finish_reason, {})])
            if self.include_usage:
                yield self._event([], _usage(last))
            yield "data: [DONE]\n\n"
        except Exception as e:  # after the headers: the error goes in the stream, as OpenAI's does
            err = (e if isinstance(e, ApiError) else ApiError(400, str(e), code="engine_error")
                   if isinstance(e, (EngineError, ValueError)) else ApiError(500, str(e), "server_error"))
            if err.status == 500:
                log.error("stream failed: %s", e, exc_info=(type(e), e, e.__traceback__))
            body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
            yield f"data: {json.dumps(body)}\n\n"
        finally:  # also when Starlette cancels the stream on disconnect: the job is cancelled
            await rest.aclose()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def _usage(last) -> dict:
    return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.generation_tokens,
            "total_tokens": last.prompt_tokens + last.generation_tokens}


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
