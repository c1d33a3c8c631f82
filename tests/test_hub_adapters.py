"""Task adapters on the Hub (app/hub_adapters.py, `loradesk adapters search|get|push`) against a local
fake hub on 127.0.0.1 (tests/fake_hub.py): huggingface-hub's real listing, download, range-read and
upload code runs; only the server is ours."""
from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest

from app import hub_adapters, store
from app.cli import main
from app.engine.adapter_check import linear_shapes_from_config
from app.engine.adapter_format import read_adapter
from app.engine.adapter_write import write_peft
from app.engine.lora import METADATA_FILE, PEFT_WEIGHTS
from app.errors import AdapterError
from app.hub import Cancelled
from app.tiny import random_adapter, random_adapter_for
from fake_hub import BLOCK, SHA, FakeHub, card_metadata

BASE = "someorg/tiny-base"
TAG = f"base_model:adapter:{BASE}"
OLD = "fedcba9876543210fedcba9876543210fedcba98"  # an older commit of carol/tiny-math-lora


def _peft(tmp, weights, base_model: str | None) -> dict[str, bytes]:
    """A PEFT adapter folder as someone else would publish it (no loradesk.json)."""
    weights.base_model, weights.fingerprint = base_model, {}
    out = write_peft(weights, tmp / f"peft-{len(list(tmp.iterdir()))}")
    (out / METADATA_FILE).unlink()
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture(scope="module")
def hub_repos(tiny_qwen, tmp_path_factory):
    """repo -> files, repo -> model info, repo -> older revisions."""
    tmp = tmp_path_factory.mktemp("hub-repos")
    cfg = json.loads((tiny_qwen / "config.json").read_text())
    wide = {k: (fin * 2, fout) for k, (fin, fout) in linear_shapes_from_config(cfg).items()}
    repos = {
        "alice/tiny-gsm8k-lora": _peft(tmp, random_adapter(tiny_qwen, seed=1), BASE),
        "bob/tiny-chat-lora": _peft(tmp, random_adapter(tiny_qwen, seed=2), BASE),
        "carol/tiny-math-lora": _peft(tmp, random_adapter(tiny_qwen, seed=3, rank=4), BASE),
        "gina/tiny-news-lora": {**_peft(tmp, random_adapter(tiny_qwen, seed=4), BASE),
                                "README.md": b"# News\nSummarization of news articles."},
        "dave/tiny-pickle-lora": {"adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
                                  "adapter_model.bin": b"\x80\x04\x95 not unpickled"},
        "erin/tiny-other-base-lora": _peft(tmp, random_adapter(tiny_qwen, seed=5), "someorg/other-model"),
        "frank/tiny-wide-lora": _peft(tmp, random_adapter_for(wide, {}, None, seed=6), BASE),
        "hank/for-another-model": _peft(tmp, random_adapter(tiny_qwen, seed=7), "someorg/other-model"),
        # Large enough (rank 256: ~1.4 MB) to be cancelled mid-file.
        "ivy/tiny-big-lora": _peft(tmp, random_adapter(tiny_qwen, seed=8, rank=256), BASE),
    }
    info = {
        "alice/tiny-gsm8k-lora": {"downloads": 50, "likes": 3, "tags": ["peft", TAG],
                                  "cardData": {"datasets": ["openai/gsm8k"], "license": "apache-2.0"}},
        "bob/tiny-chat-lora": {"downloads": 5000, "likes": 40, "tags": ["peft", TAG], "cardData": {"license": "mit"}},
        "carol/tiny-math-lora": {"downloads": 10, "tags": ["peft", TAG]},
        "gina/tiny-news-lora": {"downloads": 20, "tags": ["peft", TAG],
                                "cardData": {"datasets": ["abisee/cnn_dailymail"]}},
        "dave/tiny-pickle-lora": {"downloads": 9, "tags": ["peft", TAG]},
        "erin/tiny-other-base-lora": {"downloads": 8, "tags": ["peft", TAG]},
        "frank/tiny-wide-lora": {"downloads": 7, "tags": ["peft", TAG]},
        "hank/for-another-model": {"downloads": 9999, "tags": ["peft", "base_model:adapter:someorg/other-model"]},
        "ivy/tiny-big-lora": {"downloads": 1, "tags": ["peft", TAG]},
    }
    repos[BASE] = {"config.json": json.dumps(cfg).encode()}  # the base model's repo (only its config is read)
    old = {"carol/tiny-math-lora": {OLD: _peft(tmp, random_adapter(tiny_qwen, seed=30, rank=2), BASE)}}
    return repos, info, old


