"""Every stage declares the code it runs: its module's imports, followed through the repository, are its deps."""

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("lossbench", "stages")


def module_file(name):
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imports(path):
    """The repository modules a file imports, at top level or inside a function (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGES)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGES):
            found.add(node.module)  # `from lossbench import gpu`: the package's submodules, below
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return {m for m in found if module_file(m)}


def closure(module):
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imports(module_file(m))
    return {str(module_file(m).relative_to(ROOT)) for m in seen}


def stages():
    """(pipeline file, stage name, the module its command runs, its declared deps from the project root)."""
    for path, base in ((ROOT / "stages" / "pipeline.yaml", "../../"), (ROOT / "dvc.yaml", "")):
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            module = stage["cmd"].split("python -m ", 1)[1].split()[0]
            if module == "lossbench.warm":  # the stage's own module runs in the warm process (warm's options first)
                module = next(w for w in stage["cmd"].split("python -m lossbench.warm ", 1)[1].split()
                              if not w.startswith("-"))
            deps = {d.removeprefix(base) for d in stage.get("deps", []) if d.endswith(".py")}
            yield pytest.param(module, deps, stage.get("always_changed", False), id=f"{path.name}:{name}")


@pytest.mark.parametrize("module, deps, always", list(stages()))
def test_a_stage_declares_exactly_the_code_it_imports(module, deps, always):
    if always:  # DVC runs it every time (the check): what it runs cannot go stale, so it declares nothing
        assert deps == set()
        return
    needed = closure(module)
    assert needed - deps == set(), f"{module} runs code its stage does not declare"
    assert deps - needed == set(), f"{module}'s stage declares code it never runs (a needless re-run)"


def test_the_package_markers_hold_no_code():
    # an __init__ is imported with every module but declared by no stage: it may hold a docstring only
    for init in (ROOT / p / "__init__.py" for p in PACKAGES):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), init
