"""The fast tier's end to end: `make repro`'s command on a reduced params set, real MNIST from the mirror.

The full pipeline (every default loss, 470 steps, 3 repeats) is the slow tier's (tests/test_pipeline.py).
"""

import json

import pytest

from lossbench import warm
from tests.conftest import edit_params, reduced_project, repro, stages_ran

LOSSES = ["torch_mse", "numpy_mse", "wrong_backward"]


def test_make_repro_on_a_reduced_params_set_judges_and_then_reruns_only_the_checks(tmp_path, mirror):
    root, env = reduced_project(tmp_path / "project", mirror, losses=LOSSES)
    out = repro(root, env)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((root / "results" / "local" / "report" / "summary.json").read_text())
    c = summary["configs"]
    assert summary["passed"] is True and summary["rule"] == "envelope"
    assert (c["numpy_mse-cpu-fp32-eager"]["verdict"], c["wrong_backward-cpu-fp32-eager"]["verdict"]) == ("equal", "differs")
    assert c["numpy_mse-cpu-fp32-eager"]["steps"] == 59 and c["numpy_mse-cpu-fp32-eager"]["noise_used"] < 1
    assert json.loads((root / "reports" / "overview.json").read_text())["machines"] == ["local"]
    # nothing changed: the check reuses its last files without importing torch (-X importtime lists every import
    # of every process, the stages' too: DVC passes the environment on). Without the warm process the first run
    # left (lossbench.warm), whose children hold torch already: this is what a check in a process of its own does
    again = repro(root, {**env, "PYTHONPROFILEIMPORTTIME": "1", warm.SWITCH: "0"})
    assert again.returncode == 0 and stages_ran(again.stdout) == ["check"], again.stdout + again.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in again.stderr.splitlines() if line.startswith("import time:")}
    assert "lossbench.fingerprint" in imported  # the profile reached the check stage (it runs as __main__)
    assert "torch" not in imported
    assert "check: nothing changed since the last check: its 3 files reused, torch not imported" in again.stderr

    (root / "losses" / "examples.py").write_text((root / "losses" / "examples.py").read_text() + "\n# edited\n")
    edited = repro(root, env)  # a loss file of the project changed: the check runs in full (no loss of it trains)
    assert edited.returncode == 0 and stages_ran(edited.stdout) == ["check"], edited.stdout + edited.stderr
    assert "check: 3 losses imported, pre-flighted on cpu (" in edited.stderr

    # a failed stage's own exit status, not DVC's 255 for any (README: a failing report exits 1, the check 2)
    def expect_wrong_equal(p):
        p["losses"]["twice"] = {"fn": "wrong_backward", "expect": "equal"}
        p["train"]["losses"].append("twice")
    edit_params(root / "params.yaml", expect_wrong_equal)
    failing = repro(root, env)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "twice-cpu-fp32-eager: expected equal to torch_mse" in failing.stderr
    edit_params(root / "params.yaml", lambda p: p["losses"]["twice"].update(fn="losses.nosuch_zz:f"))
    broken = repro(root, env)
    assert broken.returncode == 2 and "cannot import module 'losses.nosuch_zz'" in broken.stderr, broken.stderr
    # DVC's own line names the stage, not its whole command again: the stage's one line above is the message
    assert "ERROR: failed to reproduce 'results/local/dvc.yaml:check' (exit 2): its message is above" in broken.stderr
    assert "failed to run:" not in broken.stderr


def test_make_repros_command_passes_dvcs_options_on(monkeypatch):
    """`python -m lossbench.workflow repro -f` (docs/pipeline.md, make bench) reaches dvc repro as -f; argparse's
    REMAINDER refused it ('unrecognized arguments: -f -q'). Another step still refuses what it does not know."""
    from lossbench import workflow

    got = []
    monkeypatch.setattr(workflow, "repro", lambda extra: got.append(extra))
    with pytest.raises(SystemExit) as e:
        workflow.main(["repro", "-f", "-q", "-s", "train@x"])
    assert e.value.code == 0 and got == [["-f", "-q", "-s", "train@x"]]
    with pytest.raises(SystemExit) as e:
        workflow.main(["overview", "-f"])
    assert e.value.code == 2


def test_a_pipeline_that_stops_before_its_report_says_the_report_is_an_older_runs(tmp_path, monkeypatch, capsys):
    """A train stage failed: report.md still says the last complete run's PASS; make repro says so, in one line."""
    from lossbench import workflow

    link = tmp_path / "results" / "local" / "dvc.yaml"
    (link.parent / "report").mkdir(parents=True)
    (link.parent / "report" / "report.md").write_text("**Result: PASS**\n")
    monkeypatch.setattr(workflow, "ensure", lambda: link)
    monkeypatch.setattr(workflow, "dvc_repro", lambda *args: 1)
    monkeypatch.setattr(workflow.time, "time", lambda: 4e9)  # the report predates this run
    assert workflow.repro([]) == 1
    assert "the pipeline stopped before its report: " in capsys.readouterr().err
