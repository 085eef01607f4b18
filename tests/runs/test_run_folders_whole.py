"""Run folders and exports appear whole: killed at the new fault points, a command leaves nothing a
"newest run" choice picks (only a hidden partial folder, cleaned by the next run), and running it
again succeeds."""
import glob
import os
import signal
import subprocess

import pytest
from helpers import CNN_CODES, FAST, ROOT, fake_codes, user_env

from pipeline._faults import RUN_POINTS
from pipeline._records import PARTIAL, assembled_run, clean_partial_runs
from pipeline.codes import generate_codes

pytestmark = pytest.mark.slow


def cnn(*args, fault=None, sig="KILL"):
    env = user_env()
    if fault:
        env.update(CNN_CODES_FAULT=fault, CNN_CODES_FAULT_SIGNAL=sig)
    return subprocess.run([CNN_CODES, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def newest(runs, pattern="*-fake-prototype"):
    """What make predict picks: the last of $(sort $(wildcard runs/*-<backbone>-<head>))."""
    found = sorted(glob.glob(str(runs / pattern)))
    return found[-1] if found else None


@pytest.mark.parametrize("point,sig", [("run-head-saved", "KILL"), ("run-assembled", "KILL"),
                                       ("run-head-saved", "INT"), ("run-assembled", "INT")])
def test_a_killed_train_leaves_no_run_to_pick(tmp_path, point, sig):
    codes, _, _ = fake_codes(tmp_path / "codes.h5")
    runs = tmp_path / "runs"
    killed = cnn("train", "--codes", codes, "--head", "prototype", "--runs-dir", runs, fault=point, sig=sig)
    assert killed.returncode == (-9 if sig == "KILL" else 130), killed.stderr
    visible = [p for p in runs.glob("*/record.json") if not p.parent.name.startswith(".")]
    assert newest(runs) is None and not visible  # nothing for a chooser
    partial = list(runs.glob(PARTIAL + "*"))
    assert len(partial) == (1 if sig == "KILL" else 0)  # Ctrl-C deletes its own; a kill leaves a hidden one
    again = cnn("train", "--codes", codes, "--head", "prototype", "--runs-dir", runs)
    assert again.returncode == 0, again.stderr
    run = newest(runs)
    assert run and {"record.json", "report.html", "predictions.csv", "head.json"} <= set(os.listdir(run))
    assert not list(runs.glob(PARTIAL + "*"))  # the killed run's leftovers are gone
    compare = cnn("compare", "--runs-dir", runs)
    assert compare.returncode == 0 and compare.stdout.count("| head-on-codes |") == 1, compare.stdout


def test_a_killed_export_leaves_no_model_file_and_runs_again(images, tmp_path):
    codes = generate_codes(images, cache_dir=tmp_path / "cache", **FAST)[0]
    runs = tmp_path / "runs"
    assert cnn("train", "--codes", codes, "--head", "prototype", "--runs-dir", runs).returncode == 0
    run = newest(runs, "*-efficientnet_lite0-prototype")
    killed = cnn("export", run, "--formats", "tflite", "--check-images", 4, fault="export-tmp-written")
    assert killed.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(run, "model.keras"))  # no 0-byte model to block the next export
    again = cnn("export", run, "--formats", "tflite", "--check-images", 4)
    assert again.returncode == 0, again.stderr
    assert os.path.getsize(os.path.join(run, "model.keras")) > 10_000
    assert not [f for f in os.listdir(run) if f.endswith(".tmp.keras")]  # the killed export's file is gone
    assert {"model.tflite", "labels.txt", "exports.json"} <= set(os.listdir(run))


def test_partial_folders_of_live_processes_are_kept(tmp_path):
    runs = tmp_path / "runs"
    with assembled_run(runs, "x") as run:
        (run.path / "record.json").write_text("{}")
        clean_partial_runs(runs)  # this process is alive: its partial folder stays
        assert run.path.is_dir() and run.path.name.startswith(PARTIAL)
    assert run.path.is_dir() and not run.path.name.startswith(".") and run.path.name.endswith("-x")
    with pytest.raises(RuntimeError):
        with assembled_run(runs, "y") as failed:
            raise RuntimeError("boom")
    assert not failed.path.exists() and sorted(os.listdir(runs)) == [run.path.name]
    assert set(RUN_POINTS) >= {"run-head-saved", "run-assembled", "export-tmp-written"}
