"""ruff and mypy are part of the suite, so CI refuses what they refuse."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ["tasks", "flows", "emulator", "hy3d", "tests", "bench"]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is not installed in the test environment"
    return path


def test_ruff_is_clean() -> None:
    targets = [name for name in CODE if (ROOT / name).exists()]
    lint = _run(_tool("ruff"), "check", *targets)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatting = _run(_tool("ruff"), "format", "--check", *targets)
    assert formatting.returncode == 0, formatting.stdout + formatting.stderr


def test_mypy_is_clean() -> None:
    result = _run(_tool("mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_code_never_imports_the_emulator_and_tasks_never_import_flows() -> None:
    offenders = []
    for package, forbidden in (("tasks", ("emulator", "flows")), ("flows", ("emulator",))):
        for source in (ROOT / package).rglob("*.py"):
            for line in source.read_text().splitlines():
                stripped = line.strip()
                if any(stripped.startswith((f"import {f}", f"from {f}")) for f in forbidden):
                    offenders.append(f"{source.relative_to(ROOT)}: {stripped}")
    assert offenders == []
