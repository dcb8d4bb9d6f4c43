"""Machines as data: each machine's results in results/<machine>/, with its own pipeline and dvc.lock.

A machine is named by $LOSSBENCH_MACHINE (``local`` when unset: one machine needs no name).
``results/<machine>/dvc.yaml`` is a link to stages/pipeline.yaml, so every machine runs the same
matrix and DVC keeps one lock per machine, which only that machine writes. Moving results between
machines is lossbench.workflow's.
"""

import os
import re
import socket
import sys
from pathlib import Path

from lossbench.errors import UserError

ENV = "LOSSBENCH_MACHINE"
DEFAULT = "local"  # one machine needs no name
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
RESULTS = "results"
PIPELINE = "stages/pipeline.yaml"


def name():
    """This machine's name: $LOSSBENCH_MACHINE, else ``local``."""
    value = os.environ.get(ENV) or DEFAULT
    if not NAME.match(value):
        raise UserError(f"{ENV}={value!r}: expected lower-case letters, digits, _ or - "
                        f"(it names this machine's directory, {RESULTS}/<machine>/)")
    return value


def directory(root="."):
    return Path(root) / RESULTS / name()


def host_name():
    """Who ran it, for the report: this machine's name and its host name (neither is a dependency)."""
    return {"machine": name(), "name": socket.gethostname()}


def refuse_foreign(machine_dir):
    """A UserError when ``machine_dir`` (a results/<machine>/ where a stage runs) is another machine's."""
    theirs = Path(machine_dir).resolve().name
    if theirs != name():
        raise UserError(f"{RESULTS}/{theirs}/ is machine {theirs!r}'s pipeline and this machine is {name()!r} "
                        f"({ENV}): `make repro` runs this machine's pipeline and the overview; a plain "
                        "`dvc repro` runs every machine's")


def ensure(root="."):
    """results/<machine>/dvc.yaml as a link to the one pipeline, made when missing."""
    here = directory(root)
    link = here / "dvc.yaml"
    target = Path("..", "..", PIPELINE)
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return link
    if link.exists() or link.is_symlink():
        raise UserError(f"{link}: expected a link to {target} (every machine runs that one pipeline); "
                        f"remove it and run again")
    here.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    print(f"machines: {link} -> {target}: this machine's pipeline (commit {here}/ with its results)",
          file=sys.stderr)
    return link
