"""Errors a user can cause: one line on stderr, exit code 2, never a traceback."""
import pytest

from pipeline._files import writable_folder
from pipeline.cli.main import run_cli
from pipeline.errors import UserError


def _exit(main, capsys):
    with pytest.raises(SystemExit) as ex:
        run_cli(main, [])
    return ex.value.code, capsys.readouterr().err


def test_user_errors_and_file_system_errors_are_one_line(tmp_path, capsys):
    def bad_option(argv):
        raise UserError("--thing 3: too many")
    assert _exit(bad_option, capsys) == (2, "error: --thing 3: too many\n")

    def file_where_a_folder_belongs(argv):
        (tmp_path / "f").write_text("x")
        (tmp_path / "f" / "out.csv").write_text("y")
    code, err = _exit(file_where_a_folder_belongs, capsys)
    assert code == 2 and err.startswith("error: Not a directory: ") and err.count("\n") == 1


def test_programming_errors_still_raise(capsys):
    def bug(argv):
        raise OSError("something odd")  # no errno: not a user's doing
    with pytest.raises(OSError):
        run_cli(bug, [])
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda argv: 1 / 0, [])


def test_writable_folder(tmp_path):
    assert writable_folder(tmp_path / "a" / "b", "--runs-dir").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--runs-dir .*file, not a folder"):
        writable_folder(tmp_path / "file", "--runs-dir")
    with pytest.raises(UserError, match="cannot make that folder"):
        writable_folder(tmp_path / "file" / "sub", "--runs-dir")


def test_a_parameter_error_names_the_parameter_and_the_cli_the_flag(capsys):
    from pipeline.cli import flag_of
    from pipeline.errors import ParameterError

    def bad(argv):
        raise ParameterError("decode_threads", "must be at least 1")
    assert _exit(bad, capsys) == (2, "error: --decode-threads must be at least 1\n")
    assert str(ParameterError("decode_threads", "must be at least 1")) == "decode_threads must be at least 1"
    assert flag_of("n_jobs") == "--jobs" and flag_of("image_size") == "--image-size"
    assert flag_of("image_size", "scratch") == "--train-size"  # a command whose flag is its own


@pytest.mark.parametrize("argv, line", [
    (["codes", "--workers", "0"], "error: --workers must be at least 1"),
    (["codes", "--max-parts", "1"], "error: --max-parts must be at least 2"),
    (["scratch", "--codes", "missing.h5", "--train-size", "8"], "error: --train-size 8: the from-scratch CNN needs"),
    (["sweep", "--codes", "missing.h5", "--jobs", "0"], "error: --jobs 0: give a number of worker processes"),
])
def test_the_command_line_names_the_flag_the_user_typed(argv, line, capsys, tmp_path, monkeypatch):
    from pipeline.cli.main import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ex:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.startswith(line) and err.count("\n") == 1, err
