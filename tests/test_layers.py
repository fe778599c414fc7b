"""The package's layers: every vlmcls module imports only modules of its own layer or below, and no circle.

The imports are read from the source with `ast` (absolute and relative, at the top and inside functions), so a
lazy import inside a function counts as much as one at the top.

    python tests/test_layers.py    # print the module graph
"""
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlmcls"

# Bottom first. A module may import modules of its own layer (without a circle) and of the layers below it.
LAYERS = [
    ("base", ["cli", "files", "compat"]),
    ("data", ["images", "labels", "prompt", "pixels", "augment", "inputs", "report", "confidence",
              "multi_label", "label_issues"]),
    ("models", ["models", "vision_cache"]),
    ("objectives", ["objectives.base", "objectives.answer", "objectives.head", "objectives", "saved"]),
    ("training and prediction", ["prediction", "calibration", "validation", "training", "onnx_runtime", "explain",
                                 "openvino_runtime", "runtime"]),
    ("runs and the app", ["prediction_files", "evaluation", "app", "export"]),
]


def module_names():
    """Every module of the package, as dotted names relative to it ("models", "objectives.head")."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join(parts))
    return names


def _source(name):
    folder = PACKAGE.joinpath(*name.split("."))
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def imports_of(name, known):
    """The package modules that module `name` imports, anywhere in its source."""
    path = _source(name)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                stem = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "vlmcls":
                stem = node.module.split(".")
            else:
                continue
            stem = [p for p in stem if p != "vlmcls"] if not node.level else stem
            # `from . import x` / `from .pkg import mod`: the name imported may be a module itself
            targets = [".".join(stem + [a.name]) for a in node.names] + [".".join(stem)]
        else:
            continue
        for target in targets:
            target = target.removeprefix("vlmcls.").removeprefix("vlmcls")
            if target in known and target != name:
                found.add(target)
    return found


def graph():
    known = set(module_names())
    return {name: sorted(imports_of(name, known)) for name in sorted(known)}


def cycles(edges):
    """Each circle of the graph once, as a list of modules."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"
    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return found


def layer_of():
    return {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def test_every_module_has_a_layer():
    placed = layer_of()
    missing = sorted(set(module_names()) - set(placed))
    assert not missing, f"modules in no layer of LAYERS (tests/test_layers.py): {missing}"
    gone = sorted(set(placed) - set(module_names()))
    assert not gone, f"LAYERS names modules that do not exist: {gone}"


def test_no_module_imports_a_layer_above_its_own():
    placed, names = layer_of(), [name for name, _ in LAYERS]
    upward = [f"{module} ({names[placed[module]]}) imports {target} ({names[placed[target]]})"
              for module, targets in graph().items() for target in targets
              if module in placed and target in placed and placed[target] > placed[module]]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circle():
    found = cycles(graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_only_the_registry_imports_an_objectives_own_module():
    """Training, prediction, validation, calibration, evaluation and the app reach an objective through
    vlmcls.objectives (its registry and interface), never through the objective's own module."""
    own = [name for name, _ in graph().items() if name.startswith("objectives.") and name != "objectives.base"]
    found = [f"{module} imports {target}" for module, targets in graph().items() for target in targets
             if target in own and not module.startswith("objectives")]
    assert not found, "imports of an objective's own module:\n" + "\n".join(found)


def test_the_docs_list_every_module():
    """docs/package.md names each module's file, and vlmcls/__init__.py each module, as LAYERS has them."""
    docs = (PACKAGE.parent / "docs" / "package.md").read_text(encoding="utf-8")
    opening = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")))
    for name in module_names():
        path = name.replace(".", "/") + ("/__init__.py" if _source(name).name == "__init__.py" else ".py")
        assert f"`{path}`" in docs, f"docs/package.md does not list {path}"
        assert name.split(".")[0] in opening, f"vlmcls/__init__.py does not name {name}"


def test_the_reader_finds_relative_absolute_and_function_level_imports(tmp_path, monkeypatch):
    package = tmp_path / "vlmcls"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("from .b import x\nimport vlmcls.c\n\ndef f():\n    from vlmcls.sub import d\n")
    (package / "b.py").write_text("from . import a\n")
    (package / "c.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .d import y\n")
    (package / "sub" / "d.py").write_text("from ..c import z\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    edges = graph()
    assert edges == {"a": ["b", "c", "sub", "sub.d"], "b": ["a"], "c": [], "sub": ["sub.d"], "sub.d": ["c"]}
    assert cycles(edges) == [["a", "b", "a"]]


if __name__ == "__main__":
    for module, targets in graph().items():
        print(f"{module} -> {' '.join(targets)}")
