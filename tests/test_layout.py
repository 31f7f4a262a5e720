"""The package's layering: no import circle, and each part imports only what its docstring allows.

Every ``import`` / ``from ... import`` of a medddpm module counts, at any nesting level (inside
functions and ``if TYPE_CHECKING:`` too): a circle hidden in a function is still a circle.

The rule of a part is the "May import:" sentence of its docstring (a subpackage's ``__init__``, or
a top-level module's own), e.g. ``May import: ``medddpm.config``, ``errors``, ``training.checkpoint``.``:
a name is a part (``data``) or one module of a part (``training.checkpoint``); ``everything`` allows
all. A part always may import itself and the package root (``medddpm.__version__``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import medddpm

PACKAGE = Path(medddpm.__file__).parent

RULES_NOT_IN_DOCSTRINGS = {
    "__main__": {"cli"},
    "errors": set(),
    "preview": set(),
    "config": {"errors", "output_folder", "diffusion"},
}
"""Rules of top-level modules whose docstrings do not state one yet (same form as the sentence)."""

KNOWN_VIOLATIONS = {
    # (importing module, imported module): what is to be done. Each entry is a fault to fix, not an
    # exception to keep: the tests fail once it is fixed, so that the entry is removed with it.
}


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module, e.g. medddpm.training.loop."""
    target: str
    """The imported medddpm module (a package means its __init__)."""
    line: int


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package's __init__ under the package's name)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("medddpm", *path.relative_to(PACKAGE).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The module an import of ``name`` loads: itself, else the longest module prefix of it."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports(modules: dict[str, Path]) -> list[Import]:
    """Every import of a medddpm module, at any nesting level, by every module."""
    found = []
    for source, path in modules.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..data import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from pkg import sub`` loads pkg.sub when that is a module, else pkg itself
                names = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            for name in names:
                if name == "medddpm" or name.startswith("medddpm."):
                    found.append(Import(source, _resolve(name, modules), node.lineno))
    return found


def part_of(module: str) -> str:
    """The part a module belongs to: its subpackage (``training``) or itself (``config``); "" for the root."""
    parts = module.split(".")[1:]
    return parts[0] if parts else ""


def stated_rule(docstring: str | None) -> set[str] | None:
    """The names of a docstring's "May import:" sentence ({"*"} for everything), or None without one."""
    match = re.search(r"May import:(.*?)\.(?:\s|$)", docstring or "", re.S)
    if match is None:
        return None
    names = {n.removeprefix("medddpm.") for n in re.findall(r"``([\w.]+)``", match.group(1))}
    return names or ({"*"} if "everything" in match.group(1) else set())


def rules(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each part's rule: from its docstring, else from RULES_NOT_IN_DOCSTRINGS."""
    out = {}
    for name, path in modules.items():
        part = part_of(name)
        is_part = name.count(".") == 1  # a subpackage, or a top-level module
        if not is_part:
            continue
        stated = stated_rule(ast.get_docstring(ast.parse(path.read_text())))
        if stated is None and part in RULES_NOT_IN_DOCSTRINGS:
            stated = RULES_NOT_IN_DOCSTRINGS[part]
        assert stated is not None, f"{path}: its docstring needs a 'May import: ...' sentence"
        out[part] = stated
    return out


def allowed(imp: Import, table: dict[str, set[str]]) -> bool:
    source, target = part_of(imp.source), part_of(imp.target)
    rule = table[source]
    within = imp.target.removeprefix("medddpm.")
    return (
        target in ("", source)
        or "*" in rule
        or target in rule
        or any(within == name or within.startswith(name + ".") for name in rule)
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan): every import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _graph(found: list[Import], key, known: bool = False) -> dict[str, set[str]]:
    """Edges between ``key(module)`` nodes; KNOWN_VIOLATIONS left out unless ``known``."""
    edges: dict[str, set[str]] = {}
    for imp in found:
        a, b = key(imp.source), key(imp.target)
        if a != b and (known or (imp.source, imp.target) not in KNOWN_VIOLATIONS):
            edges.setdefault(a, set()).add(b)
    return edges


# ---------------------------------------------------------------------------------------------


def test_imports_are_found_at_every_nesting_level():
    modules = module_names()
    found = {(i.source, i.target) for i in imports(modules)}
    assert ("medddpm.training.loop", "medddpm.training.checkpoint") in found  # module level
    assert ("medddpm.demo", "medddpm.training.loop") in found  # inside a function
    assert ("medddpm.cli.app", "medddpm.cli.demo") in found  # from a package import a module
    assert ("medddpm.runtime", "medddpm") in found  # the root, for __version__


def test_cycle_finder_finds_every_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "f"}, "f": set()}
    assert cycles(edges) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []


