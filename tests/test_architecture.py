"""The house's rules, checked so that it cannot drift back: the layers and private modules of
pyproject.toml's import-linter contracts, the allocator left alone by the library, and no public
function with a parameter list over 12 (records instead)."""
import ast
import dataclasses
import importlib
import inspect
import pkgutil
import shutil

import pytest
from pathlib import Path


import pipeline

ROOT = Path(__file__).resolve().parents[1]
MAX_PARAMETERS = 12


def lint_imports(project: Path) -> tuple[int, str]:
    """import-linter's verdict on the package in ``project`` with its pyproject.toml: (exit code, report)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--no-cache"],
                          cwd=project, capture_output=True, text=True, env={"PYTHONPATH": str(project), "PATH": ""})
    return done.returncode, done.stdout + done.stderr


def test_the_import_contracts_are_kept():
    code, report = lint_imports(ROOT)
    assert code == 0, report
    assert "3 kept, 0 broken" in report, report


def test_the_contracts_reject_a_private_import_in_any_form_an_upward_one_and_a_circle(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    breaches = {"heads/_scaling.py": "from pipeline.codes._worker import Worker",
                "reports/_safe.py": "from pipeline.codes import _worker",
                "label/_pages.py": "import pipeline.quality._neighbours",
                "data/_paths.py": "from pipeline.codes import CodeSet",  # data is below codes
                "codes/_settings.py": "from pipeline.codes._format import CHUNK"}  # _format reads _settings
    for name, line in breaches.items():
        path = tmp_path / "pipeline" / name
        path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    code, report = lint_imports(tmp_path)
    assert code == 1, report
    assert "0 kept, 3 broken" in report, report
    for importer, imported in (("pipeline.heads._scaling", "pipeline.codes._worker"),
                               ("pipeline.reports._safe", "pipeline.codes._worker"),
                               ("pipeline.label._pages", "pipeline.quality._neighbours"),
                               ("pipeline.data._paths", "pipeline.codes")):
        assert f"{importer} -> {imported}" in report, (importer, report)
    assert "- ._settings -> ._format" in report.split("No cycles are allowed in pipeline.codes.")[-1], report


def _calls(tree: ast.AST) -> set[str]:
    return {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            for n in ast.walk(tree) if isinstance(n, ast.Call)}


def test_the_library_leaves_the_allocator_alone():
    """Only the command-line tool's own process tunes glibc's allocator (pipeline/cli), for stage 1."""
    tuned = {str(p.relative_to(ROOT)) for p in (ROOT / "pipeline").rglob("*.py")
             if {"mallopt", "malloc_trim"} & _calls(ast.parse(p.read_text()))}
    assert tuned == {"pipeline/cli/codes.py"}


def public_functions():
    """(name, function) of every function and public method the subpackages' faces export (a
    record's generated __init__ is its fields, not a parameter list)."""
    for sub in pkgutil.iter_modules(pipeline.__path__):
        if sub.name.startswith("_") or sub.name == "cli":
            continue
        face = importlib.import_module(f"pipeline.{sub.name}")
        for name in face.__all__:
            obj = getattr(face, name)
            if inspect.isfunction(obj):
                yield f"pipeline.{sub.name}.{name}", obj
            elif inspect.isclass(obj) and obj.__module__.startswith("pipeline."):
                for attr, f in vars(obj).items():
                    if inspect.isfunction(f) and (not attr.startswith("_") or attr == "__init__") and not (
                            attr == "__init__" and dataclasses.is_dataclass(obj)):
                        yield f"pipeline.{sub.name}.{name}.{attr}", f


def parameters(f) -> int:
    return sum(p.name not in ("self", "cls") for p in inspect.signature(f).parameters.values())


def test_no_public_function_takes_more_than_12_parameters():
    found = dict(public_functions())
    assert {"pipeline.codes.generate_codes", "pipeline.runs.train", "pipeline.quality.find",
            "pipeline.runs.finish_run", "pipeline.heads.SoftmaxHead.__init__"} <= set(found)
    long = {name: parameters(f) for name, f in found.items() if parameters(f) > MAX_PARAMETERS}
    assert not long


def test_the_parameter_count_sees_a_long_list():
    def long_one(a, b, c, d, e, f, g, h, i, j, k, l, m, *, n=0):  # noqa: E741
        pass
    assert parameters(long_one) == 14 > MAX_PARAMETERS
    assert parameters(importlib.import_module("pipeline.heads").SoftmaxHead.__init__) >= 3


def test_calls_made_with_the_long_lists_keep_working(tmp_path):
    """Parameters that became keyword options (or fields of a record) still bind by position."""
    import numpy as np

    from pipeline.codes import generate_codes
    from pipeline.errors import ParameterError
    from pipeline.quality import AuditSettings, find
    with pytest.raises(ParameterError, match="seed"):  # the 10th positional is still the seed
        generate_codes(tmp_path, "efficientnet_lite0", None, None, "imagenet", None, tmp_path / "cache", (), None, -1)
    with pytest.raises(TypeError, match="at most 13 positional"):
        generate_codes(*[None] * 14)
    with pytest.raises(TypeError, match="multiple values for argument 'seed'"):
        generate_codes(tmp_path, "efficientnet_lite0", None, None, "imagenet", None, "cache", (), None, 1, seed=2)

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(40, 8))
    Z[20:] = Z[:20] + 0.01 * rng.normal(size=(20, 8))  # 20 near-copies
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    y = np.repeat([0, 1], 20)
    by_position = find(Z, y, 2, 0.5, 0.5, 5, 2, 0.1, 1 << 20, 0, False)
    by_record = find(Z, y, 2, settings=AuditSettings(threshold=0.5, cross_threshold=0.5, neighbours=5, folds=2,
                                                     outlier_fraction=0.1), progress=False)
    default = find(Z, y, 2, neighbours=5, folds=2, progress=False)
    assert len(by_position.pairs) == len(by_record.pairs) > len(default.pairs) > 0  # the thresholds given were used


def test_collecting_the_suite_imports_no_tensorflow_openvino_or_ray():
    """Collection stays quick (seconds, not the minute it took): the heavy runtimes are imported
    by the tests that use them, when they run."""
    import subprocess
    import sys
    plugin = ("import sys\n"
              "def pytest_collection_finish(session):\n"
              "    print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'openvino', 'ray', 'onnxruntime', 'torch')"
              " if m in sys.modules))\n")
    folder = ROOT / "tests"
    done = subprocess.run([sys.executable, "-c", "import sys, types, pytest; m = types.ModuleType('heavy'); "
                           f"exec({plugin!r}, m.__dict__); sys.exit(pytest.main(['--collect-only', '-q', '-n', '0', "
                           f"'-p', 'no:cacheprovider', {str(folder)!r}], plugins=[m]))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    heavy = next(line for line in done.stdout.splitlines() if line.startswith("HEAVY"))
    assert heavy == "HEAVY []", heavy
    assert int(done.stdout.split(" tests collected")[0].rsplit("\n", 1)[-1]) > 400  # (the whole suite was collected)
