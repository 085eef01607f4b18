"""Nothing loaded from a run folder, model file or weight file runs code from it.

Each crafted file is first shown to be really malicious (the unsafe way of loading it runs its
payload), then fed to every entry point that loads that kind of file: one line, exit 2, and the
payload did not run.
"""
import io
import json
import pickle
import shutil

import numpy as np
import pytest
from helpers import FAST

from pipeline.backbones import load_legacy_state_dict
from pipeline.backbones._torch_pickle import LEGACY_MAGIC
from pipeline.cli.main import main, run_cli
from pipeline.codes import generate_codes
from pipeline.deploy import META_NAME, save_model
from pipeline.runs import train


class Payload:
    """Unpickling this writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def lambda_model(marker, n_values=1280, n_classes=3):
    """A Keras model whose Lambda layer writes the marker when the model is rebuilt or called."""
    import keras  # (in the test: collecting the suite imports no TensorFlow)

    fn = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")
    inputs = keras.Input((n_values,))
    outputs = keras.layers.Dense(n_classes, activation="softmax")(keras.layers.Lambda(fn)(inputs))
    return keras.Model(inputs, outputs)


def cli(module, argv, capsys):
    with pytest.raises(SystemExit) as ex:
        run_cli(main, [module, *map(str, argv)])
    err = capsys.readouterr().err
    return ex.value.code, err


def assert_refused(module, argv, capsys, marker, expect):
    code, err = cli(module, argv, capsys)
    if module == "report" and code == 0:  # the report needs no head: without one, no gallery (and nothing run)
        assert not marker.exists() and "Traceback" not in err and (argv[0] / "report.html").is_file(), err
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert "Traceback" not in err
    assert not marker.exists(), f"{module} {argv} ran the payload"


@pytest.fixture
def run_folder(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path / "cache", **FAST)[0]
    run_dir = train(path, 'logreg', runs_dir=tmp_path / 'runs', Cs=(1.0,)).path
    return run_dir


def shared_run(run_folder, tmp_path, name):
    """A copy of a real run folder, as someone would share it, its head files removed (and its
    predictions, which the report then recomputes from the head)."""
    evil = tmp_path / name
    shutil.copytree(run_folder, evil)
    for f in ("head.npz", "head.json", "head.keras", "predictions.csv"):
        (evil / f).unlink(missing_ok=True)
    return evil


def entry_points_on(run, images):
    return [("predict", [images / "class0" / "img000.JPG", "--model", run]),
            ("export", [run]),
            ("finetune", [run, "--epochs", "1", "--no-progress"]),
            ("report", [run])]


def test_a_pickled_head_is_refused_everywhere(run_folder, images, tmp_path, capsys):
    marker = tmp_path / "ran-pickle"
    evil = shared_run(run_folder, tmp_path, "pickled")
    (evil / "head.joblib").write_bytes(pickle.dumps(Payload(marker)))
    pickle.loads((evil / "head.joblib").read_bytes())
    assert marker.exists(), "the crafted pickle must be malicious"
    marker.unlink()
    for module, argv in entry_points_on(evil, images):
        assert_refused(module, argv, capsys, marker, "is a pickle")
    code, err = cli("compare", [evil], capsys)  # reads the record only: the table, and nothing run
    assert code == 0 and not marker.exists() and "Traceback" not in err


def test_a_pickle_inside_the_head_arrays_is_refused(run_folder, images, tmp_path, capsys):
    marker = tmp_path / "ran-npz"
    evil = shared_run(run_folder, tmp_path, "npz")
    shutil.copy(run_folder / "head.json", evil / "head.json")
    np.savez(evil / "head.npz", mean=np.array([Payload(marker)], dtype=object))
    np.load(evil / "head.npz", allow_pickle=True)["mean"]
    assert marker.exists()
    marker.unlink()
    for module, argv in entry_points_on(evil, images):
        assert_refused(module, argv, capsys, marker, "head.npz")


def test_a_keras_head_with_code_inside_is_refused(run_folder, images, tmp_path, capsys):
    import keras  # (in the test: collecting the suite imports no TensorFlow)

    marker = tmp_path / "ran-lambda-head"
    evil = shared_run(run_folder, tmp_path, "lambda-head")
    lambda_model(marker).save(evil / "head.keras")
    (evil / "head.json").write_text(json.dumps({"head": "softmax", "params": {}, "state": {}}))
    marker.unlink()
    keras.saving.load_model(evil / "head.keras", safe_mode=False)
    assert marker.exists()
    marker.unlink()
    for module, argv in entry_points_on(evil, images):
        assert_refused(module, argv, capsys, marker, "was not loaded")


def test_a_model_file_with_code_inside_is_refused(images, tmp_path, capsys):
    marker = tmp_path / "ran-lambda-model"
    path = save_model(lambda_model(marker, n_values=32 * 32 * 3), tmp_path / "evil.keras", ["a", "b", "c"],
                      {"image_size": 32, "kind": "scratch"})
    marker.unlink()
    assert_refused("predict", [images, "--model", path], capsys, marker, "was not loaded")


def test_a_malformed_record_or_model_is_one_line(run_folder, images, tmp_path, capsys):
    bad = shared_run(run_folder, tmp_path, "bad-record")
    (bad / "record.json").write_text("{not json")
    marker = tmp_path / "never"
    for module, argv in entry_points_on(bad, images) + [("compare", [bad])]:
        assert_refused(module, argv, capsys, marker, "record.json")
    (tmp_path / "empty.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    assert_refused("predict", [images, "--model", tmp_path / "empty.keras"], capsys, marker, META_NAME)


def _legacy_file(records) -> bytes:
    buf = io.BytesIO()
    for r in records:
        buf.write(r if isinstance(r, bytes) else pickle.dumps(r, protocol=2))
    return buf.getvalue()


@pytest.mark.parametrize("where", ["magic", "protocol", "sys_info", "state_dict", "keys"])
def test_every_record_of_a_legacy_weight_file_is_unpickled_safely(where, tmp_path):
    marker = tmp_path / f"ran-{where}"
    records = {"magic": LEGACY_MAGIC, "protocol": 1001, "sys_info": {"little_endian": True},
               "state_dict": {}, "keys": []}
    records[where] = Payload(marker)
    path = tmp_path / "weights.pth"
    path.write_bytes(_legacy_file(records.values()))
    with pytest.raises(pickle.UnpicklingError, match="unsupported object"):
        load_legacy_state_dict(str(path))
    assert not marker.exists()
    with open(path, "rb") as fh:  # the plain unpickler would have run it
        while not marker.exists():
            pickle.load(fh)
