"""The import graph points down: no stage imports another stage's code, and no two units import each other.

Stages own their package (STAGE_CODE); everything else under src/desta is shared by every stage (settings, tracking,
the model, the conversation and record contracts, the manifest, audio decoding). Imports inside functions count too:
a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

from desta.stages import STAGES

SRC = Path(__file__).resolve().parents[2] / "src"
# stage -> the modules (and packages) that are its own code
STAGE_CODE = {
    "prepare": ("desta.data.prepare", "desta.data.corpora", "desta.data.demo", "desta.data.synth", "desta.data.tts",
                "desta.data.quality", "desta.data.ray_ingest"),
    "generate": ("desta.selfgen",),
    "validate": ("desta.validate",),
    "train": ("desta.train",),
    "evaluate": ("desta.evaluate",),
    "register": ("desta.registry",),
}
ENTRY_POINTS = {"desta.cli", "desta.stages", "desta.__init__", "desta"}  # dispatch to every stage by design


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("desta")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("desta") and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (SRC / "desta").rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def owner(module: str) -> str | None:
    for stage, prefixes in STAGE_CODE.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return stage
    return None


def unit(module: str) -> str:
    """A stage's name for its code; the models package as one unit; any other shared module as itself."""
    return owner(module) or ("desta.models" if module.startswith("desta.models") else module)


def test_stage_code_covers_every_stage():
    assert list(STAGE_CODE) == list(STAGES)
    for stage, target in STAGES.items():
        assert owner(target.split(":")[0]) == stage, f"{target} is not inside {stage}'s own code"


def test_no_stage_imports_another_stages_code():
    bad = [f"{src} -> {dst}" for src, deps in _graph().items() if src not in ENTRY_POINTS
           for dst in deps if owner(dst) and owner(src) != owner(dst)]
    assert not bad, "a stage imports another stage's package (move the shared part below the stages):\n" + \
        "\n".join(sorted(bad))


def test_no_import_circle_between_units():
    edges: dict[str, set[str]] = {}
    for src, deps in _graph().items():
        if src in ENTRY_POINTS:
            continue
        edges.setdefault(unit(src), set()).update(unit(d) for d in deps if unit(d) != unit(src))
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, "import circle(s):\n" + "\n".join(sorted(set(cycles)))


# modules whose edits cannot change a stage's outputs: not code deps in dvc.yaml (editing them re-runs nothing)
NOT_CODE_DEPS = {
    "desta.tracking": "MLflow logging only",
    "desta.tracking_outbox": "MLflow logging only (calls queued while the server is away)",
    "desta.io_retry": "retries and time-outs of remote calls: an outage fails the stage, it never changes what is "
                      "written",
    "desta.config": "types and bounds of settings; the values come from params.yaml (declared per key)",
    "desta.ray_cluster": "connects to a Ray cluster; where the work runs never changes the outputs",
    "desta.config_checks": "cross-field checks and error wording of settings (as desta.config)",
}


def _closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo += graph.get(mod, ())
        parent = mod.rsplit(".", 1)[0]
        if parent != mod and parent in graph:  # importing a.b runs a/__init__.py
            todo.append(parent)
    return seen


def _file(module: str) -> str:
    path = SRC.joinpath(*module.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(SRC.parent))


def test_dvc_code_deps_follow_the_imports():
    """Every source file a stage's entry module reaches through imports is under one of the stage's dvc.yaml deps,
    so editing a shared contract (e.g. desta/records.py) re-runs every stage that uses it."""
    import yaml

    dvc = yaml.safe_load((SRC.parent / "dvc.yaml").read_text())["stages"]
    graph = _graph()
    missing = {}
    for stage, target in STAGES.items():
        deps = [d for d in dvc[stage]["deps"] if isinstance(d, str) and d.startswith("src/")]
        needed = {_file(m) for m in _closure(target.split(":")[0], graph) if m not in NOT_CODE_DEPS and m != "desta"}
        uncovered = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
        if uncovered:
            missing[stage] = uncovered
    assert not missing, f"dvc.yaml: add these code deps (or list the module in NOT_CODE_DEPS): {missing}"
