"""Entry point of the ``ldp`` command.

Exit codes: 0 success, 1 a failure the user can act on (:class:`ldp.errors.LdpError`), 2 bad
usage (unknown option, invalid value or config). Errors print one line on stderr, no traceback;
any other exception is caught last and printed as one line too. ``--debug`` (or ``LDP_DEBUG=1``)
re-raises for developers.

Command modules import their heavy dependencies (torch, Ray) inside the command functions, so
``ldp --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

try:  # typer >= 0.29 vendors its own click; older typer uses the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from ldp.errors import LdpError, first_line

__all__ = ["app", "main"]

app = typer.Typer(
    name="ldp",
    help="LDP, the LoRA-Diffusion Platform: train, store and serve trajectory adapters for "
    "diffusion language models on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app). Listed here so the command set is visible in one place.
COMMAND_MODULES = [
    "ldp.cli.submit",
    "ldp.cli.jobs",  # jobs, status, logs (and the hidden _run-job)
    "ldp.cli.sweep",
    "ldp.cli.train_all",
    "ldp.cli.compare",
    "ldp.cli.report",
    "ldp.cli.pretrain",
    "ldp.cli.eval",
    "ldp.cli.bench",
    "ldp.cli.sizes",
    "ldp.cli.registry",  # registry ls|show|pull|rm|verify|gc
    "ldp.cli.serve",  # serve, generate
    "ldp.cli.cluster",  # cluster up|down|status
    "ldp.cli.tasks",
    "ldp.cli.infra",  # infra check
]


_registered = False


def _register_all() -> None:
    global _registered
    if _registered:  # main() may run many times in one process (tests)
        return
    _registered = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command module not written yet
                continue
            raise
        module.register(app)


def _fail(message: str, code: int) -> int:
    first = first_line(message) or "failed"
    print(f"ldp: error: {first}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code.

    ``--debug`` anywhere before a ``--`` (or ``LDP_DEBUG=1``) shows the traceback of an error
    instead of its one line."""
    _register_all()
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    head = args[: args.index("--")] if "--" in args else args
    debug = bool(os.environ.get("LDP_DEBUG")) or "--debug" in head
    if "--debug" in head:
        args.remove("--debug")
    try:
        rv = command.main(args=args, prog_name="ldp", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = _fail("aborted", 130)
    except click_exc.NoArgsIsHelpError as exc:  # `ldp` or `ldp registry` alone: show help
        print(exc.format_message() if exc.ctx is None else exc.ctx.get_help())
        code = 0
    except click_exc.UsageError as exc:
        code = _fail(exc.format_message(), 2)
    except click_exc.ClickException as exc:
        code = _fail(exc.format_message(), exc.exit_code or 1)
    except LdpError as exc:
        if debug:
            raise
        code = _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
    except Exception as exc:  # the last resort: a bug or an unforeseen failure, still one line
        if debug:
            raise
        code = _fail(f"{first_line(exc, with_type=True)} (run with --debug for the traceback)", 1)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
