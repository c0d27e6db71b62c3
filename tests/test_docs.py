from pathlib import Path

from ple.config import config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_matches_the_code():
    """docs/config.md is generated from config.py; regenerate it when a field changes."""
    assert config_reference(markdown=True) in (ROOT / "docs" / "config.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    command = next(line for line in readme[:12] if "pytest" in line)
    assert command.strip() in (ROOT / ".ci" / "run").read_text()
