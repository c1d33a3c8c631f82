"""What both engines promise through the shared Engine.activate / remove_adapter."""
import pytest

from app.engine import EngineError, create_engine
from app.tasks import GenerationSettings, get_task

GREEDY = GenerationSettings(max_tokens=12)
MSGS = get_task("math").messages("What is 6 times 7?")


@pytest.mark.parametrize("kind", ["mlx", "torch"])
def test_replacing_the_active_adapter_keeps_it_active_with_the_new_weights(kind, tiny_models, tiny_adapters):
    a = tiny_adapters["qwen2"]
    e = create_engine(kind)
    e.load(tiny_models["qwen2"])
    e.add_adapter("math", a["math"])
    e.add_adapter("other", a["paraphrase"])
    e.activate("other")
    paraphrase_out = e.generate(MSGS, GREEDY)
    e.activate("math")
    first = e.generate(MSGS, GREEDY)
    e.add_adapter("math", a["paraphrase"])  # same name, the paraphrase weights, while active
    assert e.active == "math"
    assert e.generate(MSGS, GREEDY) == paraphrase_out != first
    e.remove_adapter("math")
    assert e.active is None and "math" not in e.adapters
    e.activate(None)
    base = e.generate(MSGS, GREEDY)
    assert base not in (first, paraphrase_out)
    with pytest.raises(EngineError, match="not found"):
        e.remove_adapter("math")
    e.activate("other")
    assert e.generate(MSGS, GREEDY) == paraphrase_out
