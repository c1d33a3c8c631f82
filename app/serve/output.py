"""OpenAI's shapes for what the server sends: errors {"error": {message, type, param, code}}, a whole
chat or text completion, and its stream of server-sent events."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse

from app.errors import EngineError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class Output:
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
                "usage": usage(last)}

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
                yield self._event([], usage(last))
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


def usage(last) -> dict:
    return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.generation_tokens,
            "total_tokens": last.prompt_tokens + last.generation_tokens}
