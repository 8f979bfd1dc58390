"""Deliverables' cost: seconds and peak memory per mesh per format (``--formats``).

Meshes: the emulator's own (``emulator/meshgen.py``, as it answers predictions) for the sample images
at the default size and ``v3_sized`` (Hunyuan3D v3's defaults: a 2048 px texture and hundreds of
thousands of faces), a 20 k-face mesh with a 1 K texture, and a 500 k-face mesh with a 2 K texture.
Each conversion runs alone in a fresh process (``--worker``), as a run's worker thread would run it;
``seconds`` is the conversion's wall time inside it (imports excluded), ``CPU s`` the whole process's
CPU with its children (imports included; steadier than wall time on a busy machine), ``peak MB`` its
peak RSS with its children (gltfpack's node process included; ``os.wait4``), ``size`` the deliverable
against ``mesh.glb``. The load average is printed: other work on the machine stretches the seconds.

    uv run python bench/formats.py [--formats web,usdz,stl,obj] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = ROOT / "hy3d" / "samples"


def worker(fmt: str, source: str, folder: str, texture_px: int, max_faces: int | None) -> None:
    # Imported before the clock starts, as they are in a run's process.
    import pxr.Usd  # noqa: F401

    import tasks.deliverables.printable
    import tasks.deliverables.usdz
    import tasks.deliverables.web  # noqa: F401
    from tasks.deliverables import DeliverableSettings, build
    from tasks.fetch import inspect_glb_structure

    settings = DeliverableSettings((fmt,), texture_px, max_faces)
    started = time.perf_counter()
    path = build(fmt, source, folder, settings)
    seconds = time.perf_counter() - started
    faces = inspect_glb_structure(source).faces
    print(json.dumps({"seconds": seconds, "bytes": os.path.getsize(path), "faces": faces}))


def measure(fmt: str, source: Path, texture_px: int, max_faces: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hy3d-bench-") as folder:
        command = [sys.executable, __file__, "--worker", fmt, str(source), folder, str(texture_px)]
        command.append(str(max_faces) if max_faces else "-")
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        out = child.stdout.read() if child.stdout else ""
        err = child.stderr.read() if child.stderr else ""
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"{fmt} of {source.name} failed: {err.strip()[-500:]}")
        result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall": wall, "peak_mb": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime}


def make_meshes(folder: Path, quick: bool) -> list[tuple[str, Path]]:
    """The meshes, made in a child process: this one stays small, so that the conversions' peak RSS
    (which Linux carries over fork and exec) is theirs alone."""
    command = [sys.executable, __file__, "--make-meshes", str(folder)] + (["--quick"] if quick else [])
    listed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [(label, Path(path)) for label, path in json.loads(listed)]


def meshes(folder: Path, quick: bool) -> list[tuple[str, Path]]:
    from emulator.config import EmulatorConfig
    from emulator.meshgen import image_to_glb

    made: list[tuple[str, Path]] = []

    def keep(label: str, glb: bytes) -> None:
        path = folder / f"{len(made)}.glb"
        path.write_bytes(glb)
        made.append((label, path))

    names = ["red-ball.png"] if quick else ["red-ball.png", "blue-mug.png", "gold-star.png"]
    default = EmulatorConfig()
    v3 = EmulatorConfig(v3_sized=True)
    for name in names:
        keep(f"emulator default, {name}", image_to_glb((SAMPLES / name).read_bytes(), *default.mesh_size()))
    keep("20 k faces, 1 K texture", image_to_glb((SAMPLES / "red-ball.png").read_bytes(), 100, 1024))
    for name in names:
        keep(f"emulator v3_sized, {name}", image_to_glb((SAMPLES / name).read_bytes(), *v3.mesh_size()))
    # 500 k faces: a relief over the whole image (a textured noise: every cell is foreground).
    noise = np.random.default_rng(5).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    keep("500 k faces, 2 K texture", image_to_glb(buffer.getvalue(), 354, 2048))
    return made


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--formats", default="web,usdz,stl,obj")
    parser.add_argument("--web-texture-px", type=int, default=1024)
    parser.add_argument("--max-faces", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="one sample image per size")
    parser.add_argument("--make-meshes", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument(
        "--worker", nargs=5, metavar=("FMT", "SRC", "DIR", "PX", "MAX_FACES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.make_meshes:
        made = meshes(Path(args.make_meshes), args.quick)
        print(json.dumps([[label, str(path)] for label, path in made]))
        return 0
    if args.worker:
        fmt, source, folder, px, budget = args.worker
        worker(fmt, source, folder, int(px), None if budget == "-" else int(budget))
        return 0

    from tasks.deliverables import DeliverableSettings, check_available, parse_formats

    formats = parse_formats(args.formats)
    check_available(DeliverableSettings(formats, args.web_texture_px, args.max_faces))
    print(f"cores: {os.cpu_count()}; web_texture_px {args.web_texture_px}; max_faces {args.max_faces}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| mesh | faces | mesh.glb | format | seconds | CPU s | peak MB | size | size / mesh.glb |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="hy3d-bench-meshes-") as folder:
        for label, path in make_meshes(Path(folder), args.quick):
            size = path.stat().st_size
            for fmt in formats:
                result = measure(fmt, path, args.web_texture_px, args.max_faces)
                print(
                    f"| {label} | {result['faces']:,} | {size / 1e6:.2f} MB | {fmt} | "
                    f"{result['seconds']:.2f} | {result['cpu']:.2f} | {result['peak_mb']:.0f} | "
                    f"{result['bytes'] / 1e6:.2f} MB | "
                    f"{result['bytes'] / size:.3f} |",
                    flush=True,
                )
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
