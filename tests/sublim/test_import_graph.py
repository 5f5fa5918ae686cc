"""No import cycle among the lab's modules: every `import` and `from ... import` (function-local
ones included: hiding a cycle inside a function does not remove it) of every module under the
`sublim` namespace, resolved to modules, must form an acyclic graph.

And the LLM layers: llm_validation's experiments (pipeline, alignment, distill, probes) share code only
through `core/`; none imports another, and core imports none of them."""

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    """module name -> file, from pyproject's package-dir (the folders imported as sublim.*)."""
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in sorted(package_dir.items()):  # sublim first; an area's folder defines its own
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            if any(part.startswith(".") or part == "results" for part in rel.parts):
                continue
            out[".".join([package, *[p for p in rel.parts if p != "__init__"]])] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{a.name}" for a in node.names} & modules.keys()
            # `from pkg import module` imports the module (its package is a parent, imported first
            # by Python in any case: not an edge); `from module import name` imports the module.
            targets |= submodules or {base}
    return {t for t in targets if t in modules and t != name}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_among_sublim_modules():
    modules = _modules()
    assert "sublim.llm_validation.core.models" in modules and "sublim.cli" in modules
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 50  # the parser really sees the imports
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


LLM = "sublim.llm_validation."
EXPERIMENTS = ("pipeline", "alignment", "distill", "probes")


def _llm_area(module: str) -> str | None:
    return module[len(LLM):].split(".")[0] if module.startswith(LLM) else None


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that break the layers: experiment -> another experiment, or core -> an experiment."""
    bad = []
    for src, targets in sorted(graph.items()):
        a = _llm_area(src)
        if a not in (*EXPERIMENTS, "core"):
            continue
        for dst in sorted(targets):
            b = _llm_area(dst)
            if b in EXPERIMENTS and b != a:
                bad.append(f"{src} -> {dst}")
    return bad


def test_llm_experiments_share_code_only_through_core():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    for area in (*EXPERIMENTS, "core"):  # the areas exist under these names (a rename would pass silently)
        assert any(_llm_area(m) == area for m in modules), area
    assert _layer_violations(graph) == []


def test_the_layer_check_flags_an_experiment_importing_another():
    graph = {LLM + "distill.sft": {LLM + "pipeline.config", LLM + "core.finetune"},
             LLM + "core.models": {LLM + "alignment.run"}, LLM + "pipeline.cli": {LLM + "pipeline.config"},
             LLM + "alignment.run": {LLM + "core.scores"}}
    assert _layer_violations(graph) == [f"{LLM}core.models -> {LLM}alignment.run",
                                        f"{LLM}distill.sft -> {LLM}pipeline.config"]
