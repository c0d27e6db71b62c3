"""The package's layers: the core imports neither the demo nor the commands, and the config does not import the
training package. Checked in a fresh interpreter, where nothing else has imported them first."""

import subprocess
import sys

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
