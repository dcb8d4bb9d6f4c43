"""A user's mistake is one line, not a traceback (LOSSBENCH_DEBUG=1 keeps the traceback)."""

import os
import sys

DEBUG = "LOSSBENCH_DEBUG"


class UserError(Exception):
    """Bad input a user can fix: the message names the file, key or value and what was expected."""

    exit_code = 2


def run(main, prog):
    """Call ``main()``; a UserError becomes ``prog: message`` on stderr and its exit code."""
    try:
        return main()
    except UserError as e:
        if os.environ.get(DEBUG) == "1":
            raise
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
