"""The exit codes of every `mosaic` command, one table, so a script can act on them."""

from __future__ import annotations

import sys
from collections.abc import Callable

import grpc

OK = 0
REFUSED = 1  # the service answered with an error; `mosaic status`: a service is not serving
USAGE = 2  # the command line is wrong (argparse's own code)
UNREACHABLE = 3  # no answer: the service is not listening, or did not answer in time
PENDING = 4  # accepted, not finished when the wait ended (privacy export and erase)
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

# Waiting and trying again helps with these; the others are the service's answer.
NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

TABLE = f"""exit codes:
  {OK:<4} done
  {REFUSED:<4} the service said no (printed on stderr as CODE: details); status: a service is not serving
  {USAGE:<4} usage error: an unknown action or flag, a missing argument, a file that cannot be read
  {UNREACHABLE:<4} the service could not be reached or did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED)
  {PENDING:<4} privacy export/erase: the request was accepted but is still pending when --wait ended
  {INTERRUPTED:<4} interrupted (Ctrl-C)"""


class UsageError(Exception):
    """The command line names something that cannot be used (a file that is not there, ...)."""


def guarded(work: Callable[[], int], command: str) -> int:
    """`work()`'s exit code, or the code of the error it raised, said on stderr in one line."""
    try:
        return work()
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
        print(f"{code.name}: {details}", file=sys.stderr)
        return UNREACHABLE if code in NO_ANSWER else REFUSED
    except UsageError as error:
        print(f"mosaic {command}: error: {error}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED
