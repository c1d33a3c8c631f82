"""`loradesk models import FILE.gguf`: a tiny GGUF written with the `gguf` package from the tiny
Qwen2 model, imported for both engines; bad files give one clear line and leave nothing behind."""
import json
from pathlib import Path

import numpy as np
import pytest

from app import paths
from app.cli import main
from app.session import new_engine
from app.models import registered_models, resolve_model
from app.tiny_gguf import write_tiny_gguf

PROMPT = "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def ggufs(tiny_qwen, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {q: write_tiny_gguf(tiny_qwen, root / f"tiny-{q}.gguf", q) for q in ("F32", "Q8_0")}


def _store_entries() -> list[str]:
    return sorted(p.name for p in paths.models_dir().iterdir() if p.suffix != ".lock")  # the registry's lock stays


def test_import_for_both_engines(tiny_qwen, ggufs, capsys):
    assert main(["models", "import", str(ggufs["F32"]), "--name", "tiny-gguf", "--engine", "torch"]) == 0
    err = capsys.readouterr().err
    assert "qwen2" in err and "[1/2]" in err and "[2/2]" in err and "registered 'tiny-gguf'" in err
    assert _store_entries() == ["registry.json", "tiny-gguf", "tiny-gguf-mlx"]  # no temp folders left
    assert set(registered_models()) == {"tiny-gguf", "tiny-gguf-mlx"}
    assert resolve_model("tiny-gguf", engine="torch") == paths.models_dir() / "tiny-gguf"
    assert resolve_model("tiny-gguf", engine="mlx") == paths.models_dir() / "tiny-gguf-mlx"

    original = new_engine("torch")
    original.load(tiny_qwen)
    imported = new_engine("torch")
    imported.load("tiny-gguf")
    assert imported.encode(PROMPT) == original.encode(PROMPT)
    assert imported.chat_prompt([{"role": "user", "content": "What is 6 times 7?"}]) == PROMPT
    diff = np.abs(imported.next_token_logits(PROMPT) - original.next_token_logits(PROMPT)).max()
    assert diff < 1e-5  # F32 GGUF: a lossless round trip

    mlx = new_engine("mlx")
    info = mlx.load("tiny-gguf")
    assert info.quantization == "4-bit (group 64)"
    logits = mlx.next_token_logits(PROMPT)
    assert np.isfinite(logits).all() and np.corrcoef(logits, original.next_token_logits(PROMPT))[0, 1] > 0.9


def test_import_quantized_gguf_torch_only(tiny_qwen, ggufs, capsys):
    assert main(["models", "import", str(ggufs["Q8_0"]), "--no-mlx", "--engine", "torch"]) == 0
    assert "Q8_0" in capsys.readouterr().err
    assert set(registered_models()) == {"tiny-Q8_0"}
    config = json.loads((paths.models_dir() / "tiny-Q8_0" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"  # dequantized values, stored at half the float32 size
    original, imported = new_engine("torch"), new_engine("torch")
    original.load(tiny_qwen)
    imported.load("tiny-Q8_0")
    a, b = imported.next_token_logits(PROMPT), original.next_token_logits(PROMPT)
    assert np.abs(a - b).max() < 0.25 and a.argmax() == b.argmax()  # Q8_0 + bf16 rounding only


def test_existing_name_is_refused_and_kept(ggufs, capsys):
    assert main(["models", "import", str(ggufs["Q8_0"]), "--name", "mine", "--no-mlx", "--engine", "torch"]) == 0
    before = (paths.models_dir() / "mine" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["models", "import", str(ggufs["F32"]), "--name", "mine", "--no-mlx", "--engine", "torch"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (paths.models_dir() / "mine" / "model.safetensors").read_bytes() == before


def test_import_for_llamacpp_keeps_the_gguf_as_it_is(ggufs, capsys):
    pytest.importorskip("llama_cpp")
    assert main(["models", "import", str(ggufs["Q8_0"]), "--name", "q8", "--engine", "llamacpp"]) == 0
    assert "no conversion" in capsys.readouterr().err
    kept = paths.models_dir() / "q8-gguf" / ggufs["Q8_0"].name
    assert kept.read_bytes() == ggufs["Q8_0"].read_bytes() and set(registered_models()) == {"q8-gguf"}
    e = new_engine("llamacpp")
    assert e.load("q8").path == kept and "Q8_0" in e.model_info.quantization
    with pytest.raises(Exception, match="imported as a GGUF only.*--engine torch"):
        resolve_model("q8", engine="torch")


def _one_line_error(capsys, args, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert registered_models() == {} and [p for p in _store_entries() if p != "registry.json"] == []


def test_truncated_gguf(ggufs, tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    data = ggufs["F32"].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    _one_line_error(capsys, ["models", "import", str(cut)], str(cut), "truncated", "download it again")
    cut.write_bytes(data[:200])  # cut inside the metadata
    _one_line_error(capsys, ["models", "import", str(cut)], str(cut), "download it again")


def test_unsupported_architecture_and_not_gguf(tmp_path, capsys):
    import gguf

    f = tmp_path / "encoder.gguf"
    w = gguf.GGUFWriter(str(f), "bert")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _one_line_error(capsys, ["models", "import", str(f)], str(f), "'bert' is not supported", "qwen2")
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"PK\x03\x04 this is a zip file")
    _one_line_error(capsys, ["models", "import", str(junk)], str(junk), "not a GGUF file")
    _one_line_error(capsys, ["models", "import", str(tmp_path / "nope.gguf")], "nope.gguf", "does not exist")
