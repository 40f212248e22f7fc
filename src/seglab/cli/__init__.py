"""The `seglab` command: a module per group of subcommands, each a few lines over the Python API."""
from __future__ import annotations

import sys
import threading

from seglab.cli import models, predict, serve, tools, train
from seglab.cli.parsing import SeglabParser, apply_max_pixels, print_error
from seglab.errors import SeglabError
from seglab.version import __version__


def build_parser() -> SeglabParser:
    parser = SeglabParser(prog="seglab", description="Train and run image-segmentation models.")
    parser.add_argument("--version", action="version", version=f"seglab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SeglabParser)
    commands.required = True
    for module in (tools, train, predict, models, serve):
        module.register(commands)
    parser.subcommands = dict(commands.choices)
    return parser


def _report_thread_error(args: threading.ExceptHookArgs) -> None:
    """A background writer (TensorBoard's event thread) that fails on a full or read-only disk: one
    line instead of its traceback; the run itself reports what that means for its files."""
    if isinstance(args.exc_value, OSError):
        print(f"seglab: warning: a background writer stopped ({args.exc_value.strerror or args.exc_value})",
              file=sys.stderr)
        return
    threading.__excepthook__(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threading.excepthook = _report_thread_error  # the command owns its process; the library sets no hooks
    try:
        apply_max_pixels(args)
        return args.run(args)
    except SeglabError as error:
        print_error(str(error))
        return 1
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("seglab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
