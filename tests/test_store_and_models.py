"""Adapter store, model resolution and the hub edge (mocked: nothing is downloaded)."""
import json
import shutil
from pathlib import Path

import pytest

from app import hub, models, store
from app.errors import AdapterError, EngineError
from app.jsonfile import pop_notices
from app.names import BadName


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


def test_damaged_registry_is_kept_and_rebuilt_from_the_folders(tiny_adapters, loradesk_home):
    store.add("math", tiny_adapters["qwen2"]["math"], name="m1")
    store.add("math", tiny_adapters["qwen2"]["code"], name="m2")
    store.add("code", tiny_adapters["qwen2"]["code"], name="c1")
    pop_notices()
    reg = loradesk_home / "adapters" / "registry.json"
    reg.write_text("{\n  oops")
    assert {(a.task, a.name) for a in store.list_adapters()} == {("math", "m1"), ("math", "m2"), ("code", "c1")}
    assert store.current("math").name == "m2"  # the newest, as before
    kept = list(reg.parent.glob("registry.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{\n  oops"
    notices = pop_notices()
    assert len(notices) == 1 and "adapter registry" in notices[0] and kept[0].name in notices[0]
    assert pop_notices() == []  # shown once
    store.add("math", tiny_adapters["qwen2"]["paraphrase"], name="m3")  # and the store carries on
    assert [a.name for a in store.list_adapters("math")] == ["m1", "m2", "m3"]


def test_damaged_model_registry_and_settings_recover(tiny_qwen, loradesk_home, capsys):
    from app.cli import main
    from app.session import load_settings, save_settings

    folder = loradesk_home / "models" / "my-model"
    shutil.copytree(tiny_qwen, folder)
    models.register_model("my-model", folder)
    (loradesk_home / "models" / "registry.json").write_text("{\n")
    assert main(["models", "list"]) == 0  # used to stop with "Expecting value: line 2 column 1"
    out = capsys.readouterr()
    assert "my-model" in out.out and "model registry" in out.err and "damaged" in out.err
    assert models.resolve_model("my-model") == folder
    assert list((loradesk_home / "models").glob("registry.json.damaged-*"))

    save_settings({"engine": "mlx"})
    (loradesk_home / "settings.json").write_bytes(b"\xff\xfe garbage")
    assert load_settings() == {}
    assert list(loradesk_home.glob("settings.json.damaged-*"))
    assert main(["info", "--no-load"]) == 0
    assert "settings file" in capsys.readouterr().err


def test_two_processes_registering_at_once_lose_nothing(tiny_adapters, loradesk_home):
    """Each process registers 50 adapters while the other does the same: all 100 are kept."""
    import os
    import subprocess
    import sys

    script = ("import sys; from app import store\n"
              "for i in range(50): store.add('math', sys.argv[1], name=f'{sys.argv[2]}-{i}')\n")
    env = {**os.environ, "LORADESK_HOME": str(loradesk_home)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tiny_adapters["qwen2"]["math"]), tag], env=env,
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stderr.read()
    names = {a.name for a in store.list_adapters("math")}
    assert names == {f"{t}-{i}" for t in "ab" for i in range(50)}
    assert not [p for p in (loradesk_home / "adapters").iterdir() if p.name.endswith(".tmp")]


def test_add_dot_uses_the_folders_real_name_and_keeps_the_others(tiny_adapters, tmp_path, monkeypatch, capsys):
    from app.cli import main

    store.add("math", tiny_adapters["qwen2"]["math"], name="v1")
    mine = tmp_path / "my-math"
    shutil.copytree(tiny_adapters["qwen2"]["code"], mine)
    monkeypatch.chdir(mine)
    assert main(["adapters", "add", "math", "."]) == 0
    assert "registered as 'my-math'" in capsys.readouterr().out
    assert [a.name for a in store.list_adapters("math")] == ["v1", "my-math"]
    assert all((a.path / "adapters.safetensors").exists() for a in store.list_adapters("math"))
    assert store.default_name(Path("/")) is None  # no real name: --name is asked for


@pytest.mark.parametrize("bad", ["", " ", ".", "..", "../math", "a/b", "a\\b", ".hidden", "registry.json",
                                 "CON", "nul.txt", "x" * 101, "tab\tname"])
def test_bad_names_are_refused_everywhere_and_nothing_is_touched(bad, tiny_adapters, loradesk_home):
    store.add("math", tiny_adapters["qwen2"]["math"], name="keep")
    before = sorted(p.name for p in (loradesk_home / "adapters").rglob("*"))
    for call in (lambda: store.add("math", tiny_adapters["qwen2"]["code"], name=bad),
                 lambda: store.remove("math", bad), lambda: store.select("math", bad),
                 lambda: models.register_model(bad, loradesk_home)):
        with pytest.raises(BadName, match="name"):
            call()
    assert sorted(p.name for p in (loradesk_home / "adapters").rglob("*")) == before
    assert store.current("math").name == "keep"


def test_cli_refuses_dotdot_and_unknown_names(tiny_adapters, loradesk_home, capsys):
    from app.cli import main

    store.add("math", tiny_adapters["qwen2"]["math"], name="keep")
    assert main(["adapters", "add", "math", str(tiny_adapters["qwen2"]["code"]), "--name", ".."]) == 2
    assert "is a folder reference" in capsys.readouterr().err
    assert main(["adapters", "remove", "math", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no adapter named 'nope'" in err and "keep" in err and "Traceback" not in err
    with pytest.raises(EngineError, match="no adapter named 'nope'"):
        store.select("math", "nope")
    assert (loradesk_home / "adapters" / "math" / "keep").is_dir() and store.current("math").name == "keep"


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


def test_remove_deletes_only_inside_the_store(tiny_adapters, loradesk_home, tmp_path):
    """A registry entry pointing elsewhere (hand-edited, or an old version's) is unregistered, never deleted."""
    precious = shutil.copytree(tiny_adapters["qwen2"]["math"], tmp_path / "precious")
    store.add("math", tiny_adapters["qwen2"]["code"], name="mine")
    reg = loradesk_home / "adapters" / "registry.json"
    data = json.loads(reg.read_text())
    data["math"]["adapters"].append({"name": "elsewhere", "path": str(precious), "format": "mlx"})
    reg.write_text(json.dumps(data))
    store.remove("math", "elsewhere")
    assert precious.is_dir() and [a.name for a in store.list_adapters("math")] == ["mine"]
    store.remove("math", "mine")
    assert not (loradesk_home / "adapters" / "math" / "mine").exists()
