"""Training end to end on tiny models: both engines learn a memorizable set and then answer it,
the adapter is registered and served (`loradesk ask`), and an interrupted run resumes from its
checkpoint and ends at the target step."""
from __future__ import annotations

import json
import threading

import pytest

from app import store
from app.engine.adapter_format import read_adapter
from app.engine.lora import METADATA_FILE
from app.tasks import get_task
from training import api
from training.checkpoints import TrainingCancelled, resumable_runs
from training.config import TrainConfig

# Two GSM8K-schema rows (the hub's <<a=b>> annotations) a tiny model can memorize in a few dozen steps.
MEMO = [("What is 2 plus 3?", "2+3 = <<2+3=5>>5\n#### 5", "2+3 = «2+3=5»5\n#### 5"),
        ("How many legs does a cat have?", "A cat has 4 legs.\n#### 4", "A cat has 4 legs.\n#### 4")]
# Adam steps differ: mlx-lm's Adam has no bias correction (larger early steps), torch's has.
LR = {"mlx": 3e-3, "torch": 1e-2}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matmuls on 2 shared cores: two threads spin against each other (30x slower here)."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def memo_data(tmp_path):
    f = tmp_path / "memo" / "gsm8k_train.jsonl"
    f.parent.mkdir()
    f.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a, _ in MEMO))
    return f.parent


def config(model, engine, data, **kw) -> TrainConfig:
    base = dict(model=str(model), engine=engine, data=(str(data),), iters=40, batch_size=2, rank=16, alpha=32,
                dropout=0.0, learning_rate=LR[engine], max_seq_length=256, eval_every=10, save_every=10)
    return TrainConfig.for_task("math", **{**base, **kw})


def greedy(engine, question: str) -> str:
    task = get_task("math")
    return engine.generate(task.messages(question), task.generation.replace(max_tokens=24))


def train_losses(reports) -> list[float]:
    return [r.loss for r in reports if r.phase == "train"]


def test_mlx_qlora_memorizes_registers_and_serves(tiny_qwen_4bit, memo_data, capsys):
    from app.cli import main
    from app.engine import create_engine

    reports = []
    folder = api.train(config(tiny_qwen_4bit, "mlx", memo_data), callback=reports.append)
    losses = train_losses(reports)
    assert len(losses) == 40 and [r.step for r in reports if r.phase == "train"] == list(range(1, 41))
    assert losses[0] > 5 and max(losses[-5:]) < 1.2  # from chance (ln 512 ~ 6.2) to memorized
    assert reports[-1].phase == "done" and reports[-1].step == 40

    # self-describing, registered as the task's current adapter
    assert store.current("math").path == folder and store.current("math").source == "trained"
    assert {p.name for p in folder.iterdir()} == {"adapters.safetensors", "adapter_config.json", METADATA_FILE}
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["base_model"] == str(tiny_qwen_4bit) and meta["fingerprint"]["hidden_size"] == 64
    assert meta["steps"] == 40 and meta["final_train_loss"] == pytest.approx(losses[-1])
    assert meta["tokens_per_s"] > 0 and meta["examples"]["train"] == 2 and len(meta["base_config_sha256"]) == 64
    assert meta["datasets"]["openai/gsm8k"]["rows"] == 2 and len(meta["loss_curve"]) == 40
    w = read_adapter(folder)
    assert w.format == "mlx" and w.rank == 16 and w.scale == 2.0 and len(w.modules) == 2 * 7

    engine = create_engine("mlx")
    engine.load(tiny_qwen_4bit)
    engine.add_adapter("math", folder)
    engine.activate("math")
    for question, _, answer in MEMO:
        assert greedy(engine, question).startswith(answer)
    engine.activate(None)
    assert not greedy(engine, MEMO[0][0]).startswith(MEMO[0][2])

    # `loradesk ask --task math` picks the new adapter up from the store
    capsys.readouterr()
    assert main(["ask", "--task", "math", "--engine", "mlx", "--model", str(tiny_qwen_4bit), "--max-tokens", "24",
                 MEMO[1][0]]) == 0
    assert capsys.readouterr().out.startswith(MEMO[1][2])


def _torch_answers(model_dir, folder) -> list[str]:
    """Greedy answers through the torch engine if it is built, else PEFT directly."""
    try:
        from app.engine import create_engine

        engine = create_engine("torch")
        engine.load(model_dir)
        engine.add_adapter("math", folder)
        engine.activate("math")
        return [greedy(engine, q) for q, _, _ in MEMO]
    except ImportError:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(folder)).eval()
        out = []
        for q, _, _ in MEMO:
            ids = tok.apply_chat_template(get_task("math").messages(q), add_generation_prompt=True, return_tensors="pt",
                                          return_dict=False)
            with torch.no_grad():
                gen = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
            out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out


