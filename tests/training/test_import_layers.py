"""The package's layers, read from the source with `ast` (nothing is imported):

    models/dmil  <-  evaluation  <-  training  <-  hub

An arrow points from a layer to one it may import. The model unit (`models/dmil`, what `save_pretrained` copies as
remote code) imports only torch, transformers, numpy, the standard library and itself (PIL, soundfile and PyAV lazily,
where a medium is read). No module imports one of a higher layer at import time; the trainer reaches the Hub only
through the publisher it is given, or the default one it builds when it first needs it (a lazy import). And no two
modules import each other, directly or around a circle, counting lazy imports (inside functions) too: a circle held
open only by a lazy import is still a circle.
"""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dmil_hf"
LAYERS = ("models", "evaluation", "training", "hub")
MODEL_UNIT_ALLOWED = {"torch", "transformers", "numpy", "__future__"}
MODEL_UNIT_LAZY = {"PIL", "soundfile", "av"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, at import time?) for every import statement of the file, `TYPE_CHECKING` blocks left
    out. `from a import b` names `a.b` when that is a module of the package, else `a`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if is_package(path) else here.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for sub in child.orelse:
                    visit_statement(sub, top)
                continue
            visit_statement(child, top)

    def visit_statement(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            found.extend((alias.name, top) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")
                base = base[: len(base) - (child.level - 1)]
                target = ".".join(base + ([child.module] if child.module else []))
            else:
                target = child.module
            for alias in child.names:
                candidate = f"{target}.{alias.name}"
                found.append((candidate if _module_exists(candidate) else target, top))
        else:
            lazy = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not lazy)

    visit(tree, True)
    return found


def _module_exists(name: str) -> bool:
    if not name.startswith("dmil_hf"):
        return False
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def graph() -> dict[str, list[tuple[str, bool]]]:
    modules = package_modules()
    return {name: [(t, top) for t, top in imports(path) if t in modules] for name, path in modules.items()}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One import circle (a list of modules ending where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_no_import_circles_between_modules():
    edges = {name: sorted({t for t, _ in targets if t != name}) for name, targets in graph().items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_model_unit_imports_only_torch_transformers_numpy_the_stdlib_and_itself():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for name, path in package_modules().items():
        if not name.startswith("dmil_hf.models"):
            continue
        for target, top in imports(path):
            root = target.split(".")[0]
            if target.startswith("dmil_hf."):
                if not target.startswith("dmil_hf.models"):
                    bad.append(f"{name} imports {target}")
            elif root in MODEL_UNIT_ALLOWED or root in stdlib:
                continue
            elif root in MODEL_UNIT_LAZY and not top:
                continue
            else:
                bad.append(f"{name} imports {target}{' at import time' if top else ''}")
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_higher_layer_at_import_time():
    order = {name: rank for rank, name in enumerate(LAYERS)}
    bad = []
    for name, targets in graph().items():
        own = layer(name)
        if own is None:
            continue
        for target, top in targets:
            other = layer(target)
            if other is None or order[other] <= order[own]:
                continue
            # The model unit and evaluation never reach up, not even lazily; training reaches the Hub lazily only.
            if top or own in ("models", "evaluation"):
                bad.append(f"{name} imports {target}{' at import time' if top else ' (lazily)'}")
    assert not bad, "\n".join(bad)
