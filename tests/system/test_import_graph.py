"""The import graph of interp, sae and circuits, read from the source with `ast` (nothing imported).

The graph: one node per module (`pkg/__init__.py` is the node `pkg`), one edge per import of one
of our modules, resolved to the module it names: `import a.b.c` and `from a.b import c` (c a
submodule) point at `a.b.c`, `from a.b import name` at `a.b`, relative imports from the importer's
package. The implicit initialisation of parent packages is not an edge: `pkg.sub` importing
`pkg.other` runs `pkg/__init__`, but it does not depend on what `pkg/__init__` re-exports, so a
package that re-exports its children (`pkg -> pkg.sub`) never makes `pkg.sub -> pkg.other`
cyclic. A child importing its own package's `__init__` (`from pkg import name` inside `pkg.sub`)
is an edge like any other and closes a real circle with the re-export. Imports under
`if TYPE_CHECKING:` never run and are left out of the circles (they count for the layering).

Checked:
(a) no circle among modules, counting module-level and function-level imports alike;
(b) no function-level import of our own code that would be a circle at module level (a lazy
    import may keep a heavy module unloaded, never hide a circle);
(c) no private name of another top-level package: neither `from X import _name` nor `X._name`
    on a module of ours, and of third-party code only the uses listed in THIRD_PARTY_PRIVATE;
(d) layering: interp imports neither sae nor circuits; sae does not import circuits.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("interp", "sae", "circuits")
# What each top-level package may import of ours (besides itself).
MAY_IMPORT = {"interp": set(), "sae": {"interp"}, "circuits": {"interp", "sae"}}
# Private names of third-party packages we use, each in one place and why (the pins in
# pyproject.toml keep them stable).
THIRD_PARTY_PRIVATE = {
    # nnsight 0.8 has no public wrapper for a pipeline already in memory.
    ("interp.methods.generation", "nnsight.modeling.diffusion", "_PipelineModule"),
    # The FLUX processor we reproduce (diffusers 0.42) splits q/k/v with this helper.
    ("interp.engine.attention", "diffusers.models.transformers.transformer_flux", "_get_qkv_projections"),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    kind: str  # "module", "function" or "typing"

    def where(self, modules: dict[str, Path]) -> str:
        return f"{modules[self.source]}:{self.line}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> its file, relative to `root`."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f.relative_to(root)
    return out


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.module, self.modules = module, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = self.typing = 0
        self.edges: list[Edge] = []
        self.private: list[tuple[int, str]] = []  # (line, what) of private names of other packages
        self.aliases: dict[str, str] = {}  # local name -> module of ours it is bound to

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def _kind(self) -> str:
        return "function" if self.depth else "typing" if self.typing else "module"

    def _scoped(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_If(self, node: ast.If) -> None:
        t = node.test
        if (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"):
            self.typing += 1
            for n in node.body:
                self.visit(n)
            self.typing -= 1
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def _edge(self, target: str | None, line: int) -> None:
        if target is not None and target != self.module:
            self.edges.append(Edge(self.module, target, line, self._kind()))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            target = _deepest(a.name, self.modules)
            self._edge(target, node.lineno)
            if target is not None:
                # `import a.b` binds `a`; `import a.b as x` binds x to a.b
                self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".") if self.package else []
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        ours = source.split(".")[0] in PACKAGES
        for a in node.names:
            sub = f"{source}.{a.name}"
            if ours:
                if sub in self.modules:
                    self._edge(sub, node.lineno)
                    self.aliases[a.asname or a.name] = sub
                else:
                    self._edge(_deepest(source, self.modules), node.lineno)
                    if is_private(a.name) and source.split(".")[0] != self.top:
                        self.private.append((node.lineno, f"from {source} import {a.name}"))
            elif is_private(a.name) and (self.module, source, a.name) not in THIRD_PARTY_PRIVATE:
                self.private.append((node.lineno, f"from {source} import {a.name} (third-party private)"))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # `alias.x._y` where alias is bound to one of our modules of another top-level package
        chain, n = [], node
        while isinstance(n, ast.Attribute):
            chain.append(n.attr)
            n = n.value
        if isinstance(n, ast.Name) and n.id in self.aliases:
            target = self.aliases[n.id]
            if target.split(".")[0] != self.top:
                names = list(reversed(chain))
                bad = [x for x in names if is_private(x)]
                if bad:
                    self.private.append((node.lineno, f"{n.id}.{'.'.join(names)}"))
                    return  # report a chain once, at its outermost attribute
        self.generic_visit(node)


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: list[Edge]
    private: list[tuple[str, int, str]]

    def adjacency(self, kinds: set[str]) -> dict[str, dict[str, Edge]]:
        adj: dict[str, dict[str, Edge]] = {m: {} for m in self.modules}
        for e in self.edges:
            if e.kind in kinds:
                adj[e.source].setdefault(e.target, e)
        return adj


def build_graph(root: Path = ROOT) -> Graph:
    modules = find_modules(root)
    edges, private = [], []
    for name, path in modules.items():
        v = _Visitor(name, path.name == "__init__.py", modules)
        v.visit(ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path)))
        edges += v.edges
        private += [(name, line, what) for line, what in v.private]
    return Graph(modules, edges, private)


def find_cycle(adj: dict[str, dict[str, Edge]]) -> list[Edge] | None:
    """One circle of `adj` as its edges (source -> ... -> source), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Edge] = []

    def visit(m: str) -> list[Edge] | None:
        state[m] = 1
        for t, e in sorted(adj[m].items()):
            if state.get(t) == 1:
                start = next(i for i, x in enumerate(path) if x.source == t) if any(x.source == t for x in path) else len(path)
                return path[start:] + [e]
            if t not in state:
                path.append(e)
                found = visit(t)
                if found:
                    return found
                path.pop()
        state[m] = 2
        return None

    for m in sorted(adj):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def reaches(adj: dict[str, dict[str, Edge]], start: str, goal: str) -> list[Edge] | None:
    """A path of edges start -> ... -> goal, or None."""
    prev: dict[str, Edge | None] = {start: None}
    todo = [start]
    while todo:
        m = todo.pop(0)
        if m == goal:
            out: list[Edge] = []
            while prev[m] is not None:
                out.append(prev[m])
                m = prev[m].source
            return out[::-1]
        for t, e in sorted(adj[m].items()):
            if t not in prev:
                prev[t] = e
                todo.append(t)
    return None


