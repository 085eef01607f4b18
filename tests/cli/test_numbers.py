"""Every number an option takes is checked before any work: finite, in range, a whole number where
it must be; one error line naming the flag, exit 2 (and the same checks in the library)."""
import numpy as np
import pytest
from helpers import FAST, fake_codes, user_error_lines

from pipeline.cli.main import main, run_cli
from pipeline.codes import generate_codes
from pipeline.errors import ParameterError
from pipeline.heads import LogRegHead, SoftmaxHead
from pipeline.runs import sweep, train

CASES = [("codes", "--seed", "-1"), ("codes", "--seed", "2.5"), ("codes", "--seed", str(2**32)),
         ("train", "--seed", "-1"), ("sweep", "--seed", "-7"), ("audit", "--seed", "-1"),
         ("train", "--learning-rate", "inf"), ("train", "--learning-rate", "nan"), ("train", "--min-delta", "inf"),
         ("train", "--Cs", "1", "nan"), ("train", "--dropout", "-inf"), ("audit", "--threshold", "nan"),
         ("audit", "--outlier-fraction", "inf"), ("finetune", "--learning-rate", "inf"),
         ("scratch", "--strength", "nan"), ("codes", "--image-size", "0"), ("codes", "--image-size", "-3"),
         ("train", "--cv", "1"), ("train", "--cv", "0")]


@pytest.mark.parametrize("case", CASES, ids=" ".join)
def test_bad_numbers_are_one_line(case, capsys):
    command, flag, *values = case
    args = [command, *(["runs/none"] if command == "finetune" else []), flag, *values]
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and user_error_lines(err) == err.strip().splitlines() and flag in err, err


def test_the_library_checks_seeds_and_finite_numbers_before_work(images, tmp_path):
    with pytest.raises(ParameterError, match="seed"):
        generate_codes(images, seed=-1, cache_dir=tmp_path / "cache", **FAST)
    assert not (tmp_path / "cache").exists()  # refused before anything was made
    codes, _, _ = fake_codes(tmp_path / "codes.h5")
    for params in ({"seed": -1}, {"Cs": (1.0, float("nan"))}, {"Cs": (float("inf"),)}):
        with pytest.raises(ValueError, match="seed|Cs"):  # ParameterError, or the head's own (a ValueError)
            train(codes, "logreg", runs_dir=tmp_path / "runs", **params)
    with pytest.raises(ParameterError, match="seed"):
        sweep([codes], heads=("logreg",), seed=-1, runs_dir=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.repeat([0, 1], 10)
    for bad in (SoftmaxHead(learning_rate=float("inf")), SoftmaxHead(min_delta=float("inf")), LogRegHead(seed=-2)):
        with pytest.raises(ValueError):
            bad.fit(X, y)