def test_torch_peft_memorizes_and_loads_in_both_engines(tiny_qwen, memo_data):
    from app.engine import create_engine

    reports = []
    folder = api.train(config(tiny_qwen, "torch", memo_data), callback=reports.append)
    losses = train_losses(reports)
    assert len(losses) == 40 and losses[0] > 5 and max(losses[-5:]) < 1.2
    assert {p.name for p in folder.iterdir()} == {"adapter_model.safetensors", "adapter_config.json", METADATA_FILE}
    assert read_adapter(folder).format == "peft" and store.current("math").path == folder
    for answer, (_, _, expected) in zip(_torch_answers(tiny_qwen, folder), MEMO):
        assert answer.startswith(expected)
    # the PEFT folder serves in the MLX engine too (same weights, converted on load)
    mlx = create_engine("mlx")
    mlx.load(tiny_qwen)
    mlx.add_adapter("math", folder)
    mlx.activate("math")
    assert greedy(mlx, MEMO[0][0]).startswith(MEMO[0][2])


def cancel_at(step: int, reports: list):
    cancel = threading.Event()

    def callback(r):
        reports.append(r)
        if r.phase == "train" and r.step == step:
            cancel.set()

    return callback, cancel


@pytest.mark.parametrize("engine", ["mlx", "torch"])
def test_resume_continues_from_the_checkpoint(engine, tiny_qwen, memo_data):
    cfg = config(tiny_qwen, engine, memo_data, iters=20, save_every=5, name=f"resume-{engine}")
    first: list = []
    callback, cancel = cancel_at(7, first)
    with pytest.raises(TrainingCancelled) as stopped:
        api.train(cfg, callback=callback, cancel=cancel)
    assert stopped.value.step == 7 and first[-1].phase == "cancelled"
    run = stopped.value.run
    assert [c.step for c in run.checkpoints()] == [5, 7] and run.info()["status"] == "cancelled"
    assert resumable_runs("math")[0].path == run.path
    assert store.current("math") is None  # nothing registered from an unfinished run

    second: list = []
    folder = api.resume("math", callback=second.append)
    steps = [r.step for r in second if r.phase == "train"]
    assert steps == list(range(8, 21))  # continues at step 8, ends at the target
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["steps"] == 20 and [s for s, _ in meta["loss_curve"]] == list(range(1, 21))
    assert run.info()["status"] == "done" and not (run.path / "checkpoints").exists()
    assert store.current("math").path == folder

    if engine == "mlx":  # resuming is exact: the same losses as an uninterrupted run
        straight: list = []
        api.train(cfg.replace(name="straight"), callback=straight.append)
        want = [r.loss for r in straight if r.phase == "train"][7:]
        assert [r.loss for r in second if r.phase == "train"] == pytest.approx(want, rel=2e-3)


def test_resume_after_a_crash_uses_the_last_complete_checkpoint(tiny_qwen, memo_data):
    cfg = config(tiny_qwen, "mlx", memo_data, iters=12, save_every=4, name="crash")
    callback, cancel = cancel_at(6, [])
    with pytest.raises(TrainingCancelled) as stopped:
        api.train(cfg, callback=callback, cancel=cancel)
    run = stopped.value.run
    (run.path / "checkpoints" / "step-0000006" / "state.json").unlink()  # a write cut short by a crash
    reports: list = []
    api.resume("math", run.path, callback=reports.append)
    assert [r.step for r in reports if r.phase == "train"][0] == 5


def test_resume_without_a_run_and_with_changed_data(tiny_qwen, memo_data):
    from app.errors import EngineError

    with pytest.raises(EngineError, match="no interrupted training of task 'math' to resume"):
        api.resume("math")
    callback, cancel = cancel_at(3, [])
    with pytest.raises(TrainingCancelled):
        api.train(config(tiny_qwen, "mlx", memo_data, iters=10, save_every=5), callback=callback, cancel=cancel)
    f = memo_data / "gsm8k_train.jsonl"
    f.write_text(f.read_text() + json.dumps({"question": "What is 1 plus 1?", "answer": "#### 2"}) + "\n")
    with pytest.raises(EngineError, match="the training data changed"):
        api.resume("math")


