"""Many machines, one report: the steps of `make remote`, `make push` and `make pull`.

Each machine runs `make repro`: its own devices train, the devices of other
machines keep the results those machines pushed (see stages/check.py). Between
runs, results travel through a DVC remote (outputs and run-cache) and Git
(dvc.lock and reports/). Every failure is one line saying what to do.

    python -m lossbench.machines remote URL   # the default DVC remote (a directory, s3://, ssh://, ...)
    python -m lossbench.machines push         # outputs and run-cache to the remote, then dvc.lock and reports to Git
    python -m lossbench.machines pull         # Git first (dvc.lock), then the outputs it names
"""

import argparse
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from lossbench.config import host_name, load_params, machine, owner
from lossbench.errors import UserError, run
from lossbench.io import atomic_path

REMOTE = "shared"  # the name `make remote` gives the default remote
COMMITTED = ["dvc.lock", "reports", ".dvc/config"]  # what the Git side of a push carries


def sh(*cmd, what=None):
    """Run a command; on failure a UserError with its last error line."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [l for l in (out.stderr + out.stdout).splitlines() if l.strip()]
        last = next((l for l in reversed(lines) if "ERROR" in l or "error" in l or "fatal" in l), lines[-1] if lines
                    else f"exit {out.returncode}")
        raise UserError(f"{what or ' '.join(cmd)} failed: {last.strip()}")
    return out.stdout.strip()


def remote_url():
    """The default DVC remote's URL, or a UserError saying how to set one; a local one must exist."""
    out = subprocess.run(["dvc", "remote", "default"], capture_output=True, text=True)  # exits 1 when none is set
    name = out.stdout.strip() if out.returncode == 0 else None
    if not name:
        raise UserError("no default DVC remote: set one with `make remote URL=/path/to/shared/dir` "
                        "(or s3://..., gs://..., ssh://...) and commit .dvc/config")
    url = sh("dvc", "config", f"remote.{name}.url", what=f"reading remote {name!r}")
    if "://" not in url and not Path(url).is_dir():
        raise UserError(f"DVC remote {name!r} is {url}, which is not a directory here: mount it, or point this "
                        f"clone at it where it is mounted (`dvc remote modify --local {name} url /path`)")
    return name, url


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


def device_of(stage, devices):
    """The device a stage belongs to (``train@numpy_mse-cuda-h100`` -> ``cuda-h100``), None for shared ones."""
    name, _, item = stage.partition("@")
    if name in ("check", "cost"):
        return item if item in devices else None
    return next((d for d in sorted(devices, key=len, reverse=True) if item.endswith(f"-{d}")), None)


def foreign(devices):
    """The devices labelled for another machine: their lock entries are that machine's to commit."""
    return {d for d in devices if owner(d) is not None and owner(d) != machine()}


def keep_their_entries(upstream, lock="dvc.lock", params="params.yaml"):
    """dvc.lock as this machine commits it: its own stages as run here, other machines' as Git has them.

    Here another machine's stages only ever say "not run here": committed, they would
    look up to date to that machine and it would never re-run them.
    """
    theirs = foreign(load_params(params).train.devices)
    if not theirs or not Path(lock).is_file():
        return
    base = subprocess.run(["git", "show", f"{upstream or 'HEAD'}:{lock}"], capture_output=True, text=True)
    yaml = YAML()
    ours = yaml.load(Path(lock))
    known = (yaml.load(base.stdout) or {}).get("stages", {}) if base.returncode == 0 else {}
    stages = ours.get("stages", {})
    for stage in list(stages):
        if device_of(stage, theirs) is not None:
            if stage in known:
                stages[stage] = known[stage]
            else:
                del stages[stage]
    with atomic_path(lock) as tmp, open(tmp, "w") as f:
        yaml.dump(ours, f)


def push():
    name, url = remote_url()
    # outputs first: a commit on Git never names results the remote lacks
    sh("dvc", "push", "--run-cache", what=f"dvc push to remote {name!r} ({url})")
    upstream = git_remote()
    keep_their_entries(upstream)
    sh("git", "add", "--", *[p for p in COMMITTED if Path(p).exists()])
    staged = subprocess.run(["git", "diff", "--cached", "--quiet"]).returncode != 0
    if staged:
        who = host_name()
        sh("git", "commit", "-q", "-m", f"lossbench results from {who['machine'] or who['name']}")
    if upstream is None:
        print(f"machines: pushed outputs and run-cache to {url}; this branch has no Git upstream, so dvc.lock and "
              "reports are committed here only", file=sys.stderr)
        return
    out = subprocess.run(["git", "push", "-q"], capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(f"git push to {upstream} was refused (another machine pushed first?): `make pull`, "
                        "`make repro` (your results come back from DVC's run-cache, nothing re-trains), `make push`")
    print(f"machines: pushed outputs and run-cache to {url}, dvc.lock and reports to {upstream}", file=sys.stderr)


def lock_outs(lock="dvc.lock"):
    """stage -> the paths of its outputs, as dvc.lock names them, for the stages the pipeline has now.

    dvc.lock keeps the entries of stages that are gone (a device renamed): those are not missing.
    """
    stages = (YAML(typ="safe").load(Path(lock)) or {}).get("stages", {}) if Path(lock).is_file() else {}
    now = set(sh("dvc", "stage", "list", "--name-only", what="dvc stage list").split())
    return {s: [o["path"] for o in d.get("outs", [])] for s, d in stages.items() if s in now}


def pull():
    name, url = remote_url()
    if git_remote() is not None:
        sh("git", "pull", "-q", "--rebase", what="git pull --rebase (commit or stash your changes first)")
    # allow-missing: a result some machine committed but never pushed is listed below, not fatal
    sh("dvc", "pull", "--run-cache", "--allow-missing", what=f"dvc pull from remote {name!r} ({url})")
    # a machine's results (not the download, which any machine makes again)
    missing = [s for s, outs in lock_outs().items()
               if s.startswith(("train@", "cost@")) and any(not Path(p).exists() for p in outs)]
    for stage in missing:
        print(f"machines: {stage}: dvc.lock names results the remote {url} does not have: the machine that ran "
              "it must `make push`; until then the report shows it as not run", file=sys.stderr)
    print(f"machines: pulled from {url}" + (f" ({len(missing)} stage(s) missing)" if missing else ""),
          file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("remote").add_argument("url")
    sub.add_parser("push")
    sub.add_parser("pull")
    args = p.parse_args(argv)
    steps = {"remote": lambda: set_remote(args.url), "push": push, "pull": pull}
    run(steps[args.step], "machines")


if __name__ == "__main__":
    main()
