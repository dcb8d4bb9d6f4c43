"""`make repro`, `make remote`, `make push`, `make pull`: this machine's pipeline, and results between machines.

Results travel through a DVC remote (outputs and run-cache) and Git (each
machine's results/<machine>/: its dvc.lock and report/). Each machine commits
only its own directory, so pulls merge cleanly in any order. Every failure is one
line saying what to do.

    python -m lossbench.workflow repro [dvc repro options]  # this machine's pipeline, then the overview
    python -m lossbench.workflow overview    # the overview alone (reads what Git has; trains nothing)
    python -m lossbench.workflow remote URL  # the default DVC remote (a directory, s3://, ssh://, ...)
    python -m lossbench.workflow push        # this machine's outputs to the remote, its results/<machine>/ to Git
    python -m lossbench.workflow pull        # Git (every machine's lock and report), then their outputs
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ruamel.yaml import YAML

from lossbench.errors import UserError, run
from lossbench.files import read_json
from lossbench.machines import PIPELINE, RESULTS, directory, ensure, name

REMOTE = "shared"  # the name `make remote` gives the default remote


def sh(*cmd, what=None):
    """Run a command; on failure a UserError with its last error line."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [l for l in (out.stderr + out.stdout).splitlines() if l.strip()]
        last = next((l for l in reversed(lines) if "ERROR" in l or "error" in l or "fatal" in l), lines[-1] if lines
                    else f"exit {out.returncode}")
        raise UserError(f"{what or ' '.join(cmd)} failed: {last.strip()}")
    return out.stdout.strip()


FAILED_STAGE = re.compile(r"ERROR: failed to reproduce '(?P<stage>[^']+)': failed to run: .*, exited with (?P<exit>\d+)")


