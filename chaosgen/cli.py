"""The `chaosgen` command. Every subcommand lives in its own module with `add_parser(sub)`."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import shlex
import signal
import sys
import threading

from . import __version__
from .errors import ChaosgenError, UsageError
from .options import add_compile_options

# Modules that register subcommands (each has add_parser(subparsers) setting `func`).
COMMAND_MODULES = (
    "chaosgen.cli",
    "chaosgen.train",
    "chaosgen.data",
    "chaosgen.native",
    "chaosgen.calibrate",  # `predict` and `calibrate`
    "chaosgen.plot",
    "chaosgen.tune",
    "chaosgen.interop",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits 2; keep that, without noise
        self.print_usage(sys.stderr)
        raise UsageError(message)


def add_parser(sub) -> None:
    """`chaosgen compile` (`chaosgen targets` is registered by chaosgen.native)."""
    p = sub.add_parser("compile", help="compile a spec to C++ and build it")
    add_compile_options(p)
    p.add_argument(
        "--emit",
        choices=("ast", "ir", "cpp", "header", "cmd"),
        help="print one stage of the pipeline instead of the summary",
    )
    p.add_argument(
        "--rebuild", action="store_true", help="ignore the build cache (also CHAOSGEN_REBUILD=1)"
    )
    p.add_argument(
        "--program",
        action="store_true",
        help="a standalone training program (built if the compiler is here) instead of a "
        "library; always so for knc and knl (docs/xeon-phi.md)",
    )
    p.add_argument("--out", default=None, help="--program: its directory (default: in the cache)")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile, then print the layer summary and where the library is (or one stage)."""
    from . import codegen
    from .pipeline import compile_spec, front_end

    if args.emit in ("ast", "ir"):
        spec, net = front_end(args.spec)
        if args.emit == "ast":
            print(spec.to_text(), end="")
        else:
            print(json.dumps(net.describe(), indent=2))
        return 0
    if args.emit in (None, "cmd") and (args.program or not _buildable(args)):
        from .native import cmd_compile_program

        return cmd_compile_program(args)  # a knc/knl library could not be loaded here anyway
    emit_only = args.emit in ("cpp", "header", "cmd")
    c = compile_spec(
        args.spec,
        target=args.target,
        cc=args.cc,
        build_dir=args.build_dir,
        force=args.rebuild or None,
        build=not emit_only and _buildable(args),
    )
    if args.emit == "cpp":
        print(c.source.cpp, end="")
        return 0
    if args.emit == "header":
        print(c.source.header, end="")
        return 0
    if args.emit == "cmd":
        from .build import command

        print(shlex.join(command(c.compiler, c.target)))
        return 0
    print(
        f"{c.net.name}: {args.spec} -> target {c.target.name} ({c.target.isa}) "
        f"with {c.compiler.name}"
    )
    for row in codegen.summary_rows(c.net):
        print("  " + row)
    print(f"  forward multiply-adds per image: {c.net.macs:,}")
    if c.build is not None:
        how = "cached" if c.build.cached else f"built in {c.build.seconds:.2f} s"
        print(f"library: {c.build.library} ({how})")
    return 0


def _buildable(args: argparse.Namespace) -> bool:
    from .targets import get_target

    return get_target(args.target).host


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = _Parser(
        prog="chaosgen",
        description="Compile network specs to native training kernels and train them with CHAOS.",
    )
    parser.add_argument("--version", action="version", version=f"chaosgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command module not written yet
                continue
            raise
        mod.add_parser(sub)
    return parser


def os_error(e: OSError) -> str:
    """`<file>: <what the system said>` (both files of a rename or link)."""
    what = e.strerror or str(e) or type(e).__name__
    if e.filename is None:
        return what
    names = [os.fsdecode(f) for f in (e.filename, e.filename2) if f is not None]
    return f"{' -> '.join(names)}: {what}"


def _stop_once(signum: int, frame: object) -> None:
    """SIGINT: the first stops chaosgen (KeyboardInterrupt); the next ones are ignored while it
    winds down (stops its workers, writes a checkpoint, says what it did): a second Ctrl-C would
    otherwise interrupt that, and the checkpoint and the message would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command; errors become one clean message and an exit status."""
    own_sigint = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if own_sigint:
        signal.signal(signal.SIGINT, _stop_once)
    try:
        return _run(argv)
    finally:
        # The program (argv None: this process's own command line) exits now: a Ctrl-C during
        # the interpreter's shutdown would only print "Exception ignored" noise. A caller in
        # Python gets its handler back.
        if own_sigint and not (argv is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except ChaosgenError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("chaosgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except MemoryError:
        print("chaosgen: error: out of memory", file=sys.stderr)
        return 1
    except io.UnsupportedOperation as e:  # an OSError, but a bug: a stream used the wrong way
        return _internal_error(e)
    except OSError as e:  # the system refused something: a file, the disk, a process
        print(f"chaosgen: error: {os_error(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        return _internal_error(e)


def _internal_error(e: Exception) -> int:
    """A bug in chaosgen: one line, the traceback only on request."""
    if os.environ.get("CHAOSGEN_DEBUG"):
        raise e
    print(
        f"chaosgen: internal error: {type(e).__name__}: {e} "
        "(set CHAOSGEN_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
