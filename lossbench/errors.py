"""A user's mistake is one line, not a traceback (LOSSBENCH_DEBUG=1 keeps the traceback)."""

import os
import re
import sys
import traceback
from pathlib import Path

# The project: the folder holding lossbench/ and the users' losses/. Stages run in results/<machine>/,
# so the working directory is not it; a user's loss file is named (and digested) from here.
ROOT = Path(__file__).resolve().parent.parent

DEBUG = "LOSSBENCH_DEBUG"


class UserError(Exception):
    """Bad input a user can fix: the message names the file, key or value and what was expected."""

    exit_code = 2


def run(main, prog):
    """Call ``main()``; a UserError becomes ``prog: message`` on stderr and its exit code."""
    try:
        return main()
    except UserError as e:
        if debugging():  # the traceback too, and the same exit status
            traceback.print_exc()
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def shown(path):
    """A path as a message names it: from the working directory or else the project (stages run in
    results/<machine>/, where ../../params.yaml is the project's params.yaml), else as it is."""
    p = Path(path).resolve()
    base = next((b for b in (Path.cwd().resolve(), ROOT) if p.is_relative_to(b)), None)
    return str(p.relative_to(base)) if base else str(path)


def debugging():
    return os.environ.get(DEBUG) == "1"


def raised(e):
    """``ValueError: message (at losses/mine.py:17)``: the exception and the user's line that raised it.

    The line is the innermost frame outside torch, NumPy and lossbench itself, relative to the
    working directory or else to the project (stages run in results/<machine>/) when it lies in one.
    """
    lib = Path(__file__).resolve().parent

    def at(filename, lineno):
        return f" (at {shown(filename)}:{lineno})"

    if isinstance(e, SyntaxError) and e.filename:  # raised while compiling: no frame of the user's file
        return f"{type(e).__name__}: {e.msg}{at(e.filename, e.lineno)}"
    text = str(e)
    # torch.compile's errors are pages (explanation, hint, links, "from user code:" and its frames): one line
    # of it, and the line of the loss's code it names, since the traceback's frames are all torch's
    user = re.findall(r'File "([^"]+)", line (\d+)', text.split("from user code:", 1)[1]) \
        if "from user code:" in text else []
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    explanation = next((line.removeprefix("Explanation:").strip() for line in lines
                        if line.startswith("Explanation:")), None)
    if explanation:  # "... call_function <op>(*(FakeTensor(...), ...), **{}): got KeyError(torch.bfloat16)"
        text = re.sub(r"call_function .*: got ", "got ", explanation)
    elif len(lines) > 1:
        text = lines[0]
    if user:
        return f"{type(e).__name__}: {text}{at(user[-1][0], user[-1][1])}"
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "site-packages" not in f.filename and not Path(f.filename).resolve().is_relative_to(lib)]
    where = at(frames[-1].filename, frames[-1].lineno) if frames else ""
    return f"{type(e).__name__}: {text}{where}"
