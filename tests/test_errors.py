"""Where the exceptions live (tasks/errors.py, flows/progress.py, hy3d/cli.py) and the one base class of
every configuration error. Pure: no Prefect, no server."""

from __future__ import annotations

import ast
import builtins
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import errors

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("flows", "tasks", "hy3d")
ERROR_MODULES = {"tasks/errors.py", "flows/progress.py", "hy3d/cli.py"}
CONFIGURATION_ERRORS = [
    errors.MissingAPIKeyError,
    errors.CredentialsBlockNotFoundError,
    errors.InvalidSettingsError,
    errors.UnknownModelError,
    errors.ManifestError,
    errors.OutputNotWritableError,
    errors.DeliverablesUnavailableError,
    errors.UnknownFormatError,
]


@pytest.mark.parametrize("error", CONFIGURATION_ERRORS, ids=lambda error: error.__name__)
def test_every_configuration_error_is_one_class_and_still_a_value_error(error: type[Exception]) -> None:
    assert issubclass(error, errors.ConfigurationError)
    assert issubclass(error, ValueError)


def test_a_missing_credentials_block_is_a_missing_key_and_pickles() -> None:
    error = errors.CredentialsBlockNotFoundError("hy3d", "WaveSpeed Credentials")
    assert isinstance(error, errors.MissingAPIKeyError)

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is errors.CredentialsBlockNotFoundError
    assert (str(copy), copy.block_name, copy.block_type_name) == (str(error), "hy3d", "WaveSpeed Credentials")


def _exception_classes() -> dict[str, list[str]]:
    """Module path -> the exception classes it defines (bases followed by name, across modules)."""
    bases: dict[tuple[str, str], list[str]] = {}
    for folder in PRODUCTION:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    names = [
                        base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                        for base in node.bases
                    ]
                    bases[(path.relative_to(ROOT).as_posix(), node.name)] = names
    by_name: dict[str, list[list[str]]] = {}
    for (_, name), names in bases.items():
        by_name.setdefault(name, []).append(names)

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            return True
        return name not in seen and any(
            is_exception(base, seen | {name}) for names in by_name.get(name, []) for base in names
        )

    found: dict[str, list[str]] = {}
    for (module, name), names in bases.items():
        if any(is_exception(base) for base in names):
            found.setdefault(module, []).append(name)
    return found


def test_exceptions_are_defined_in_three_modules_only() -> None:
    found = _exception_classes()
    assert "ConfigurationError" in found["tasks/errors.py"]
    assert set(found) <= ERROR_MODULES, {module: found[module] for module in set(found) - ERROR_MODULES}


def test_importing_the_errors_imports_neither_prefect_nor_numpy() -> None:
    heavy = {"prefect", "numpy", "trimesh", "httpx", "pydantic"}
    code = "import sys, tasks.errors; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert heavy.isdisjoint(out.stdout.split())
