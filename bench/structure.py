"""The code's shape, measured: what issue 19 asked to keep small, printed as one table.

    python bench/structure.py            # all measures (runs hy3d once on one image, ~20 s)
    python bench/structure.py --static   # without the run

- modules run in a one-image ``hy3d run``: project modules imported by the CLI's process (the flow runs
  in it), those of them whose functions were called, and those called on one image's path from
  manifest row to published mesh (from ``PATH_ROOTS`` down, in every task and thread they start);
- function bodies over 60 lines; each run option's spelling across production files; the modules
  defining exception classes; ``duplicates`` pairs over the whole tree (when the command exists).

Production code: flows/, tasks/, hy3d/ (not tests, bench, tools or the emulator).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where one image's path starts: reading its manifest row, preparing it (image checks, request),
# and processing it (submit, wait, fetch, publish). Everything these call, in any thread or task
# they start, is on the path.
PATH_ROOTS = ("flows.manifest:load_manifest", "flows.pipeline:prepare_items", "flows.pipeline:process_item")
PACKAGES = ("flows", "tasks", "hy3d")
BODY_LIMIT = 60

# Run inside the CLI's process: record imported project modules and the modules whose functions run.
TRACER = r"""
import contextvars, json, os, sys, threading
from hy3d.cli import main
PACKAGES = ("flows", "tasks", "hy3d")
ROOTS = {(module, name) for module, name in (r.split(":") for r in os.environ["STRUCTURE_ROOTS"].split())}
on_path = contextvars.ContextVar("on_path", default=False)
tokens = {}
called, path = set(), set()
def profile(frame, event, arg):
    name = frame.f_globals.get("__name__", "")
    if name.split(".")[0] not in PACKAGES or frame.f_code.co_name == "<module>":
        return
    root = (name, frame.f_code.co_name) in ROOTS
    if event == "call":
        called.add(name)
        if root:  # also on each resume of a root coroutine; threads it starts copy the context
            tokens.setdefault(id(frame), []).append(on_path.set(True))
        if on_path.get():
            path.add(name)
    elif event == "return" and root and tokens.get(id(frame)):
        on_path.reset(tokens[id(frame)].pop())
sys.setprofile(profile)
threading.setprofile(profile)
code = main(sys.argv[1:])
sys.setprofile(None)
imported = sorted(m for m, mod in list(sys.modules.items())
                  if m.split(".")[0] in PACKAGES and getattr(mod, "__file__", None))
with open(os.environ["STRUCTURE_OUT"], "w") as out:
    json.dump({"code": code, "imported": imported, "called": sorted(called), "path": sorted(path)}, out)
os._exit(code)
"""


def production_files() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def long_functions() -> list[tuple[int, str]]:
    found = []
    for path in production_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                docstring = (
                    isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                )
                start = body[1].lineno if docstring and len(body) > 1 else body[0].lineno
                lines = (node.end_lineno or start) - start + 1
                if lines > BODY_LIMIT:
                    found.append((lines, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def identifiers(path: Path) -> set[str]:
    """The names a module's code uses (variables, attributes, arguments, keywords), not its strings
    or comments."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg):
            names.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def option_spellings() -> dict[str, list[str]]:
    """Each run option -> the production files whose code uses its name."""
    sys.path.insert(0, str(ROOT))
    from flows.options import RunOptions, ShardedRunOptions
    from hy3d.cli import option_fields

    names = {name for model in (RunOptions, ShardedRunOptions) for name, _ in option_fields(model)}
    used = {str(path.relative_to(ROOT)): identifiers(path) for path in production_files()}
    return {name: sorted(file for file, found in used.items() if name in found) for name in sorted(names)}


def exception_modules() -> dict[str, int]:
    builtin = {name for name in dir(__builtins__) if name.endswith(("Error", "Exception"))}
    modules: dict[str, int] = {}
    classes: dict[str, list[str]] = {}
    for path in production_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [ast.unparse(base) for base in node.bases]
                classes[node.name].append(str(path.relative_to(ROOT)))

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in builtin or name in {"Exception", "BaseException"}:
            return True
        if name not in classes or name in seen:
            return False
        return any(is_exception(base.split(".")[-1], seen | {name}) for base in classes[name][:-1])

    for name, bases in classes.items():
        if is_exception(name):
            modules[bases[-1]] = modules.get(bases[-1], 0) + 1
    return dict(sorted(modules.items()))


def duplicate_pairs() -> str:
    if shutil.which("duplicates") is None:
        return "n/a (the duplicates command is not installed)"
    result = subprocess.run(
        ["duplicates", "--seconds", "60"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return result.stdout.splitlines()[0] if result.stdout else "n/a"


def one_image_run() -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from emulator import EmulatorConfig, EmulatorServer

    with tempfile.TemporaryDirectory() as work, EmulatorServer(EmulatorConfig(latency_s=0.5)) as server:
        folder = Path(work, "images")
        folder.mkdir()
        shutil.copy(ROOT / "hy3d" / "samples" / "red-ball.png", folder)
        out = Path(work, "structure.json")
        env = {
            **os.environ,
            "WAVESPEED_BASE_URL": server.url,
            "WAVESPEED_API_KEY": server.api_key,
            "STRUCTURE_OUT": str(out),
            "STRUCTURE_ROOTS": " ".join(PATH_ROOTS),
        }
        command = [sys.executable, "-c", TRACER, "run", str(folder), "-o", str(Path(work, "out"))]
        subprocess.run(command, env=env, cwd=ROOT, capture_output=True, check=False, timeout=300)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static", action="store_true", help="Skip the one-image run.")
    args = parser.parse_args()
    print("| measure | figure |\n|---|---|")
    if not args.static:
        run = one_image_run()
        imported, called, path = run["imported"], run["called"], run["path"]
        assert isinstance(imported, list) and isinstance(called, list) and isinstance(path, list)
        code = run["code"]
        print(f"| project modules imported in a one-image `hy3d run` (exit {code}) | {len(imported)} |")
        print(f"| ... of which a function ran | {len(called)} |")
        print(f"| modules on one image's path, manifest row to published mesh | {len(path)} |")
    functions = long_functions()
    print(f"| function bodies over {BODY_LIMIT} lines | {len(functions)} |")
    spellings = option_spellings()
    widest = max(len(files) for files in spellings.values())
    print(f"| run options | {len(spellings)}, each in at most {widest} production file(s) |")
    modules = exception_modules()
    print(f"| modules defining exception classes | {len(modules)} ({sum(modules.values())} classes) |")
    print(f"| duplicates (whole tree) | {duplicate_pairs()} |")
    print()
    if not args.static:
        print("imported:", " ".join(imported))
        print("called:", " ".join(called))
        print("path:", " ".join(path))
    for lines, where in functions:
        print(f"long: {lines} lines {where}")
    for name, files in spellings.items():
        if len(files) > 3:
            print(f"option {name}: {len(files)} files: {', '.join(files)}")
    print("exception modules:", ", ".join(f"{module} ({count})" for module, count in modules.items()))


if __name__ == "__main__":
    main()
