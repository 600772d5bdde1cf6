"""The ``byzance`` command line: ``run`` one experiment, ``bench`` a grid, ``report`` a results DB.

User errors (bad config field, impossible combination, missing file) print one line
``byzance: error: ...`` and exit with status 2; a failed run exits with 1; Ctrl-C with 130.
The parser (``parser``), what the user asked for and how it is shown (``inputs``) and the
commands (``commands``) are modules of their own.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Sequence

from byzance.cli.commands import cmd_bench, cmd_report, cmd_run
from byzance.cli.parser import QUICKSTART_TOML, UserError, build_parser
from byzance.grid import GridError

__all__ = ["QUICKSTART_TOML", "UserError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from byzance.cli.crash import cmd_crash

    handler = {"run": cmd_run, "bench": cmd_bench, "report": cmd_report, "crash": cmd_crash}.get(
        args.command
    )
    if args.command == "kappa":
        from byzance.cli.kappa import cmd_kappa

        handler = cmd_kappa
    if handler is None:  # byzance scores, scores-attack
        from byzance.cli.scores import COMMANDS as SCORES_COMMANDS

        handler = SCORES_COMMANDS[args.command]
    try:
        return handler(args)
    except BrokenPipeError:  # output piped into head & co.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            "\nbyzance: interrupted; finished runs are kept in the DB and a bench resumes "
            "where it stopped",
            file=sys.stderr,
        )
        return 130
    except (UserError, GridError, ValueError, FileNotFoundError) as err:
        if args.debug:
            raise
        message = str(err) or type(err).__name__
        print(f"byzance: error: {message}", file=sys.stderr)
        return 2
    except sqlite3.Error as err:  # e.g. a results DB locked by another process for too long
        if args.debug:
            raise
        print(f"byzance: error: results DB: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
