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