@pytest.fixture
def fake(hub_repos, monkeypatch):
    repos, info, old = hub_repos
    with FakeHub({k: dict(v) for k, v in repos.items()}, info={k: dict(v) for k, v in info.items()},
                 revisions=old).use(monkeypatch) as f:
        yield f


def test_search_keeps_what_fits_and_ranks_it_for_the_task(fake, tiny_qwen, tmp_path, capsys):
    r = hub_adapters.search("math", str(tiny_qwen), base=BASE)
    assert [a.repo for a in r.adapters] == ["alice/tiny-gsm8k-lora", "carol/tiny-math-lora", "bob/tiny-chat-lora",
                                            "gina/tiny-news-lora", "ivy/tiny-big-lora"]
    alice = r.adapters[0]
    assert alice.matches == ["gsm8k"] and alice.datasets == ["openai/gsm8k"] and alice.license == "apache-2.0"
    assert (alice.downloads, alice.likes, alice.rank, alice.format) == (50, 3, 8, "peft")
    weights = read_adapter_bytes(fake.repos["alice/tiny-gsm8k-lora"], tmp_path)
    assert alice.size == weights.nbytes()  # from the safetensors header alone
    assert r.adapters[1].matches == ["math"]  # in the repo's name
    skipped = dict(r.skipped)
    assert set(skipped) == {"dave/tiny-pickle-lora", "erin/tiny-other-base-lora", "frank/tiny-wide-lora"}
    assert "pickle" in skipped["dave/tiny-pickle-lora"]
    assert skipped["erin/tiny-other-base-lora"] == "made for someorg/other-model"
    # Every A tensor (2 layers x 7 modules) is twice as wide as the model's layers; the first is shown.
    assert skipped["frank/tiny-wide-lora"] == \
        "14 tensors do not fit (model.layers.0.mlp.down_proj: lora_A [8, 256] vs layer 128->64)"
    # Of the weights only the headers were read (ranged GETs); no weights file came over whole.
    weights_gets = [p for m, p in fake.requests if m == "GET" and p.endswith(PEFT_WEIGHTS)]
    assert weights_gets and all(p in fake.ranged for p in weights_gets)
    # The task's keywords rank: for summarize, the news adapter (dataset + card words) comes first.
    news = hub_adapters.search("summarize", str(tiny_qwen), base=BASE).adapters[0]
    assert news.repo == "gina/tiny-news-lora" and news.matches == ["cnn_dailymail", "summarization"]
    assert [a.repo for a in hub_adapters.search("math", str(tiny_qwen), base=BASE, query="gsm8k").adapters] == \
        ["alice/tiny-gsm8k-lora"]

    with pytest.raises(hub_adapters.HubUnavailable, match=r"base model someorg/nope\): the repo does not exist"):
        hub_adapters.search("math", str(tiny_qwen), base="someorg/nope")

    assert main(["adapters", "search", "--task", "math", "--model", str(tiny_qwen), "--base", BASE, "--limit", "2",
                 "--show-unfit"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"Hub LoRA adapters for {BASE}, ranked for math:"
    assert lines[2].split()[:4] == ["1", "alice/tiny-gsm8k-lora", "50", "3"] and "apache-2.0" in lines[2]
    assert "get one: loradesk adapters get alice/tiny-gsm8k-lora --task math" in out
    assert "  dave/tiny-pickle-lora: pickle weights only (adapter_model.bin)" in out


def read_adapter_bytes(files: dict[str, bytes], tmp):
    d = tmp / f"read-{len(list(tmp.iterdir()))}"
    d.mkdir()
    for name, content in files.items():
        (d / name).write_bytes(content)
    return read_adapter(d)


def test_get_pins_the_revision_records_hashes_and_serves(fake, tiny_qwen, capsys):
    assert main(["adapters", "get", f"carol/tiny-math-lora@{OLD}", "--task", "math", "--model", str(tiny_qwen),
                 "--base", BASE]) == 0
    assert f"got carol/tiny-math-lora@{OLD[:12]} (PEFT): registered as 'tiny-math-lora'" in capsys.readouterr().out
    entry = store.current("math")
    assert entry.source == f"hf:carol/tiny-math-lora@{OLD}"
    served = fake.revisions["carol/tiny-math-lora"][OLD]
    assert (entry.path / PEFT_WEIGHTS).read_bytes() == served[PEFT_WEIGHTS]  # the old commit, not main's
    assert all(f"/resolve/{OLD}/" in p for m, p in fake.requests if "/resolve/" in p)
    meta = json.loads((entry.path / METADATA_FILE).read_text())
    assert meta["hub"]["revision"] == OLD and meta["hub"]["requested"] == OLD and meta["base_model"] == BASE
    assert meta["hub"]["files"] == {n: hashlib.sha256(c).hexdigest() for n, c in served.items()}
    assert read_adapter(entry.path).rank == 2

    fake.requests.clear()
    r = hub_adapters.get("alice/tiny-gsm8k-lora", "math", str(tiny_qwen), base=BASE)
    assert r.revision == SHA and store.current("math").name == "tiny-gsm8k-lora"
    assert not (store.paths.adapters_dir() / ".hub" / f"alice--tiny-gsm8k-lora@{SHA}").exists()  # moved in

    from app.engine import create_engine

    engine = create_engine("mlx")
    engine.load(tiny_qwen)
    assert store.load_task_adapters(engine, ["math"]) == {} and "math" in engine.adapters


def test_a_cancelled_get_resumes_with_the_missing_file_only(fake, tiny_qwen):
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if p.file == PEFT_WEIGHTS and p.done > 3 * BLOCK:
            cancel.set()

    with pytest.raises(Cancelled, match="ivy/tiny-big-lora cancelled; the files already downloaded are kept"):
        hub_adapters.get("ivy/tiny-big-lora", "math", str(tiny_qwen), base=BASE, progress=progress, cancel=cancel)
    assert store.list_adapters("math") == []
    stage = store.paths.adapters_dir() / ".hub" / f"ivy--tiny-big-lora@{SHA}"
    assert (stage / "adapter_config.json").exists() and not (stage / PEFT_WEIGHTS).exists()
    assert seen[-1].done < seen[-1].total - 5 * BLOCK

    fake.requests.clear()
    r = hub_adapters.get("ivy/tiny-big-lora", "math", str(tiny_qwen), base=BASE)
    gets = [p.rsplit("/", 1)[1] for m, p in fake.requests if m == "GET" and "/resolve/" in p]
    assert gets == [PEFT_WEIGHTS]
    assert (r.entry.path / PEFT_WEIGHTS).read_bytes() == fake.repos["ivy/tiny-big-lora"][PEFT_WEIGHTS]


def test_get_refuses_another_base_model_pickles_and_misfits(fake, tiny_qwen, capsys):
    with pytest.raises(AdapterError, match="adapter erin/tiny-other-base-lora@0123456789ab was made for "
                                           "someorg/other-model; the loaded model is someorg/tiny-base"):
        hub_adapters.get("erin/tiny-other-base-lora", "math", str(tiny_qwen), base=BASE)
    with pytest.raises(AdapterError, match=r"holds only pickle weights \(adapter_model.bin\); LoRA Desk never"):
        hub_adapters.get("dave/tiny-pickle-lora", "math", str(tiny_qwen), base=BASE)
    with pytest.raises(AdapterError, match="does not fit someorg/tiny-base"):
        hub_adapters.get("frank/tiny-wide-lora", "math", str(tiny_qwen), base=BASE)
    assert store.list_adapters() == [] and list((store.paths.adapters_dir() / ".hub").iterdir()) == []
    assert not any(p.endswith("adapter_model.bin") for _, p in fake.requests)  # never downloaded
    assert main(["adapters", "get", "erin/tiny-other-base-lora", "--task", "math", "--model", str(tiny_qwen),
                 "--base", BASE]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    r = hub_adapters.get("erin/tiny-other-base-lora", "math", str(tiny_qwen), base=BASE, force=True)
    assert r.entry.forced and store.current("math").name == "tiny-other-base-lora"


def _trained_adapter(tiny_qwen, tmp_path):
    """An adapter with the loradesk.json that training writes (training/api.py _export)."""
    folder = tmp_path / "math-run"
    w = random_adapter(tiny_qwen, seed=9)
    write_peft(w, folder)
    meta = {"task": "math", "base_model": str(tiny_qwen), "base_model_path": str(tiny_qwen),
            "fingerprint": w.fingerprint, "engine": "torch", "steps": 600,
            "training": {"model": str(tiny_qwen), "data": [str(tmp_path / "gsm8k")], "rank": 8, "alpha": 16.0,
                         "learning_rate": 0.0002, "batch_size": 4, "max_seq_length": 768},
            "datasets": {"openai/gsm8k": {"files": [str(tmp_path / "gsm8k" / "train.jsonl")], "rows": 7473,
                                          "train": 6700},
                         "allenai/math_qa": {"files": [], "rows": 2985, "train": 2800}},
            "examples": {"train": 9500, "valid": 500, "test": 500}, "final_train_loss": 0.61,
            "final_valid_loss": 0.72, "tokens_per_s": 812.0}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    store.add("math", folder, name="math-run")
    return w


def test_push_uploads_peft_with_a_card_that_search_finds(fake, tiny_qwen, tmp_path, monkeypatch, capsys):
    w = _trained_adapter(tiny_qwen, tmp_path)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"meta": {"limit": 50, "seed": 0, "engine": "torch"}, "runs": [
        {"task": "gsm8k", "config": "base", "model": str(tiny_qwen), "n": 50, "primary": "exact_match",
         "metrics": {"exact_match": 0.2}},
        {"task": "gsm8k", "config": "adapter", "model": "tiny", "n": 50, "primary": "exact_match",
         "metrics": {"exact_match": 0.42}},
        {"task": "humaneval", "config": "adapter", "model": "tiny", "n": 20, "primary": "pass@1",
         "metrics": {"pass@1": 0.1}}]}))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert main(["adapters", "push", "math", "--repo", "me/tiny-math", "--base", BASE,
                 "--bench-results", str(results)]) == 0
    assert "pushed the math adapter to" in capsys.readouterr().out
    assert fake.created == [{"name": "tiny-math", "organization": "me", "visibility": "private"}]
    (commit,) = fake.commits
    files = commit["files"]
    assert set(files) == {"adapter_config.json", PEFT_WEIGHTS, METADATA_FILE, "README.md"}
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == BASE and config["peft_type"] == "LORA"
    up = read_adapter_bytes({k: v for k, v in files.items() if k != "README.md"}, tmp_path)
    assert all(np.allclose(up.modules[k].b, m.b) for k, m in w.modules.items())
    meta = json.loads(files[METADATA_FILE])
    assert str(tmp_path) not in json.dumps(meta) and str(tiny_qwen) not in json.dumps(meta)  # no local paths
    assert meta["training"]["data"] == ["gsm8k"] and meta["datasets"]["openai/gsm8k"]["files"] == ["train.jsonl"]
    readme = files["README.md"].decode()
    card = card_metadata(readme)
    assert card["base_model"] == BASE and card["library_name"] == "peft"
    assert {TAG, "loradesk", "math", "gsm8k", "math_qa"} <= set(card["tags"])
    assert card["datasets"] == ["openai/gsm8k", "allenai/math_qa"]
    assert "- data: openai/gsm8k (6700 training examples)" in readme
    assert "| gsm8k | adapter | tiny | 50 | exact_match 0.420 |" in readme and "humaneval" not in readme
    assert f"| gsm8k | base | {BASE} | 50 | exact_match 0.200 |" in readme  # a local model folder: its hub id
    assert "- settings: rank 8; alpha 16.0; learning_rate 0.0002; batch_size 4; max_seq_length 768" in readme
    assert "limit 50, seed 0, engine torch" in readme

    # The Hub indexes the card: search finds the pushed adapter for its task, and get brings it back.
    found = hub_adapters.search("math", str(tiny_qwen), base=BASE, query="tiny-math").adapters
    assert "me/tiny-math" in [a.repo for a in found]
    mine = next(a for a in found if a.repo == "me/tiny-math")
    assert {"gsm8k", "math_qa", "math"} <= set(mine.matches)

    assert main(["adapters", "push", "math", "--repo", "me/tiny-math-2", "--base", BASE, "--public"]) == 0
    assert fake.created[-1]["visibility"] == "public"


