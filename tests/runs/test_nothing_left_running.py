"""Ctrl-C or SIGTERM during a sweep or a stage-1 run on Ray ends its worker processes with it
(a sweep's once ran on for about 50 s), each checked by PID."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CNN_CODES, ROOT, fake_codes, make_images, user_env

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


SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


def stop_and_check(proc, workers_wanted: int, sig, code: int, word: str, settle: float = 2.0,
                   busy=lambda: True, group: bool = False) -> set[int]:
    """Wait for ``workers_wanted`` child processes and for ``busy()`` (proof of work under way),
    send ``sig`` (to the command alone, or with ``group`` to its whole process group, as a
    terminal's Ctrl-C does), check the command ended with ``code`` and one line starting with
    ``word``, no traceback, and that none of its children is alive 5 s later."""
    workers = set()
    deadline = time.time() + 180
    while time.time() < deadline and (len(workers) < workers_wanted or not busy()):
        workers = {p for p in descendants(proc.pid) if alive(p)}
        assert proc.poll() is None, "the command ended before it could be stopped"
        time.sleep(0.5)
    assert len(workers) >= workers_wanted and busy(), "the command never started its workers"
    time.sleep(settle)  # the workers are busy
    workers |= {p for p in descendants(proc.pid) if alive(p)}
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    proc.wait(timeout=120)  # (the command's end: a worker left running would hold the pipes open on)
    ended = time.time()
    while time.time() < ended + 5 and any(alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if alive(p)]
    out, err = proc.communicate(timeout=120)
    assert not left, "workers still running 5 s after the command ended"
    assert proc.returncode == code and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(word), err
    assert len([l for l in err.splitlines() if l.strip()]) == 1, err  # that line alone: no worker's words
    return workers


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig, code, word", SIGNALS)
@pytest.mark.parametrize("group", [False, True], ids=["the command", "its process group"])
def test_a_signal_during_a_sweep_leaves_no_worker_running(tmp_path, sig, code, word, group):
    codes, _, _ = fake_codes(tmp_path / "codes.h5", per_class=(300, 300, 300, 300), dim=256)
    proc = subprocess.Popen([CNN_CODES, "sweep", "--codes", str(codes), "--heads", "mlp", "--repeats", "50",
                             "--jobs", "2", "--runs-dir", str(tmp_path / "runs"), "--no-progress"],
                            cwd=ROOT, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)  # (a group of its own, as a terminal gives a command)
    stop_and_check(proc, 2, sig, code, word, group=group)
    assert not list((tmp_path / "runs").glob("*/summary.json"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig, code, word", SIGNALS)
def test_a_signal_during_stage_1_on_ray_leaves_no_process_running(tmp_path, sig, code, word):
    pytest.importorskip("ray")
    data = make_images(tmp_path / "data", n_classes=2, per_class=400)
    proc = subprocess.Popen([CNN_CODES, "codes", "--data", str(data), "--cache-dir", str(tmp_path / "cache"),
                             "--weights", "none", "--image-size", "224", "--engine", "ray", "--workers", "2",
                             "--batch-size", "4", "--partition-size", "16", "--no-progress"],
                            cwd=ROOT, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Ray's own processes (its store, scheduler, the two actors) and the decoders: all end with it.
    # Signalled once the first parts are saved (the actors computing), not after a fixed time: on
    # a fast machine 800 small images were all done before a fixed wait ended.
    def busy():
        return len(list((tmp_path / "cache").glob("*/*/*.parts/*"))) >= 2
    workers = stop_and_check(proc, 5, sig, code, word, settle=1.0, busy=busy)
    assert len(workers) >= 5
