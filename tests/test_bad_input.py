"""Bad inputs the README's "When things go wrong" table lists that no other test file covers:
each gives a clear message, and nothing the user had is lost."""
import errno
import json
import shutil

import pytest

from app import paths, store
from app.cli import main
from app.engine import create_engine
from app.session import new_engine
from app.engine.base_model import weights_digest
from app.errors import AdapterError, EngineError

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
LLAMA = "meta-llama/Llama-3.2-1B-Instruct"


def _downloaded(tiny_qwen, repo=QWEN):
    """The tiny model placed in the store as a finished download of `repo` (no network)."""
    folder = paths.models_dir() / repo.replace("/", "--")
    shutil.copytree(tiny_qwen, folder)
    (folder / ".complete").touch()
    return folder


def _made_for(src, out, base, **meta):
    """A copy of adapter `src` whose records say it was made for `base` (None: no record)."""
    shutil.copytree(src, out)
    for name, key in (("loradesk.json", "base_model"), ("adapter_config.json", "model")):
        data = json.loads((out / name).read_text())
        data.pop(key, None)
        if base is not None:
            data[key] = base
        data.update(meta if name == "loradesk.json" else {})
        (out / name).write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("kind", ["mlx", "torch"])
def test_adapter_for_another_base_with_the_same_shapes(kind, tiny_qwen, tiny_adapters, tmp_path):
    _downloaded(tiny_qwen)
    e = new_engine(kind)  # QWEN is a repo id: the app resolves it
    e.load(QWEN)
    src = tiny_adapters["qwen2"]["math"]
    wrong = _made_for(src, tmp_path / "llama-math", LLAMA)
    with pytest.raises(AdapterError) as err:
        e.add_adapter("math", wrong)
    assert LLAMA in str(err.value) and QWEN in str(err.value) and "--force" in str(err.value)
    assert "math" not in e.adapters
    assert "using it anyway" in e.add_adapter("math", wrong, force=True).warning

    # The same base under another engine's repo name is the same base: no warning.
    for same in ("mlx-community/Qwen2.5-0.5B-Instruct-4bit", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", QWEN.lower()):
        assert e.add_adapter("same", _made_for(src, tmp_path / same.replace("/", "_"), same)).warning is None
    # One side unknown: loaded, with a one-line warning saying so.
    info = e.add_adapter("unrecorded", _made_for(src, tmp_path / "none", None))
    assert "does not record its base model" in info.warning and "\n" not in info.warning
    e.load(str(tiny_qwen))  # a local folder: no name to compare
    info = e.add_adapter("math", wrong)
    assert "cannot be identified" in info.warning and LLAMA in info.warning


def test_the_weights_hash_recognises_a_copied_model(tiny_qwen, tiny_adapters, tmp_path):
    from app.tiny import build_tiny_model

    e = create_engine("torch")
    copy = shutil.copytree(tiny_qwen, tmp_path / "my-copy")
    e.load(str(copy))
    trained = _made_for(tiny_adapters["qwen2"]["math"], tmp_path / "trained", QWEN,
                        base_weights_sample_sha256=weights_digest(tiny_qwen))
    assert e.add_adapter("math", trained).warning is None  # same weights, whatever the folder
    e.load(str(build_tiny_model(tmp_path / "other", "qwen2", seed=5)))  # same shapes, other weights
    assert "weights differ" in e.add_adapter("math", trained).warning


def test_a_name_the_engine_read_from_the_model_is_compared(tiny_adapters, tmp_path):
    """What an engine passes when it knows the model's name from the file itself (a GGUF's general.name)."""
    from app.engine.adapter_format import read_adapter
    from app.engine.base import ModelInfo
    from app.engine.base_model import check_base_model

    named = ModelInfo(ref="Qwen2.5-0.5B-Instruct", path=None, model_type="qwen2", fingerprint={})
    src = tiny_adapters["qwen2"]["math"]
    assert check_base_model(read_adapter(_made_for(src, tmp_path / "q", QWEN)), named, "'q'") is None
    with pytest.raises(AdapterError, match=f"made for {LLAMA}; the loaded model is Qwen2.5-0.5B-Instruct"):
        check_base_model(read_adapter(_made_for(src, tmp_path / "l", LLAMA)), named, "'l'")


def test_cli_refuses_another_bases_adapter_unless_forced(tiny_qwen, tiny_adapters, tmp_path, capsys):
    from app.session import save_settings

    _downloaded(tiny_qwen)
    save_settings({"engine": "torch", "model.torch": QWEN})
    wrong = _made_for(tiny_adapters["qwen2"]["math"], tmp_path / "llama-math", LLAMA)
    assert main(["adapters", "add", "math", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert LLAMA in err and QWEN in err and "--force" in err and "Traceback" not in err
    assert store.list_adapters("math") == []

    assert main(["adapters", "add", "math", str(wrong), "--force"]) == 0
    capsys.readouterr()
    assert main(["ask", "--task", "math", "--max-tokens", "3", "--stats", "hi"]) == 0
    out = capsys.readouterr().err
    assert "warning: adapter 'math'" in out and "using it anyway" in out and "adapter: math" in out

    store.add("math", wrong, name="llama-math")  # registered without --force (as training would)
    assert main(["ask", "--task", "math", "--max-tokens", "3", "--stats", "hi"]) == 0
    out = capsys.readouterr().err
    assert f"was made for {LLAMA}" in out and "answering with the base model" in out and "adapter: none" in out
    assert main(["ask", "--task", "math", "--max-tokens", "3", "--stats", "--force", "hi"]) == 0
    assert "adapter: math" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["length", "=short", "length="])
def test_option_without_equals_names_the_expected_form(option, capsys):
    assert main(["ask", "--task", "summarize", "--option", option, "text"]) == 2
    err = capsys.readouterr().err
    assert "--option NAME=VALUE" in err and "dictionary update" not in err and "Traceback" not in err


def test_disk_full_while_adding_keeps_the_old_adapter(tiny_adapters, loradesk_home, monkeypatch):
    first = store.add("math", tiny_adapters["qwen2"]["math"], name="mine")
    before = (first.path / "adapters.safetensors").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:  # the filesystem edge: every file copy fails as on a full disk
        m.setattr(shutil, "copyfile", full)
        with pytest.raises(AdapterError, match="the disk is full; nothing was changed"):
            store.add("math", tiny_adapters["qwen2"]["code"], name="mine")
    with monkeypatch.context() as m:  # the registry write fails the same way
        m.setattr("app.jsonfile.os.fsync", full)
        with pytest.raises(EngineError, match="could not save the adapter registry.*the disk is full"):
            store.add("math", tiny_adapters["qwen2"]["code"], name="other")
    assert [a.name for a in store.list_adapters("math")] == ["mine"]
    assert (first.path / "adapters.safetensors").read_bytes() == before
    leftovers = [p.name for p in (loradesk_home / "adapters").rglob(".*")]
    assert leftovers == [], leftovers  # no temp folders or files


def test_disk_full_while_saving_settings_keeps_the_old_ones(loradesk_home, monkeypatch):
    from app.session import load_settings, save_settings

    save_settings({"engine": "torch", "model.torch": QWEN})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("app.jsonfile.os.fsync", full)
        with pytest.raises(OSError, match="the disk is full"):  # the app's window guards with except OSError
            save_settings({"engine": "mlx"})
    assert load_settings() == {"engine": "torch", "model.torch": QWEN}


@pytest.mark.parametrize("kind", ["mlx", "torch"])
def test_truncated_model_weights_are_one_clear_error(kind, tiny_qwen, tmp_path):
    broken = shutil.copytree(tiny_qwen, tmp_path / "broken")
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    e = create_engine(kind)
    with pytest.raises(EngineError, match="truncated or damaged.*Download it again"):
        e.load(str(broken))
    e.load(str(tiny_qwen))  # and the engine still loads a good one
    assert isinstance(e.generate("hi"), str)


def test_the_app_carries_on_after_damaged_registry_and_settings(qtbot, tiny_qwen, tiny_adapters, loradesk_home):
    from app.ui.main_window import MainWindow

    store.add("math", tiny_adapters["qwen2"]["math"], name="math-tiny")
    (loradesk_home / "adapters" / "registry.json").write_text('{"math": {"adapters": [')
    (loradesk_home / "settings.json").write_text("\x00\x00")
    win = MainWindow(model=str(tiny_qwen), engine="mlx")
    qtbot.addWidget(win)
    win.show()
    win.start()
    qtbot.waitUntil(lambda: win.host.engine is not None, timeout=60_000)
    assert "math" in win.host.engine.adapters  # rebuilt from the folder: still served
    text = win.banner.text()
    assert "adapter registry" in text and "settings file" in text and "damaged" in text
    assert list((loradesk_home / "adapters").glob("registry.json.damaged-*"))
    win.close()


def test_a_missing_engine_library_and_a_broken_engine_module_get_different_messages(monkeypatch, tmp_path):
    import sys
    import app.engine as engines
    # The library is missing: the message names the package to install.
    monkeypatch.delitem(sys.modules, "app.engine.llamacpp_engine", raising=False)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(EngineError, match="needs llama-cpp-python"):
        create_engine("llamacpp")
    # Our own module fails (files replaced under a running process): no advice to install anything.
    (tmp_path / "broken_engine.py").write_text("from app.engine.base import NOT_THERE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(engines._CLASSES, "llamacpp", ("broken_engine", "LlamaCppEngine"))
    with pytest.raises(EngineError, match="code failed to import.*NOT_THERE") as e:
        create_engine("llamacpp")
    assert "needs" not in str(e.value)