def test_bad_data_fails_before_training(tiny_qwen, tmp_path):
    bad = tmp_path / "gsm8k_train.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(ValueError, match="gsm8k_train.jsonl row 2: missing field 'answer'"):
        api.train(config(tiny_qwen, "mlx", bad))
    assert store.current("math") is None


def test_cli_train_shows_progress_and_ctrl_c_leaves_a_checkpoint(tiny_qwen, memo_data, capsys, loradesk_home):
    import os
    import signal
    import time

    from app.cli import main
    from training.cli import run_interruptible

    assert main(["train", "--task", "math", "--engine", "mlx", "--model", str(tiny_qwen), "--data", str(memo_data),
                 "--iters", "12", "--batch-size", "2", "--eval-every", "5"]) == 0
    out = capsys.readouterr()
    folder = out.out.strip().splitlines()[-1]
    assert store.current("math").path.as_posix() == folder
    assert "12/12" in out.err and "trained the math adapter" in out.err  # tqdm bar, then the summary

    # Ctrl-C during a real run: sent once its first checkpoint is on disk (so the run is under way
    # and the handler installed), never after a fixed time. The run stops after its step and says
    # where its checkpoint is.
    runs = loradesk_home / "runs" / "train" / "math"
    sent, before = threading.Event(), signal.getsignal(signal.SIGINT)

    def interrupt_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(runs.glob("*/checkpoints/step-*/state.json")):
            time.sleep(0.05)
        sent.set()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_first_checkpoint, daemon=True).start()
    assert main(["train", "--task", "math", "--engine", "mlx", "--model", str(tiny_qwen), "--data", str(memo_data),
                 "--iters", "100000", "--batch-size", "2", "--save-every", "2", "--eval-every", "100000",
                 "--name", "interrupted"]) == 130
    assert sent.is_set()
    err = capsys.readouterr().err
    assert "stopping after the current step and saving a checkpoint" in err
    step = int(err.split("training stopped at step ")[1].split("/")[0])
    assert 2 <= step < 100000 and "continue with: loradesk train --task math --resume" in err
    assert (runs / "interrupted" / "checkpoints" / f"step-{step:07d}" / "state.json").exists()

    # A second Ctrl-C aborts at once.
    cancel = threading.Event()

    def job():
        os.kill(os.getpid(), signal.SIGINT)
        assert cancel.wait(60), "Ctrl-C did not reach the training job"
        os.kill(os.getpid(), signal.SIGINT)
        return "not reached"

    with pytest.raises(KeyboardInterrupt):
        run_interruptible(job, cancel)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back


def test_bench_reads_mlx_lm_reports():
    from training.bench import _ANSI, _RAW_LINE, window_means

    line = "  \x1b[38;5;244m  20\x1b[0m    \x1b[1;32m5.730 ▼\x1b[0m    \x1b[1m 1,097\x1b[0m    \x1b[38;5;244m  5.9k\x1b[0m"
    m = _RAW_LINE.match(_ANSI.sub("", line))
    assert m and (m.group(1), m.group(2), m.group(3)) == ("20", "5.730", "1,097")
    assert window_means([(10, 50.0), (20, 100.0), (30, 110.0)]) == 105.0  # the first window is compile time
    with pytest.raises(RuntimeError, match="too short"):
        window_means([(10, 50.0)])


def test_dora_trains_but_is_kept_out_of_the_store(tiny_qwen, memo_data):
    from app.errors import AdapterError

    reports: list = []
    folder = api.train(config(tiny_qwen, "mlx", memo_data, iters=3, fine_tune_type="dora"), callback=reports.append)
    assert json.loads((folder / "adapter_config.json").read_text())["fine_tune_type"] == "dora"
    assert store.current("math") is None and folder.parent.parent.name == "math"  # in the run folder
    assert any(r.phase == "note" and "DoRA adapters cannot be hot-swapped" in r.message for r in reports)
    with pytest.raises(AdapterError, match="cannot be hot-swapped"):
        read_adapter(folder)


@pytest.mark.parametrize("engine", ["mlx", "torch"])
def test_gradient_checkpointing_gives_the_same_losses(engine, tiny_qwen, memo_data):
    runs = []
    for checkpointing in (False, True):
        reports: list = []
        api.train(config(tiny_qwen, engine, memo_data, iters=4, grad_checkpoint=checkpointing,
                         name=f"gc-{engine}-{checkpointing}", register=False), callback=reports.append)
        runs.append(train_losses(reports))
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)  # recomputation, not another model
