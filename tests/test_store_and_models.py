"""Adapter store, model resolution and the hub edge (mocked: nothing is downloaded)."""
import json
import shutil

import pytest

from app import hub, models
from app.engine import EngineError, store
from app.engine.base import AdapterError


def test_add_registers_and_selects(tiny_adapters):
    a = store.add("math", tiny_adapters["qwen2"]["math"], name="v1")
    b = store.add("math", tiny_adapters["qwen2"]["code"], name="v2")
    assert store.current("math").name == "v2"
    assert store.adapter_folder("math") == b.path and (b.path / "adapters.safetensors").exists()
    store.select("math", "v1")
    assert store.adapter_folder("math") == a.path
    store.remove("math", "v1")
    assert [x.name for x in store.list_adapters("math")] == ["v2"]
    assert not a.path.exists()
    assert store.adapter_folder("code") is None


def test_add_refuses_corrupt_folder_and_keeps_registry(tiny_adapters, tmp_path):
    store.add("math", tiny_adapters["qwen2"]["math"], name="good")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapters["qwen2"]["code"], bad)
    (bad / "adapters.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError):
        store.add("math", bad, name="good")  # same name: must not replace the good one
    assert store.current("math").name == "good"
    assert (store.current("math").path / "adapters.safetensors").stat().st_size > 100


def test_corrupt_registry_is_set_aside(tiny_adapters, loradesk_home):
    store.add("math", tiny_adapters["qwen2"]["math"])
    (loradesk_home / "adapters" / "registry.json").write_text("{oops")
    assert store.list_adapters() == []
    assert list((loradesk_home / "adapters").glob("registry.corrupt-*"))


def test_load_task_adapters_reports_missing(tiny_qwen, tiny_adapters):
    from app.engine import create_engine

    store.add("code", tiny_adapters["qwen2"]["code"])
    store.add("summarize", tiny_adapters["llama"]["summarize"])  # wrong base
    e = create_engine("mlx")
    e.load(tiny_qwen)
    problems = store.load_task_adapters(e)
    assert list(e.adapters) == ["code"]
    assert "no adapter" in problems["math"] and "model_type" in problems["summarize"]


def test_local_folder_and_errors(tiny_qwen, tmp_path):
    assert models.resolve_model(str(tiny_qwen)) == tiny_qwen.resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EngineError, match="no config.json"):
        models.resolve_model(str(empty))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(EngineError, match="loradesk models import"):
        models.resolve_model(str(gguf))
    with pytest.raises(EngineError, match="neither a folder"):
        models.resolve_model("not a model")


def test_offline_hub_says_use_a_local_folder():
    with pytest.raises(models.ModelUnavailable, match="offline.*--model /path/to/folder"):
        models.resolve_model("mlx-community/Qwen2.5-1.5B-Instruct-4bit")
