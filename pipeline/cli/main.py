"""cnn-codes: transfer learning on a laptop, one subcommand per step."""
from __future__ import annotations

import importlib

from ..errors import exit_without_teardown, quiet_tensorflow, run_cli
from . import FORMATTER, Parser

SUBCOMMANDS = ("codes", "train", "sweep", "finetune", "scratch", "export", "predict", "compare", "report", "audit")


def parser() -> Parser:
    p = Parser(prog="cnn-codes", description=__doc__ + " Cache the CNN codes of a frozen ImageNet conv base "
               "once (codes), then train heads on them in seconds (train, sweep), fine-tune, export and predict. "
               "cache/ and runs/ are relative to the current directory unless given.",
               formatter_class=FORMATTER)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f".{name}", __package__)
        doc = module.__doc__.strip()
        sp = sub.add_parser(name, help=module.HELP, description=doc, formatter_class=FORMATTER)
        module.add_arguments(sp)
        sp.set_defaults(module=module)
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if getattr(a.module, "NEEDS_TENSORFLOW", True):
        quiet_tensorflow()
    return a.module.run(a)


def console() -> None:
    """Entry point of the ``cnn-codes`` script."""
    exit_without_teardown(lambda: run_cli(main))


def shim(command: str) -> None:
    """Entry point of the top-level scripts kept for those who know them (generate_codes.py,
    train_head.py): ``cnn-codes <command>`` with the script's arguments."""
    import sys
    exit_without_teardown(lambda: run_cli(lambda argv: main([command, *(sys.argv[1:] if argv is None else argv)])))
