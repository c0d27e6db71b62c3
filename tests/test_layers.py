"""The package's shape: the core imports neither the demo nor the commands, the config does not import the training
package (checked in a fresh interpreter, where nothing else has imported them first), and no module or function
grows past what a reader takes in at once."""

import ast
import subprocess
import sys
from pathlib import Path

import ple

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60

CORE = [
    "ple",
    "ple.trainer",
    "ple.methods",
    "ple.training.loop",
    "ple.baselines.trl",
    "ple.evaluation.grid",
    "ple.evaluation.evaluate",
    "ple.evaluation.report",
]


def _imported_after(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_core_imports_neither_the_demo_nor_the_commands():
    loaded = _imported_after(CORE)
    assert not {m for m in loaded if m.startswith("ple.demo") or m in ("ple.sentiment", "ple.cli")}


def test_the_config_does_not_import_the_training_package():
    loaded = _imported_after(["ple.config", "ple.config_checks"])
    assert not {m for m in loaded if m.startswith(("ple.training", "ple.trainer", "ple.evaluation"))}


def test_no_module_over_450_lines_and_no_function_over_60():
    too_long = []
    for path in Path(ple.__file__).parent.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long
