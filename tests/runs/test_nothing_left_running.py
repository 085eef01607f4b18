"""Ctrl-C during a sweep ends its worker processes with it (they once ran on for about 50 s)."""
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CNN_CODES, ROOT, fake_codes, user_env

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: each process's children)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - found)
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent has not read its status


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_ctrl_c_during_a_sweep_leaves_no_worker_running(tmp_path):
    codes, _, _ = fake_codes(tmp_path / "codes.h5", per_class=(300, 300, 300, 300), dim=256)
    proc = subprocess.Popen([CNN_CODES, "sweep", "--codes", str(codes), "--heads", "mlp", "--repeats", "50",
                             "--jobs", "2", "--runs-dir", str(tmp_path / "runs"), "--no-progress"],
                            cwd=ROOT, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = set()
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        workers = {p for p in descendants(proc.pid) if alive(p)}
        time.sleep(0.5)
    assert len(workers) >= 2, "the sweep never started its workers"
    time.sleep(2)  # the workers are busy
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    ended = time.time()
    while time.time() < ended + 5 and any(alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if alive(p)], "workers still running 5 s after the command ended"
    assert not list((tmp_path / "runs").glob("*/summary.json"))
