"""Engine-neutral text helpers shared by the MLX and torch engines (one source for each rule)."""
from __future__ import annotations

from app.errors import EngineError


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """Apply the tokenizer's chat template; fold the system prompt into the first user turn for
    templates that refuse a system role (Gemma); plain text for models without a template."""
    if getattr(tokenizer, "chat_template", None) is None:
        return "\n\n".join(m["content"] for m in messages) + "\n\n"
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja raises TemplateError("System role not supported")
        if not messages or messages[0]["role"] != "system" or "system" not in str(e).lower():
            raise EngineError(f"the model's chat template failed: {e}") from None
        system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
        if rest and rest[0]["role"] == "user":
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
        return tokenizer.apply_chat_template(rest, add_generation_prompt=True, tokenize=False)


def encode(tokenizer, text: str) -> list[int]:
    """mlx-lm's rule: add special tokens unless the text already starts with BOS."""
    bos = tokenizer.bos_token
    # verbose=False: no "longer than the maximum" warning; Engine.fit_prompt checks the context.
    return list(tokenizer.encode(text, add_special_tokens=bos is None or not text.startswith(bos), verbose=False))


def split_for_loglikelihood(encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation as lm-eval-harness splits them: trailing spaces of the
    context move to the continuation, and the continuation is what encoding the whole adds."""
    if not continuation:
        raise ValueError("continuation must not be empty")
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = encode(context + continuation)
    ctx = encode(context) if context else []
    if whole[: len(ctx)] != ctx or len(ctx) == len(whole):
        cont = encode(continuation)
    else:
        cont = whole[len(ctx):]
    if not ctx:
        raise ValueError("context must not be empty")
    return ctx, cont


def special_prefix(engine) -> list[int]:
    """Ids `encode` puts before any text (a BOS token for Llama/Gemma tokenizers; none for Qwen)."""
    return engine.encode("")


def count_tokens(engine, text: str) -> int:
    return len(engine.encode(text)) - len(special_prefix(engine))


def truncate(engine, text: str, max_tokens: int) -> str:
    """Cut `text` to its first `max_tokens` tokens, keeping its start: the one rule for over-long
    inputs, used by the benchmark (long articles) and by `Engine.fit_prompt` (the app and CLI)."""
    tokens = engine.encode(text)
    prefix = special_prefix(engine)
    if prefix and tokens[: len(prefix)] == prefix:  # the BOS is the prompt's, not the text's
        tokens = tokens[len(prefix):]
    if len(tokens) <= max_tokens:
        return text
    return engine.decode(tokens[:max_tokens])


def find_stop(text: str, stops, shown: int) -> int | None:
    """Index where the earliest stop string starts in the not-yet-final part of `text`."""
    hits = []
    for s in stops:
        if s:
            i = text.find(s, max(0, shown - len(s)))
            if i >= 0:
                hits.append(i)
    return min(hits) if hits else None
