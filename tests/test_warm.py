"""lossbench.warm: a stage run through the warm process behaves as `python -m` would, from the caller's tree."""

import os
import signal
import subprocess
import sys
import time

import pytest

from lossbench import warm
from tests.conftest import ROOT

PROBE = '''import os, sys
print("pid", os.getpid(), "cwd", os.getcwd(), "args", sys.argv[1:], "torch", "torch" in sys.modules,
      "env", os.environ.get("PROBE"), "version", VERSION, "stdin", sys.stdin.readline().strip())
print("to stderr", file=sys.stderr)
if sys.argv[1:] == ["sleep"]:
    import time
    open("started", "w").close()
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)
'''


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A caller's tree with a module of its own, and a warm folder of this test's."""
    (tmp_path / "probe.py").write_text("VERSION = 1\n" + PROBE)
    monkeypatch.setenv(warm.DIR, str(tmp_path / "sockets"))
    monkeypatch.delenv(warm.SWITCH, raising=False)
    yield tmp_path
    warm.stop()


def call(tree, *args, env=None, stdin="line\n", start=False):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tree}", "PROBE": "given", **(env or {})}
    options = [] if start else ["--no-start"]
    p = subprocess.Popen([sys.executable, "-m", "lossbench.warm", *options, "probe", *args], cwd=tree, env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(stdin, timeout=60)
    return p.pid, p.returncode, out, err


def started(tree):
    """Start the server and wait until it answers (it imports torch first)."""
    warm.start()
    answers()


def answers():
    for _ in range(600):
        conn = warm._connect(warm.address())
        if conn is not None:
            conn.close()
            return
        time.sleep(0.05)
    raise AssertionError("the warm server did not start")


def test_without_a_server_the_module_runs_in_the_callers_process_and_starts_one_for_the_next(tree):
    pid, code, out, err = call(tree, "7")  # --no-start (the check's): none is started
    assert code == 7 and err == "to stderr\n"
    assert out.split() == ["pid", str(pid), "cwd", str(tree), "args", "['7']", "torch", "False", "env", "given",
                           "version", "1", "stdin", "line"]
    assert not warm.address().exists()
    pid, code, out, _ = call(tree, "3", start=True)  # a train stage's: here, and a server for the next one
    assert code == 3 and out.split()[1] == str(pid)
    answers()
    pid, code, out, _ = call(tree, "3")
    assert code == 3 and out.split()[1] != str(pid) and "torch True" in out


def test_with_a_server_the_module_runs_in_a_child_that_holds_torch_and_the_callers_files(tree):
    started(tree)
    pid, code, out, err = call(tree, "5", "x", env={"PROBE": "again"})
    words = out.split()
    assert code == 5 and err == "to stderr\n", (out, err)
    assert words[1] != str(pid) and words[3] == str(tree) and words[5:7] == ["['5',", "'x']"]
    assert words[7:] == ["torch", "True", "env", "again", "version", "1", "stdin", "line"]
    # an edit of the caller's module is seen at once: the server holds no module of the caller's tree
    (tree / "probe.py").write_text("VERSION = 2\n" + PROBE)
    assert call(tree)[2].split()[-3] == "2"
    # the switch: the caller's process again, though a server runs
    pid, code, out, _ = call(tree, env={warm.SWITCH: "0"})
    assert out.split()[1] == str(pid) and "torch False" in out


def test_a_signal_to_the_caller_reaches_the_child_and_stop_ends_the_server(tree):
    started(tree)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tree}"}
    p = subprocess.Popen([sys.executable, "-m", "lossbench.warm", "probe", "sleep"], cwd=tree, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if (tree / "started").exists():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "KeyboardInterrupt" in err, (out, err)
    assert warm.stop() and not warm.address().exists()
    assert not warm.stop()  # none runs now


def test_where_no_socket_folder_can_be_made_the_module_runs_in_the_callers_process(tree):
    blocked = tree / "a-file"
    blocked.write_text("not a folder")
    for start in (False, True):  # a train stage's call would start a server: there is nowhere to put one
        pid, code, out, err = call(tree, "4", env={warm.DIR: str(blocked / "sockets")}, start=start)
        assert code == 4 and out.split()[1] == str(pid) and err == "to stderr\n", (out, err)


def test_a_server_whose_imports_initialised_cuda_serves_nobody(tree, monkeypatch):
    """A child forked from a process that initialised CUDA cannot use CUDA: such a server leaves at once, and the
    stage runs in its caller's process. Here (no GPU) CUDA's state is faked; the real one is gpu/run.sh's."""
    import torch

    real = torch.cuda.is_initialized
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # serve() sets it: kept out of the other tests
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    path = warm.address()
    t0 = time.monotonic()
    warm.serve(path)  # in this process: binds, imports (already here), sees CUDA initialised, leaves
    assert time.monotonic() - t0 < 5 and not path.exists()
    assert warm.cuda_initialised()
    monkeypatch.setattr(torch.cuda, "is_initialized", real)
    assert not warm.cuda_initialised()  # nothing here touched CUDA
    pid, code, out, _ = call(tree, "6")
    assert code == 6 and out.split()[1] == str(pid)


def test_the_switch_decides_and_unset_it_is_off_only_where_a_gpu_is_visible(monkeypatch):
    """Forking a warm process for CUDA work has not run on a GPU: there it is off unless asked for (gpu/run.sh)."""
    for gpu in (False, True):
        monkeypatch.setattr(warm, "nvidia_visible", lambda: gpu)
        assert warm.enabled({warm.SWITCH: "1"}) and not warm.enabled({warm.SWITCH: "0"})
        assert warm.enabled({}) is (not gpu)