def test_rule_sentences_are_read():
    doc = (
        "Thing.\n\nMay import: ``medddpm.config``, ``errors``,\n``training.checkpoint`` (to open them). More."
    )
    assert stated_rule(doc) == {"config", "errors", "training.checkpoint"}
    assert stated_rule("May import: everything (the top). Nothing imports it.") == {"*"}
    assert stated_rule("No rule here.") is None
    table = {"inference": {"training.checkpoint"}, "training": set()}
    assert allowed(Import("medddpm.inference.x", "medddpm.training.checkpoint", 1), table)
    assert not allowed(Import("medddpm.inference.x", "medddpm.training.loop", 1), table)
    assert allowed(Import("medddpm.training.loop", "medddpm.training.checkpoint", 1), table)


def test_no_import_circle_between_modules():
    found = imports(module_names())
    circles = cycles(_graph(found, key=lambda m: m))
    assert not circles, f"import circles between modules: {circles}"


def test_no_import_circle_between_subpackages():
    found = imports(module_names())
    circles = cycles(_graph(found, key=part_of))
    assert not circles, f"import circles between parts of the package: {circles}"


def test_each_part_imports_only_what_its_docstring_allows():
    modules = module_names()
    table = rules(modules)
    bad = [
        f"{modules[i.source].relative_to(PACKAGE.parent)}:{i.line} imports {i.target}"
        for i in imports(modules)
        if not allowed(i, table) and (i.source, i.target) not in KNOWN_VIOLATIONS
    ]
    assert not bad, "imports the docstrings' 'May import:' rules do not allow:\n" + "\n".join(bad)


def test_nothing_imports_the_command_line_but_main():
    importers = {i.source for i in imports(module_names()) if part_of(i.target) == "cli"}
    assert {m for m in importers if part_of(m) != "cli"} == {"medddpm.__main__"}


def test_known_violations_are_still_there():
    """An entry of KNOWN_VIOLATIONS that is fixed must be removed with the fix."""
    modules = module_names()
    found = imports(modules)
    pairs = {(i.source, i.target) for i in found}
    table = rules(modules)
    circles = cycles(_graph(found, lambda m: m, known=True))
    part_circles = cycles(_graph(found, part_of, known=True))
    fixed = []
    for source, target in KNOWN_VIOLATIONS:
        in_circle = any(source in c and target in c for c in circles) or any(
            part_of(source) in c and part_of(target) in c for c in part_circles
        )
        against_rule = not allowed(Import(source, target, 0), table)
        if (source, target) not in pairs or not (in_circle or against_rule):
            fixed.append(f"{source} -> {target}")
    assert not fixed, f"fixed: remove {fixed} from KNOWN_VIOLATIONS"


# ---------------------------------------------------------------------------------------------
# Library code logs plain text; rich markup belongs to the command line

MARKUP = re.compile(r"\[/[a-z ]*\]|\[(bold|dim|italic|red|green|yellow|blue|cyan|magenta)( [a-z]+)*\]")

KNOWN_MARKUP = {
    # module: messages with rich markup it still passes to ``log`` (each to become plain text, e.g.
    # "warning: ..."; cli.options.print_message colours such leading words)
}


def markup_in_log_calls(modules: dict[str, Path]) -> dict[str, list[int]]:
    """Lines where a module outside medddpm.cli passes a string with rich markup to ``log(...)``."""
    found: dict[str, list[int]] = {}
    for name, path in modules.items():
        if part_of(name) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "log"):
                continue
            text = "".join(
                part.value
                for arg in node.args
                for part in ast.walk(arg)
                if isinstance(part, ast.Constant) and isinstance(part.value, str)
            )
            if MARKUP.search(text):
                found.setdefault(name, []).append(node.lineno)
    return found


def test_markup_finder_sees_rich_tags_only():
    assert MARKUP.search("[yellow]warning:[/] x") and MARKUP.search("[bold red]x")
    assert not MARKUP.search("values on [0, 1], shape [16, 16, 16], scans/[brain]/t1.nii.gz")


def test_library_code_logs_plain_text():
    found = markup_in_log_calls(module_names())
    counts = {name: len(lines) for name, lines in found.items()}
    assert counts == KNOWN_MARKUP, (
        f"rich markup passed to log (module: lines): {found}; library messages are plain text "
        "(fixed ones: lower KNOWN_MARKUP too)"
    )
