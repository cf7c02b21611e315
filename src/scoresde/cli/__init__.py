"""The ``scoresde`` command: thin shells over the library's public functions.

Errors the user can fix print one line and exit with status 2, checked before any work; a job
whose result is not finite (NaN or infinite samples, a NaN loss) prints one line and exits
with status 1 without writing its outputs. Set ``SCORESDE_DEBUG=1`` to see the full traceback
instead. :mod:`scoresde.cli.parser` holds the arguments,
:mod:`scoresde.cli.commands` and :mod:`scoresde.cli.image_commands` the subcommands.
"""

from __future__ import annotations

import os
import sys

from scoresde.cli.commands import RUN_COMMANDS
from scoresde.cli.image_commands import IMAGE_COMMANDS
from scoresde.cli.parser import build_parser

__all__ = ["main"]

COMMANDS = {**RUN_COMMANDS, **IMAGE_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scoresde`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from scoresde.infra import distributed
    from scoresde.infra.checkpoint import CheckpointError
    from scoresde.jobs.finite import NonFiniteSamplesError
    from scoresde.jobs.training.loop import NonFiniteLossError, TrainingInterruptedError

    try:
        if getattr(args, "threads", 0) < 0:
            raise ValueError(f"--threads must be >= 0, got {args.threads}")
        return COMMANDS[args.command](args)
    except TrainingInterruptedError as e:
        print(f"scoresde {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except NonFiniteLossError as e:
        print(f"scoresde {args.command}: {e}", file=sys.stderr)
        return 1
    except NonFiniteSamplesError as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `scoresde presets | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CheckpointError, ValueError, OSError) as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        if len(message) > 400:  # a safety net: messages are written to be short
            message = message[:397] + "..."
        print(f"scoresde {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scoresde {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
