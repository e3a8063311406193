"""The library (sdcore/) never imports the layers above it: the service and the demo page
(sdcore.service, sdcore.frontend, installed from service/ and frontend/). Only the command
line, sdcore/cli.py, starts them, and only when asked."""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABOVE = ("sdcore.service", "sdcore.frontend", "service", "frontend")


def imported_modules(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            # `from sdcore import service` names the package too
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_library_modules_import_no_layer_above():
    folder = os.path.join(ROOT, "sdcore")
    found = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py") or name == "cli.py":
            continue
        for module in imported_modules(os.path.join(folder, name)):
            if module in ABOVE or module.startswith(tuple(m + "." for m in ABOVE)):
                found.append(f"sdcore/{name} imports {module}")
    assert not found, found


def test_import_sdcore_loads_neither_service_nor_frontend():
    code = (
        "import sys, sdcore; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['sdcore', 'service'], ['sdcore', 'frontend'])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
