"""The overview: every machine's committed report side by side (lossbench.overview).

Writes reports/overview.md and reports/overview.json; exits 1 when a machine's
report fails or a configuration differs across machines beyond report.cross_device.

Not a DVC stage, on purpose: its inputs are every machine's results/<machine>/report/,
and a stage declaring them would make DVC re-run other machines' stages here, while
its lock entry would change with every machine's push (one shared, conflicting entry).
Its inputs are tracked by Git instead (each machine commits its report/, pinned in its
dvc.lock), and it is recomputed, torch-free in about a second, by every `make repro`
and `make overview`; reports/ is derived and not committed.
"""

import argparse
import sys
from pathlib import Path

from lossbench.config import load_params
from lossbench.errors import run
from lossbench.files import write_json, write_text
from lossbench.overview import as_json, build, load, markdown


def overview(params_path, results, out):
    tolerance = load_params(params_path).report.cross_device
    ov = build(load(results), tolerance)
    out = Path(out)
    write_json(out / "overview.json", as_json(ov))
    write_text(out / "overview.md", markdown(ov, tolerance))
    names = ", ".join(m.name for m in ov.machines) or "none"
    if ov.failures:
        sys.exit(f"overview: FAIL (machines: {names})\n  " + "\n  ".join(ov.failures))
    print(f"overview: PASS (machines: {names}; {out / 'overview.md'})", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--results", default="results")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    run(lambda: overview(args.params, args.results, args.out), "overview")


if __name__ == "__main__":
    main()
