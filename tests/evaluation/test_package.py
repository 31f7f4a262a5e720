"""The evaluation package's layering: measuring apart from rendering, no import circle, plain-text logs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import medddpm.evaluation

PACKAGE = Path(medddpm.evaluation.__file__).parent
ORDER = [
    "features",
    "metrics",
    "reconstruction",
    "conditions",
    "ceiling",
    "specs",
    "measure",
    "report",
    "evaluate",
]
"""Each module may import only those before it (the package docstring's list)."""


def imports(module: str) -> set[str]:
    """medddpm modules ``module`` imports anywhere: at the top, inside functions or for type checking."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medddpm"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("medddpm"))
    return found


def test_modules_are_the_listed_ones():
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(ORDER)
    for name in ORDER:
        assert f"``{name}``" in medddpm.evaluation.__doc__, name


def test_each_module_imports_only_earlier_ones():
    for i, name in enumerate(ORDER):
        inside = {m.removeprefix("medddpm.evaluation.") for m in imports(name) if "evaluation." in m}
        assert inside <= set(ORDER[:i]), f"{name} imports {sorted(inside - set(ORDER[:i]))}"
        assert not any(m.startswith("medddpm.cli") for m in imports(name)), name


def test_library_messages_are_plain_text():
    """Rich markup such as [green]...[/] belongs to medddpm.cli; the library's strings carry none."""
    markup = re.compile(r"\[/?(bold|dim|italic|red|green|yellow|blue|cyan|magenta|white)\b[^\]]*\]|\[/\]")
    for name in ORDER:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not markup.search(node.value), f"{name}.py: {node.value[:60]!r}"
