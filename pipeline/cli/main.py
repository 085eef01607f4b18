"""cnn-codes: transfer learning on a laptop, one subcommand per step."""
from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading

from pipeline._tf import quiet_tensorflow
from pipeline.cli import FORMATTER, Parser, flag_of
from pipeline.errors import USER_ERRNOS, Interrupted, ParameterError, UserError, one_line, os_error_text

SUBCOMMANDS = ("codes", "train", "sweep", "finetune", "scratch", "export", "predict", "compare", "report", "audit",
               "suggest", "label")


def parser(only: str | None = None) -> Parser:
    """The command line; ``only``: that subcommand's alone (its module alone imported: the heads'
    scikit-learn and SciPy cost a command that never uses them seconds of start-up)."""
    p = Parser(prog="cnn-codes", description=__doc__ + " Cache the CNN codes of a frozen ImageNet conv base "
               "once (codes), then train heads on them in seconds (train, sweep), fine-tune, export and predict. "
               "cache/ and runs/ are relative to the current directory unless given.",
               formatter_class=FORMATTER)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name in SUBCOMMANDS if only is None else (only,):
        module = importlib.import_module(f".{name}", __package__)
        doc = module.__doc__.strip()
        sp = sub.add_parser(name, help=module.HELP, description=doc, formatter_class=FORMATTER)
        module.add_arguments(sp)
        sp.set_defaults(module=module)
    return p


class _ConsoleHandler(logging.Handler):
    """The library's messages as the command prints them: information on stdout, notes and
    warnings on stderr, each message as it is (it carries its own ``note:`` / ``warning:``).
    The streams are looked up at each message, so redirected or captured streams get them."""

    def emit(self, record):
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        stream.write(self.format(record) + "\n")
        stream.flush()


def _console_logging() -> None:
    """Route the library's log (the ``pipeline`` logger) to the console, once."""
    root = logging.getLogger("pipeline")
    if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
        root.addHandler(_ConsoleHandler())
    root.setLevel(logging.INFO)
    # printed once, by this handler: a library that configures the root logger (the ONNX
    # converter does) would print every line a second time
    root.propagate = False


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    a = parser(args[0] if args and args[0] in SUBCOMMANDS else None).parse_args(args)
    _console_logging()
    if getattr(a.module, "NEEDS_TENSORFLOW", True):
        quiet_tensorflow()
    try:
        return a.module.run(a)
    except ParameterError as exc:
        exc.command = a.command  # the flag of a parameter may depend on the command
        raise


def console() -> None:
    """Entry point of the ``cnn-codes`` script."""
    _tune_process(sys.argv[1] if len(sys.argv) > 1 else "")
    exit_without_teardown(lambda: run_cli(main))


def shim(command: str) -> None:
    """Entry point of the top-level scripts kept for those who know them (generate_codes.py,
    train_head.py): ``cnn-codes <command>`` with the script's arguments."""
    _tune_process(command)
    exit_without_teardown(lambda: run_cli(lambda argv: main([command, *(sys.argv[1:] if argv is None else argv)])))


def _tune_process(command: str) -> None:
    """What this process (the command's own, never one that calls ``main``: a test, a notebook)
    sets up for ``command``: stage 1 the allocator (:func:`~pipeline.cli.codes.keep_freed_blocks_returnable`)."""
    if command == "codes":
        from pipeline.cli.codes import keep_freed_blocks_returnable
        keep_freed_blocks_returnable()


_TERMINATED = []


def _on_sigterm(signum, frame):
    """SIGTERM ends a command as Ctrl-C does (what is computed is kept, workers are stopped),
    with exit code 143."""
    _TERMINATED.append(signum)
    raise KeyboardInterrupt


def run_cli(main, argv=None) -> None:
    """Run an entry point's ``main(argv)`` and turn user errors into one line + exit code."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = main(argv)
    except ParameterError as exc:
        flag = flag_of(exc.parameter, getattr(exc, "command", None))
        print(f"error: {flag} {one_line(exc.message)}", file=sys.stderr)
        sys.exit(2)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Interrupted) as exc:
        _interrupted(one_line(exc) if isinstance(exc, Interrupted) else "")
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def exit_without_teardown(run) -> None:
    """Run a command-line entry point, then end the process at once with its exit code.

    Everything the commands write is closed (and fsynced where it matters) before they return;
    what is skipped is the interpreter's teardown, where the C++ thread pools of TensorFlow and
    OpenVINO, torn down in no fixed order, now and then abort the process ("terminate called
    without an active exception") after its work is done.
    """
    try:
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _interrupted(message: str) -> None:
    """One line and exit 130, at once: destructors and exit handlers that a Ctrl-C caught
    half-way would print tracebacks of their own (what must be kept is on disk already)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(("terminated" if _TERMINATED else "interrupted") + (f": {message}" if message else ""), file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(143 if _TERMINATED else 130)
