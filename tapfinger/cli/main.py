"""The `tapfinger` command. Each sub-command lives in `tapfinger/cli/<name>.py` and
exposes `register(subparsers)`; heavy imports (torch, plotting) stay inside the commands' run
functions so that `tapfinger --help` is fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order `tapfinger --help` lists them.
COMMANDS = ["scenarios", "demo", "evaluate", "train", "export", "profile", "import_trace"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tapfinger",
        description="Schedule ML training tasks on edge clusters, and measure how well it is done.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tapfinger.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tapfinger.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A command that parses its own arguments (`train`: tyro, from its config dataclass) sets
    # `passthrough` and gets what argparse did not consume as `args.argv`.
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):
        args.argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        # Ctrl-C: one line, no traceback. A command that kept finished work re-raises
        # KeyboardInterrupt("what was saved, how to resume") and that is the line printed.
        said = f": {exc.args[0]}" if exc.args else ""
        print(f"tapfinger {args.command}: interrupted{said}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # User errors (bad scenario, trace, checkpoint, flags) are reported without a traceback.
        print(f"tapfinger {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
