"""A warm process: torch imported once, each stage that needs it forked from it.

Every process that trains pays torch's and ``torch._dynamo``'s import (~2-3 s here; Adam's step imports
``torch._dynamo``); a run has one such process a configuration (that is what makes an edit retrain one
configuration), and an edit two (the check pre-flights the loss, its train stage trains it). So the stages
that need torch run as ``python -m lossbench.warm <module> <args>``:

- a server of this user's, for this Python and the environment that shapes an import (thread pools, CUDA,
  the hash seed: ``key``), holds torch, NumPy and pandas imported and nothing of the project's: the stage's
  own code is imported fresh in each child, from the caller's working directory and PYTHONPATH, so an edit
  is always seen;
- the client sends its argv, working directory, environment and stdin/stdout/stderr; the server forks, the
  child becomes that process (``runpy``, as ``python -m``) and sends back its exit status, which the client
  exits with; SIGINT and SIGTERM are passed on, and a child whose client is gone stops;
- without a server, the client runs the module itself, as ``python -m`` would, and starts one in the
  background for the stages after it; ``--no-start`` does not (the check, which needs torch only when
  something changed, calls ``start()`` itself then);
- the server exits after ``IDLE`` seconds without a request; ``python -m lossbench.warm --stop`` ends it
  now. ``LOSSBENCH_WARM=0`` turns all of it off.
- CUDA: a child initialises CUDA itself, which works only in a process forked from one that never did. So the
  server's imports ask for devices through NVML (``PYTORCH_NVML_BASED_CUDA_CHECK``), and a server whose imports
  initialised CUDA anyway serves nobody (each stage then runs on its own). Not yet run on a GPU: where one is
  visible the warm process is off unless ``LOSSBENCH_WARM=1`` asks for it, as gpu/run.sh does (and repeats a
  failed stage with it off).
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from pathlib import Path

SWITCH = "LOSSBENCH_WARM"          # 0: every stage imports torch itself
DIR = "LOSSBENCH_WARM_DIR"         # where the sockets live (tests use their own)
IDLE = 600                         # seconds a server waits for its next request
PRELOAD = ("torch", "torch._dynamo", "numpy", "pandas")
# what an import reads from the environment (thread pools, CUDA, the hash seed): one server per combination
SHAPES_IMPORT = ("OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "TORCH", "PYTORCH_", "LD_", "PYTHONHASHSEED",
                 "CUBLAS_", "KMP_")


def nvidia_visible():
    return any(Path("/dev").glob("nvidia[0-9]*"))


def enabled(env=os.environ):
    """``LOSSBENCH_WARM`` 1 or 0 decides; unset, on, except where an NVIDIA GPU is visible: a stage forked for CUDA
    work has not run on a GPU yet, so there only gpu/run.sh asks for it (and falls back to it off)."""
    if SWITCH in env:
        return env[SWITCH] != "0"
    return not nvidia_visible()


def cuda_initialised():
    """Whether this process initialised CUDA: then no child forked from it can use CUDA."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def key(env=os.environ):
    """This Python, its torch's files and the import-shaping environment, as a short digest."""
    import importlib.util

    origin = (importlib.util.find_spec("torch") or importlib.util.find_spec("numpy")).origin
    shaping = sorted((k, v) for k, v in env.items() if k.startswith(SHAPES_IMPORT))
    text = json.dumps([sys.executable, origin, os.stat(origin).st_mtime_ns, shaping])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sockets(env=os.environ):
    base = Path(env.get(DIR) or Path(env.get("XDG_RUNTIME_DIR") or "/tmp") / f"lossbench-warm-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def address(env=os.environ):
    """This environment's socket; None where no folder for it can be made (then every stage runs on its own)."""
    try:
        return sockets(env) / f"{key(env)}.sock"
    except OSError:
        return None


def _connect(path):
    if path is None:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError:  # no server, or one that has gone
        s.close()
        return None


def start(path=None):
    """Start this environment's server (at ``path``, default its address) in the background unless one runs
    there; never waits for it."""
    path = path or address()
    if not enabled() or path is None:  # off, or no folder for its socket
        return
    probe = _connect(path)
    if probe is not None:
        probe.close()
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the server imports no project code
    subprocess.Popen([sys.executable, "-m", "lossbench.warm", "--serve", str(path)], cwd=Path(__file__).parents[1],
                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def _send(conn, message):
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive(conn, fds=0):
    """One JSON line, and up to ``fds`` file descriptors sent with its first bytes."""
    data, received = b"", []
    while not data.endswith(b"\n"):
        if fds and not received:
            chunk, ancdata, _, _ = socket.recv_fds(conn, 1 << 16, fds)
            received = list(ancdata)
        else:
            chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return json.loads(data), received


def client(argv, start_one=True):
    """Run ``python -m argv[0] argv[1:]`` in a child of the warm server, or here when none runs (then, with
    ``start_one``, start one for the next)."""
    path = address() if enabled() else None
    conn = _connect(path)
    if conn is None:
        if start_one:
            start(path)
        return _run_module(argv)
    with conn:
        try:
            socket.send_fds(conn, [json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
                                   + b"\n"], [0, 1, 2])
            started, _ = _receive(conn)
        except (ConnectionError, OSError):  # a server that was ending: nothing ran there, so run here
            return _run_module(argv)
        child = started["pid"]

        def forward(signum, _frame):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, forward)
        try:
            done, _ = _receive(conn)
        except ConnectionError:  # the child died without a word (killed)
            return 1
        return done["exit"]


def _run_module(argv):
    import runpy

    sys.argv = list(argv)
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message"), as python prints it
        return 1
    return 0


def _child(conn, request, fds, base_path):
    """In the forked child: become the client's process, run its module, send back its exit status."""
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # the project's modules come from the caller's tree, as `python -m` would find them; the server's are dropped
    extra = [os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *extra, *base_path]
    kept = tuple(p for p in {sys.prefix, sys.base_prefix, sys.exec_prefix} if p)
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and not os.path.abspath(origin).startswith(kept):
            del sys.modules[name]
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    _send(conn, {"pid": os.getpid()})

    def watch():  # the client gone (killed): stop, as a process of its own would
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()
    try:
        code = _run_module(request["argv"])
    except BaseException:  # the child's own top level: print what python would, exit as it would
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        _send(conn, {"exit": code})
    finally:
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


def serve(path):
    """Bind first (a client that comes meanwhile waits for the imports, never imports twice), import, then fork
    one child a request until ``IDLE`` seconds pass without one."""
    path = Path(path)
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        lock.bind(str(tmp))
        os.replace(tmp, path)  # two starting at once: the last one's socket is the one clients find
        mine = path.stat().st_ino
    except OSError:
        return
    lock.listen(64)
    base_path = [p for p in sys.path if p and Path(p).resolve() != Path.cwd().resolve()]
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # torch.cuda.is_available() without initialising CUDA
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    lock.settimeout(IDLE)
    stopping = None
    try:
        if cuda_initialised():  # no child of this process could use CUDA: serve nobody
            return
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
        while True:
            try:
                conn, _ = lock.accept()
            except socket.timeout:
                break
            try:
                request, fds = _receive(conn, fds=3)
            except (ConnectionError, ValueError):
                conn.close()
                continue
            if request.get("stop"):  # answered by closing, once the socket is gone
                stopping = conn
                break
            if os.fork() == 0:  # never back into this loop, whatever happens in the child
                try:
                    lock.close()
                    _child(conn, request, fds, base_path)
                finally:
                    os._exit(1)
            for fd in fds:
                os.close(fd)
            conn.close()
    finally:
        if path.exists() and path.stat().st_ino == mine:  # not a newer server's
            path.unlink()
        lock.close()
        if stopping is not None:
            stopping.close()


def stop(path=None):
    """End the server at ``path`` (default: this environment's), if one runs there; True if one did."""
    conn = _connect(path or address())
    if conn is not None:
        with conn:
            _send(conn, {"stop": True})
            conn.recv(1)  # until the server closes it: gone
    return conn is not None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1])
        return 0
    if argv[:1] == ["--stop"]:
        print(f"warm: {'stopped the server' if stop() else 'no server ran'} ({address()})", file=sys.stderr)
        return 0
    start_one = argv[:1] != ["--no-start"]
    argv = argv if start_one else argv[1:]
    if not argv or argv[0].startswith("-"):
        print("usage: python -m lossbench.warm [--no-start] MODULE [ARGS...] | --stop", file=sys.stderr)
        return 2
    return client(argv, start_one)


if __name__ == "__main__":
    sys.exit(main())