def dvc_repro(*args):
    """`dvc repro`, its output shown as it runs; its exit status, or the failed stage's own where DVC names it
    (DVC exits 255 for any failed stage: the report's 1 and the check's 2 and 3 are what the README promises).

    DVC ends every repro that ran something with "Use `dvc push` ...": here `make push`
    is what shares results (it pushes this machine's only), so that line is left out.
    """
    proc = subprocess.Popen(["dvc", "repro", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failed = []

    def errors():  # the stages' and DVC's messages, as they come, on stderr still
        for line in proc.stderr:
            stage = FAILED_STAGE.match(line.rstrip())
            if stage:  # DVC's line repeats the stage's whole command; the stage's own line above says what failed
                failed.append(int(stage["exit"]))
                line = f"ERROR: failed to reproduce '{stage['stage']}' (exit {stage['exit']}): its message is above\n"
            print(line, end="", file=sys.stderr, flush=True)
    reader = threading.Thread(target=errors)
    reader.start()
    for line in proc.stdout:
        if not line.startswith("Use `dvc push`"):
            print(line, end="", flush=True)
    reader.join()
    rc = proc.wait()
    return failed[-1] if rc != 0 and failed and failed[-1] != 0 else rc


def repro(extra):
    link = ensure()
    report = link.parent / "report" / "report.md"
    started = time.time()
    rc = dvc_repro(*extra, str(link))
    if rc != 0:
        if report.is_file() and report.stat().st_mtime >= started:  # the report ran and failed: say where it is
            print(f"lossbench: this machine's report (FAIL): {report}", file=sys.stderr)
        elif report.is_file():  # a stage before it failed: the report on disk is an older run's, whatever it says
            print(f"lossbench: the pipeline stopped before its report: {report} is still the last complete run's, "
                  "not this one's (a failed stage's last good output comes back from DVC's cache when it runs "
                  "again)", file=sys.stderr)
        return rc
    rc = overview()
    if rc == 0:
        print(f"lossbench: this machine's report: {report}; every machine's: reports/overview.md "
              "(`make push` shares this machine's results)", file=sys.stderr)
    return rc


def overview():
    """The overview over every machine's committed report: not a DVC stage (see stages/overview.py)."""
    return subprocess.run([sys.executable, "-m", "stages.overview", "--params", "params.yaml", "--results", RESULTS,
                           "--out", "reports"]).returncode


def remote_url():
    """The default DVC remote's URL, or a UserError saying how to set one; a local one must exist."""
    out = subprocess.run(["dvc", "remote", "default"], capture_output=True, text=True)  # exits 1 when none is set
    remote = out.stdout.strip() if out.returncode == 0 else None
    if not remote:
        raise UserError("no default DVC remote: set one with `make remote URL=/path/to/shared/dir` "
                        "(or s3://..., gs://..., ssh://...) and commit .dvc/config")
    url = sh("dvc", "config", f"remote.{remote}.url", what=f"reading remote {remote!r}")
    if "://" not in url and not Path(url).is_dir():
        raise UserError(f"DVC remote {remote!r} is {url}, which is not a directory here: mount it, or point this "
                        f"clone at it where it is mounted (`dvc remote modify --local {remote} url /path`)")
    return remote, url


def set_remote(url):
    if "://" not in url:  # a directory: made now, so that a later typo or a missing mount is an error, not a new remote
        Path(url).mkdir(parents=True, exist_ok=True)
    sh("dvc", "remote", "add", "--default", "--force", REMOTE, url)
    print(f"machines: DVC remote {REMOTE!r} = {url} (default); commit .dvc/config so every clone uses it",
          file=sys.stderr)


def git_remote():
    """The upstream Git remote of this branch, or None (a clone without one keeps its commits local)."""
    out = subprocess.run(["git", "rev-parse", "--abbrev-ref", "@{upstream}"], capture_output=True, text=True)
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def lock_stages(lock):
    """A machine's dvc.lock, stage by stage: read only, nothing here edits a lock."""
    return (YAML(typ="safe").load(Path(lock)) or {}).get("stages", {})


def inputs(here):
    """What this machine's results depend on, from the repository root: every dependency and params file its
    dvc.lock names, the pipeline, and each loss's own files (the check records name them)."""
    stages = lock_stages(here / "dvc.lock")
    paths = {"dvc.yaml", PIPELINE}
    for stage in stages.values():
        paths |= {os.path.normpath(here / d["path"]) for d in stage.get("deps", [])}
        paths |= {os.path.normpath(here / f) for f in stage.get("params", {})}
    for record in here.glob("check/*/*.json"):
        paths |= set(read_json(record)["source"].get("files", {}))
    own = os.path.normpath(here)  # this machine's folder: its outputs, committed by the push itself
    return sorted(p for p in paths if Path(p).exists() and not Path(p).is_relative_to(own))


def uncommitted(paths):
    """The files among ``paths`` that Git does not have as they are here (modified or untracked)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *paths], capture_output=True,
                         text=True, check=True).stdout  # not stripped: each line starts with two status columns
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def push():
    here = directory()
    if not (here / "dvc.lock").is_file():
        raise UserError(f"{here}/dvc.lock: not found: `make repro` first (nothing of machine {name()!r} to push)")
    dirty = uncommitted(inputs(here))
    if dirty:  # results of code or params Git does not have: no other machine could reproduce or read them right
        raise UserError(f"commit these first, the results depend on them: {', '.join(dirty[:5])}"
                        + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
                        + f" (`git commit -m '...' -- {' '.join(dirty)}`, then `make push` again: it commits "
                        f"and pushes {here}/ itself)")
    remote, url = remote_url()
    # outputs first: a commit on Git never names results the remote lacks
    sh("dvc", "push", "--run-cache", str(here / "dvc.yaml"), what=f"dvc push to remote {remote!r} ({url})")
    sh("git", "add", "-A", "--", str(here))
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", str(here)]).returncode != 0
    if staged:
        sh("git", "commit", "-q", "-m", f"lossbench results of machine {name()} ({socket.gethostname()})", "--",
           str(here))
    done = f"{here}/ committed" if staged else f"{here}/ unchanged since its last commit"
    upstream = git_remote()
    if upstream is None:
        print(f"machines: outputs and run-cache pushed to {url}; {done}; this branch has no Git upstream, so the "
              "commit stays here", file=sys.stderr)
        return
    out = subprocess.run(["git", "push", "-q"], capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(f"git push to {upstream} was refused (another machine pushed first?): `make pull`, then "
                        "`make push` (each machine commits only its own results/<machine>/: the pull merges cleanly)")
    print(f"machines: outputs and run-cache pushed to {url}; {done}, pushed to {upstream}", file=sys.stderr)


def lock_outs(lock):
    """Each stage of one machine's dvc.lock -> the paths of its outputs, relative to the repository."""
    return {s: [Path(lock).parent / o["path"] for o in d.get("outs", [])] for s, d in lock_stages(lock).items()}


def pull():
    remote, url = remote_url()
    if git_remote() is not None:
        # --autostash: this machine's own uncommitted results (results/<machine>/) never meet another's changes
        sh("git", "pull", "-q", "--rebase", "--autostash",
           what="git pull --rebase (`make push` your results first, or `git stash`, then `make pull`)")
    # allow-missing: a result some machine committed but never pushed is listed below, not fatal
    sh("dvc", "pull", "--run-cache", "--allow-missing", what=f"dvc pull from remote {remote!r} ({url})")
    missing = []
    for lock in sorted(Path(RESULTS).glob("*/dvc.lock")):
        stages = [stage for stage, outs in lock_outs(lock).items() if any(not p.exists() for p in outs)]
        missing += stages
        if stages:  # one line a machine: its report/ came with Git; only its raw outputs are absent
            print(f"machines: {lock.parent}: {len(stages)} stage(s) whose outputs are not in the remote {url} "
                  f"({stages[0]}{', ...' if len(stages) > 1 else ''}): machine {lock.parent.name!r} must "
                  "`make push` (its report/ is in Git and the overview shows it)", file=sys.stderr)
    print(f"machines: pulled from {url}" + (f" ({len(missing)} stage(s) missing)" if missing else ""),
          file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("repro", help="this machine's pipeline, then the overview; other arguments go to dvc repro")
    sub.add_parser("overview")
    sub.add_parser("remote").add_argument("url")
    sub.add_parser("push")
    sub.add_parser("pull")
    sub.add_parser("name")
    # repro passes what it does not know on to dvc repro (-f, -s, a stage): argparse.REMAINDER refused a first
    # argument that starts with '-'
    args, dvc_args = p.parse_known_args(argv)
    if dvc_args and args.step != "repro":
        p.error(f"unrecognized arguments: {' '.join(dvc_args)}")
    steps = {"repro": lambda: repro(dvc_args), "overview": overview, "remote": lambda: set_remote(args.url),
             "push": push, "pull": pull, "name": lambda: print(name())}
    sys.exit(run(steps[args.step], "machines") or 0)


if __name__ == "__main__":
    main()