def test_network_is_needed_and_said_in_one_line(fake, tiny_qwen, tmp_path, monkeypatch, capsys):
    _trained_adapter(tiny_qwen, tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(store.paths.home() / "no-token"))
    assert main(["adapters", "push", "math", "--repo", "me/x", "--base", BASE]) == 2
    assert "needs a Hugging Face token with write access" in capsys.readouterr().err
    commands = [["adapters", "search", "--task", "math"],
                ["adapters", "get", "alice/tiny-gsm8k-lora", "--task", "math"],
                ["adapters", "push", "math", "--repo", "me/x"]]
    model = ["--model", str(tiny_qwen), "--base", BASE]
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fake.server.shutdown()
    fake.server.server_close()  # nothing listens there now: connection refused
    for cmd in commands:
        assert main(cmd + (model if cmd[1] != "push" else ["--base", BASE])) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs the network: cannot reach the Hugging Face hub" in err, err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for cmd in commands:
        assert main(cmd + (model if cmd[1] != "push" else ["--base", BASE])) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs the network, and HF_HUB_OFFLINE=1 is set" in err, err


def test_base_repo_from_model_references(tiny_qwen):
    assert hub_adapters.base_repo("mlx-community/Qwen2.5-0.5B-Instruct-4bit") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_adapters.base_repo("Qwen/Qwen2.5-1.5B-Instruct-GGUF") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert hub_adapters.base_repo("someone/Some-Model") == "someone/Some-Model"
    assert hub_adapters.base_repo(str(tiny_qwen), base=BASE) == BASE
    with pytest.raises(ValueError, match="pass the original repo with --base"):
        hub_adapters.base_repo(str(tiny_qwen))
