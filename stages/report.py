"""Stage `report`: pandas over every run; asserts, then writes what people read.

Judges every configuration (lossbench.verdict) and writes reports/report.md,
reports/metrics.json, per-step plot data and PNGs (lossbench.render); the files
are written even when an assertion fails, then the stage exits 1.
"""

import argparse
import sys
from pathlib import Path

from lossbench.config import load_params
from lossbench.configuration import matrix
from lossbench.errors import run as run_main
from lossbench.files import write_json, write_text
from lossbench.render import draw, markdown, plot_tables, write_plot_data
from lossbench.verdict import ReportError, evaluate, load_runs, metrics, summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--runs", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    run_main(lambda: report(args.params, args.runs, args.out), "report")


def report(params_path, runs_dir, out):
    params = load_params(params_path)
    try:
        runs = load_runs(runs_dir, matrix(params.train))
    except (FileNotFoundError, ValueError) as e:
        raise ReportError(str(e)) from e
    res = evaluate(params, runs)
    out = Path(out)
    tables = plot_tables(runs, params.plan())
    write_plot_data(tables, out)
    images = draw(tables, res, params, out)
    write_json(out / "metrics.json", metrics(res))
    write_json(out / "summary.json", summary(params, res))
    write_text(out / "report.md", markdown(params, res, images))
    if res.failures:
        sys.exit(f"report: FAIL ({out / 'report.md'})\n  " + "\n  ".join(res.failures))
    print(f"report: PASS ({out / 'report.md'})", file=sys.stderr)


if __name__ == "__main__":
    main()