def describe(edges: list[Edge], modules: dict[str, Path]) -> str:
    return "\n".join(f"  {e.source} -> {e.target}  ({e.kind}-level, {e.where(modules)})" for e in edges)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


def test_the_graph_sees_the_packages(graph: Graph) -> None:
    # Guards the walk itself: a resolver that lost relative or `from pkg import submodule` imports
    # would make every assertion below vacuous.
    assert {"interp", "interp.model.model", "sae", "circuits", "circuits.stats"} <= set(graph.modules)
    targets = {(e.source, e.target) for e in graph.edges}
    assert ("interp", "interp.model.model") in targets
    assert ("circuits.locate.scan", "circuits.stats") in targets  # `from circuits import stats as sb`
    assert len(graph.edges) > 300


def test_no_import_circle(graph: Graph) -> None:
    cycle = find_cycle(graph.adjacency({"module", "function"}))
    if cycle is not None:
        pytest.fail("import circle (module- and function-level imports):\n" + describe(cycle, graph.modules), pytrace=False)


def test_no_function_level_import_hides_a_circle(graph: Graph) -> None:
    adj = graph.adjacency({"module"})
    found = []
    for e in graph.edges:
        if e.kind == "function":
            back = reaches(adj, e.target, e.source)
            if back is not None:
                found.append(f"{e.source} imports {e.target} inside a function ({e.where(graph.modules)}), "
                             f"and at module level:\n" + describe(back, graph.modules))
    if found:
        pytest.fail("function-level imports that dodge a circle:\n" + "\n".join(found), pytrace=False)


def test_no_private_names_across_packages(graph: Graph) -> None:
    found = [f"  {graph.modules[m]}:{line}: {what}" for m, line, what in graph.private]
    if found:
        pytest.fail("private names used across top-level packages:\n" + "\n".join(found), pytrace=False)


def test_layering(graph: Graph) -> None:
    bad = [e for e in graph.edges
           if (top := e.source.split(".")[0]) != (dst := e.target.split(".")[0]) and dst not in MAY_IMPORT[top]]
    if bad:
        pytest.fail("interp imports neither sae nor circuits; sae does not import circuits:\n"
                    + describe(bad, graph.modules), pytrace=False)


# -- the checks catch what they claim to (on a small source tree written here) --------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Graph:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    for name, text in files.items():
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return build_graph(tmp_path)


def test_a_circle_closed_inside_a_function_is_found(tmp_path: Path) -> None:
    g = _tree(tmp_path, {
        "interp/a.py": "from interp.b import f\n",
        "interp/b.py": "def f():\n    from . import a\n    return a\n",
    })
    cycle = find_cycle(g.adjacency({"module", "function"}))
    assert cycle is not None and {e.source for e in cycle} == {"interp.a", "interp.b"}
    assert "function-level" in describe(cycle, g.modules)
    adj = g.adjacency({"module"})
    assert find_cycle(adj) is None and reaches(adj, "interp.a", "interp.b") is not None


def test_a_package_re_exporting_its_children_is_no_circle(tmp_path: Path) -> None:
    g = _tree(tmp_path, {
        "interp/pkg/__init__.py": "from interp.pkg.one import x\nfrom interp.pkg.two import y\n",
        "interp/pkg/one.py": "x = 1\n",
        "interp/pkg/two.py": "from interp.pkg.one import x\ny = x\n",
    })
    assert find_cycle(g.adjacency({"module", "function"})) is None
    # ... but a child importing from its own package's __init__ is one
    g = _tree(tmp_path, {"interp/pkg/two.py": "from interp.pkg import x\ny = x\n"})
    cycle = find_cycle(g.adjacency({"module", "function"}))
    assert cycle is not None and {e.source for e in cycle} == {"interp.pkg", "interp.pkg.two"}


def test_private_names_and_layering_are_found(tmp_path: Path) -> None:
    g = _tree(tmp_path, {
        "interp/a.py": "_hidden = 1\nfrom interp import b\n",
        "interp/b.py": "from interp.a import _hidden\n",  # same package: allowed
        "sae/s.py": "import interp.a\nfrom interp.a import _hidden\ny = interp.a._hidden\nfrom nnsight import _x\n",
        "interp/c.py": "from circuits import stats\n",
    })
    whats = sorted(w for _, _, w in g.private)
    assert whats == ["from interp.a import _hidden", "from nnsight import _x (third-party private)", "interp.a._hidden"]
    assert [(e.source, e.target) for e in g.edges if e.source == "interp.c"] == [("interp.c", "circuits")]
