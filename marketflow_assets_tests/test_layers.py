"""Layer rules the import contracts cannot state: no module imports another module's private
names (``from x import _name``). The contracts themselves run in ``make lint``
(``lint-imports``, ``[tool.importlinter]`` in pyproject.toml); here they run too, so that
``pytest`` alone catches an import that climbs."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("marketflow_assets", "spark_streaming", "benchmarks")


def private_imports(source: str, module: str) -> list[str]:
    """``from <other module> import _name`` statements of ``source`` (the module ``module``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == module or not node.module.startswith(CODE):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"from {node.module} import {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    offenders = {}
    for package in CODE:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            hits = private_imports(path.read_text(), module)
            if hits:
                offenders[str(path.relative_to(ROOT))] = hits
    assert not offenders, offenders


def test_the_check_sees_a_private_import():
    assert private_imports("from marketflow_assets.x import _y, z\n", "a") == [
        "from marketflow_assets.x import _y"
    ]
    assert private_imports("from pandas import _libs\n", "a") == []


def test_import_contracts_hold():
    lint_imports = shutil.which("lint-imports") or str(
        Path(sys.executable).with_name("lint-imports")
    )
    result = subprocess.run(
        [lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
