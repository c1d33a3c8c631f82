"""The Code tab on a system that cannot isolate the sandbox: it asks once per session, and only runs
the code after a yes. The system is real: a child process in its own user namespace that allows no
namespaces below it (as on a machine with user namespaces switched off)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from app.bench.sandbox import _APP_PATH

SCRIPT = textwrap.dedent(r'''
    import ctypes, json, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        print(json.dumps({"skip": os.strerror(ctypes.get_errno())}))
        sys.exit(0)
    inner = 1000 if outer_uid == 0 else outer_uid  # not "root" inside: the sandbox's ordinary-user path
    for name, text in (("setgroups", "deny"), ("uid_map", f"{inner} {outer_uid} 1"),
                       ("gid_map", f"{inner} {outer_gid} 1"), ("../sys/user/max_user_namespaces", "0")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    sys.path.insert(0, sys.argv[2])
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    app = QApplication([])
    from app.tasks import get_task
    from app.ui.code_tab import CodeTab
    from app.ui.engine_host import EngineHost

    yes = sys.argv[1] == "yes"
    asked = []

    def answer(tries=1000):
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            asked.append(box.text())
            box.button(QMessageBox.StandardButton.Yes if yes else QMessageBox.StandardButton.No).click()
        elif tries:
            QTimer.singleShot(30, lambda: answer(tries - 1))

    tab = CodeTab(get_task("code"), EngineHost())
    tab.texts = ["```python\nprint('answer', 6 * 7)\n```"]
    tab.render()
    outs = []
    for _ in range(2):
        QTimer.singleShot(30, answer)
        tab.run_code()
        end = time.time() + 60
        while time.time() < end and (not tab.run_btn.isEnabled()
                                     or tab.sandbox_output.toPlainText().startswith("running")):
            app.processEvents()
            time.sleep(0.01)
        outs.append(tab.sandbox_output.toPlainText())
    print(json.dumps({"asked": asked, "outs": outs}))
''')


def _session(answer: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, answer, _APP_PATH], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"no user namespace for the test itself: {out['skip']}")
    return out


def test_unisolated_code_runs_only_after_one_yes():
    out = _session("yes")
    assert len(out["asked"]) == 1 and "cannot be isolated" in out["asked"][0]
    first, second = out["outs"]
    assert "answer 42" in first and "not isolated: it ran with your own permissions" in first
    assert "answer 42" in second  # the answer holds for the session: no second question


def test_unisolated_code_is_not_run_after_a_no():
    out = _session("no")
    assert len(out["asked"]) == 1
    for text in out["outs"]:
        assert "status: not isolated" in text and "answer 42" not in text


def test_isolated_code_runs_without_asking(qtbot):
    from app.bench.sandbox import run_python

    if not run_python("pass").isolated:
        pytest.skip("this system cannot isolate the sandbox")
    from app.tasks import get_task
    from app.ui.code_tab import CodeTab
    from app.ui.engine_host import EngineHost

    tab = CodeTab(get_task("code"), EngineHost())
    qtbot.addWidget(tab)
    tab.texts = ["```python\nimport os\nprint(os.listdir('/home') if os.path.exists('/home') else 'no home')\n```"]
    tab.render()
    tab.run_code()
    qtbot.waitUntil(lambda: tab.run_btn.isEnabled() and not tab.sandbox_output.toPlainText().startswith("running"),
                    timeout=30_000)
    out = tab.sandbox_output.toPlainText()
    assert "status: passed" in out and "no home" in out and "not isolated" not in out
    assert os.path.isdir("/home")  # it exists out here
