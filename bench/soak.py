"""Soak: never pay twice, never lose a mesh — under API faults and a ``kill -9`` mid-run.

Generates N distinct small PNGs and a CSV manifest, starts the WaveSpeed emulator in this process
with poll faults (429/5xx), failed tasks and truncated downloads, runs ``hy3d run`` as a subprocess,
kills its whole process group with SIGKILL once a share of the items has been submitted, re-runs the
same command to completion (and once more, which must be a no-op), then counts from the emulator's
books and the output folder:

    duplicate submits   accepted submits beyond the first per input image (never --retry-failed)
    lost meshes         items whose prediction completed on the emulator without a verified mesh and
                        without being reported (submits in flight at the kill are reported as
                        submit_unknown: the API has no idempotency key, so they are not resent)
    partial files       ``*.partial`` files left under DEST, plus any ``mesh.glb`` failing verification
    landed              verified meshes / items

Exit 0 when the first three are zero and every item that could land did; 1 otherwise.

    uv run python bench/soak.py [--items 500] [--concurrency 50] [--latency 1.5] [--kill-at 0.4] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import trimesh
from PIL import Image, ImageDraw

from emulator import EmulatorConfig, EmulatorServer
from tasks.models import DEFAULT_MODEL

T = TypeVar("T")

GLB_MAGIC = b"glTF"
DETAILS = 10  # items described in full per kind of problem
MEDIA_PREFIX = "/cdn/media/"
OUTPUT_PREFIX = "/cdn/output/"


# ---- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    id: str
    path: Path
    sha256: str


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _contrasting(rng: random.Random, background: tuple[int, int, int]) -> tuple[int, int, int]:
    while True:
        colour = _colour(rng)
        if max(abs(a - b) for a, b in zip(colour, background, strict=True)) > 90:
            return colour


def make_image(index: int, path: Path) -> bytes:
    """A 128–160 px PNG with 1–3 shapes, seeded by ``index``; the index is also written into the
    pixels of the first row, so no two images share bytes."""
    rng = random.Random(index * 7919 + 17)
    width, height = rng.randint(128, 160), rng.randint(128, 160)
    background = _colour(rng)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.randint(8, width // 2), rng.randint(8, height // 2)
        x1, y1 = rng.randint(x0 + 16, width - 8), rng.randint(y0 + 16, height - 8)
        colour = _contrasting(rng, background)
        kind = rng.choice(("ellipse", "rectangle", "triangle"))
        if kind == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    for bit in range(20):  # the index, one bit per pixel, in the top row
        shade = 255 if (index >> bit) & 1 else 0
        image.putpixel((bit, 0), (shade, shade, background[2]))
    image.save(path, format="PNG", optimize=False, compress_level=1)
    return path.read_bytes()


def generate_inputs(folder: Path, count: int) -> tuple[Path, list[Item]]:
    images = folder / "images"
    images.mkdir(parents=True)
    items: list[Item] = []
    seen: set[str] = set()
    for index in range(count):
        item_id = f"item-{index:04d}"
        path = images / f"{item_id}.png"
        digest = hashlib.sha256(make_image(index, path)).hexdigest()
        if digest in seen:
            raise SystemExit(f"generated two identical images (index {index}): fix make_image")
        seen.add(digest)
        items.append(Item(item_id, path, digest))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image"])
        for item in items:
            writer.writerow([item.id, f"images/{item.path.name}"])
    return manifest, items


# ---- the emulator's books ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatedPrediction:
    id: str
    status: str
    code: int
    input_sha256: str | None  # of the uploaded image, None when the input was not an upload
    outputs: tuple[str, ...]
    created_at: str


def on_emulator_loop(emu: EmulatorServer, read: Callable[[], T]) -> T:
    """Run ``read`` on the emulator's event loop, the only thread that mutates its store."""
    loop = emu.state.loop
    if loop is None:
        return read()

    async def call() -> T:
        return read()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(30)


def emulator_predictions(emu: EmulatorServer) -> list[EmulatedPrediction]:
    def read() -> list[EmulatedPrediction]:
        found = []
        for p in emu.state.store.predictions.values():
            sha = p.input_key.removeprefix("sha256:") if p.input_key.startswith("sha256:") else None
            found.append(EmulatedPrediction(p.id, p.status, p.code, sha, tuple(p.outputs), p.created_at))
        return found

    return on_emulator_loop(emu, read)


def _emulator_blob_sha(
    emu: EmulatorServer, url: str, prefix: str, kind: Literal["media", "outputs"]
) -> str | None:
    """sha256 of a blob the emulator holds (an upload, or an output), from its download URL."""
    if prefix not in url:
        return None
    key = url.split(prefix, 1)[1]

    def read() -> str | None:
        blob = getattr(emu.state.store, kind).get(key)
        return hashlib.sha256(blob.data).hexdigest() if blob is not None else None

    return on_emulator_loop(emu, read)


def emulator_media_sha(emu: EmulatorServer, url: str) -> str | None:
    return _emulator_blob_sha(emu, url, MEDIA_PREFIX, "media")


def emulator_output_sha(emu: EmulatorServer, url: str) -> str | None:
    return _emulator_blob_sha(emu, url, OUTPUT_PREFIX, "outputs")


# ---- the output folder --------------------------------------------------------------------------------


def partial_files(dest: Path) -> list[Path]:
    return sorted(dest.rglob("*.partial")) if dest.exists() else []


def mesh_files(dest: Path) -> list[Path]:
    return sorted(dest.glob("*/mesh.glb")) if dest.exists() else []


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Ledger:
    """``DEST/.hy3d/``: the prediction ledger (by content key, the file stem) and the claims left."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_sha: dict[str, str] = field(default_factory=dict)  # image sha256 -> content key, "submitted" only
    states: Counter[str] = field(default_factory=Counter)
    claims: list[Path] = field(default_factory=list)


def read_ledger(dest: Path, emu: EmulatorServer) -> Ledger:
    ledger = Ledger()
    state = dest / ".hy3d"
    for path in sorted((state / "predictions").glob("*.json")):
        entry = read_json(path)
        if not isinstance(entry, dict):
            ledger.states["unreadable"] += 1
            continue
        ledger.entries[path.stem] = entry
        ledger.states[str(entry.get("state"))] += 1
        url = (entry.get("inputs") or {}).get("image")
        sha = emulator_media_sha(emu, url) if isinstance(url, str) else None
        if sha is not None and entry.get("state") == "submitted":
            ledger.by_sha[sha] = path.stem
    ledger.claims = sorted((state / "claims").glob("*.json"))
    return ledger


def expected_content_key(api_root: str, sha256: str) -> str:
    """The product's content key for an uploaded image with the default model and no extra inputs
    (tasks/submit.py SubmitRequest.content_key, restated so that this process never imports Prefect;
    checked against every metadata.json that records one)."""
    canonical = json.dumps(
        {"api": api_root.rstrip("/"), "model": DEFAULT_MODEL, "inputs": {}, "images": {"image": sha256}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "hy3d-submit-" + hashlib.sha256(canonical.encode()).hexdigest()


def recorded_content_key(dest: Path, item: Item) -> str | None:
    metadata = read_json(dest / item.id / "metadata.json")
    key = metadata.get("content_key") if isinstance(metadata, dict) else None
    return key if isinstance(key, str) else None


def content_key_of(dest: Path, item: Item, api_root: str) -> str:
    return recorded_content_key(dest, item) or expected_content_key(api_root, item.sha256)


def verify_mesh(item_dir: Path, emu: EmulatorServer) -> str | None:
    """None when ``mesh.glb`` is a complete, parseable GLB that metadata.json calls completed with
    the same byte count (and, when the emulator still holds it, the same sha256); else the reason."""
    mesh = item_dir / "mesh.glb"
    data = mesh.read_bytes()
    if len(data) < 12 or data[:4] != GLB_MAGIC:
        return "no glTF magic"
    version, declared = struct.unpack("<II", data[4:12])
    if version != 2 or declared != len(data):
        return f"GLB v{version} declares {declared} bytes, file has {len(data)}"
    try:
        scene: Any = trimesh.load(str(mesh), file_type="glb", force="scene")
        faces = sum(len(getattr(geometry, "faces", ())) for geometry in scene.geometry.values())
    except Exception as exc:
        return f"trimesh cannot load it: {type(exc).__name__}: {exc}"
    if faces <= 0:
        return "no faces"
    metadata = read_json(item_dir / "metadata.json")
    if not isinstance(metadata, dict):
        return "metadata.json missing or unreadable"
    output = metadata.get("output") or {}
    if metadata.get("status") != "completed":
        return f"metadata status is {metadata.get('status')!r}"
    if output.get("bytes") != len(data):
        return f"metadata says {output.get('bytes')} bytes, file has {len(data)}"
    source = output.get("source_url")
    expected = emulator_output_sha(emu, source) if isinstance(source, str) else None
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and expected != actual:
        return "bytes differ from the emulator's output"
    if output.get("sha256") not in (None, actual):
        return "sha256 differs from metadata"
    return None


class QuietDisconnects(logging.Filter):
    """Count, instead of printing a traceback for, requests the killed client cut off mid-body."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ClientDisconnect":
            self.count += 1
            return False
        return True


# ---- running hy3d -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    seconds: float
    returncode: int | None
    killed: bool
    log: Path
    submits_before: int
    submits_after: int
    ended_at: str
    at_end: dict[str, int]  # the emulator's counters the moment the run ended (or was killed)

    @property
    def new_submits(self) -> int:
        return self.submits_after - self.submits_before


@dataclass(frozen=True)
class Hy3dCommand:
    """What every run of the soak starts: the same hy3d command line, environment and working folder
    (the runs' logs go there too)."""

    argv: list[str]
    env: dict[str, str]
    work: Path


def hy3d_command(manifest: Path, dest: Path, concurrency: int) -> list[str]:
    script = Path(sys.executable).parent / "hy3d"
    return [str(script), "run", str(manifest), "--output", str(dest), "--concurrency", str(concurrency)]


def hy3d_env(emu: EmulatorServer, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WAVESPEED_"))}
    env.update(
        {
            "WAVESPEED_BASE_URL": emu.url,
            "WAVESPEED_API_KEY": emu.api_key,
            "WAVESPEED_POLL_INITIAL_INTERVAL_S": "0.5",
            "WAVESPEED_POLL_MAX_INTERVAL_S": "2",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_HOME": str(work / "prefect-home"),
            "PREFECT_LOCAL_STORAGE_PATH": str(work / "prefect-results"),
        }
    )
    return env


COUNTERS = ("submits_accepted", "in_flight", "completed", "failed")


def counters(emu: EmulatorServer) -> dict[str, int]:
    """The emulator's COUNTERS now."""
    return {name: getattr(emu.stats, name) for name in COUNTERS}


def live_group_members(pgid: int) -> list[int]:
    """Non-zombie processes still in process group ``pgid`` (Linux /proc; [] elsewhere)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def run_hy3d(
    name: str,
    hy3d: Hy3dCommand,
    emu: EmulatorServer,
    *,
    kill_after_submits: int | None,
    timeout_s: float,
) -> RunResult:
    log = hy3d.work / f"{name}.log"
    before = emu.stats.submits_accepted
    started = time.monotonic()
    killed = False
    at_end: dict[str, int] = {}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            hy3d.argv,
            env=hy3d.env,
            cwd=hy3d.work,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pgid = proc.pid  # its own session: the group id is its pid
        print(f"  {name}: pid {proc.pid}, log {log}")
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            due = kill_after_submits is not None and emu.stats.submits_accepted - before >= kill_after_submits
            if due or elapsed > timeout_s:
                os.killpg(pgid, signal.SIGKILL)
                killed = True
                at_end = counters(emu)
                if not due:
                    print(f"  {name}: timed out after {elapsed:.0f} s, killed")
                break
            time.sleep(0.02)
        returncode = proc.wait()
    seconds = time.monotonic() - started
    ended_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    if not killed:
        at_end = counters(emu)
    if killed:
        deadline = time.monotonic() + 10
        while (left := live_group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            print(f"  {name}: processes still alive in the killed group: {left}")
    return RunResult(
        name, seconds, returncode, killed, log, before, emu.stats.submits_accepted, ended_at, at_end
    )


def log_highlights(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    keep = [line for line in lines if "meshes landed" in line or line.startswith(("summary:", "hy3d:"))]
    # Who logged each traceback: the last "time | LEVEL | logger - message" line before it.
    sources: Counter[str] = Counter()
    last = "no log line before it"
    for line in lines:
        if line.count(" | ") >= 2:
            last = line.split(" | ", 2)[2][:100]
        elif line.startswith("Traceback"):
            sources[last] += 1
    for source, count in sources.items():
        keep.append(f"!! {count} traceback(s) after: {source}")
    return keep


# ---- the soak -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=500, help="images in the manifest (default 500)")
    parser.add_argument("--concurrency", type=int, default=50, help="hy3d --concurrency (default 50)")
    parser.add_argument("--latency", type=float, default=1.5, help="emulated generation time, s (1.5)")
    parser.add_argument("--jitter", type=float, default=0.5, help="± on the latency, s (0.5)")
    parser.add_argument(
        "--kill-at", type=float, default=0.4, help="kill -9 once this share of items was submitted (0.4)"
    )
    parser.add_argument("--seed", type=int, default=20251124, help="emulator seed")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="per hy3d run, s (900)")
    parser.add_argument("--no-noop-run", action="store_true", help="skip the third (no-op) run")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (kept anyway on failure)")
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at must be between 0 and 1")
    return args


def emulator_config(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        max_concurrency=100,
        latency_s=args.latency,
        jitter_s=args.jitter,
        poll_429_rate=0.1,
        poll_5xx_rate=0.1,
        retry_after_s=0.5,  # on 429s only: the 5xx answers carry no Retry-After
        failure_rate=0.1,
        failure_codes=(5000, 1403),
        download_truncate_rate=0.1,
        balance=1_000_000.0,
        seed=args.seed,
    )


def describe_item(
    item: Item, dest: Path, ledger: Ledger, predictions: list[EmulatedPrediction], api_root: str
) -> list[str]:
    """Everything the output and the emulator say about one item, for a bug report."""
    lines = [f"  {item.id} (image sha256 {item.sha256[:16]}…):"]
    for p in predictions:
        if p.input_sha256 == item.sha256:
            lines.append(f"    emulator prediction {p.id}: {p.status} code={p.code} created {p.created_at}")
    key = content_key_of(dest, item, api_root)
    body = ledger.entries.get(key)
    if body is None:
        lines.append(f"    ledger: no entry (content key {key})")
    else:
        lines.append(
            f"    ledger .hy3d/predictions/{key}.json: state={body.get('state')} "
            f"prediction={body.get('prediction_id')} recorded {body.get('recorded_at')} "
            f"reason={body.get('reason')}"
        )
    claim = dest / ".hy3d" / "claims" / f"{key}.json"
    if claim.exists():
        lines.append(f"    claim left behind: {claim.read_text().strip()!r} ({claim.stat().st_size} bytes)")
    metadata = read_json(dest / item.id / "metadata.json")
    if isinstance(metadata, dict):
        prediction = metadata.get("prediction") or {}
        lines.append(
            f"    metadata: status={metadata.get('status')} prediction={prediction.get('id')} "
            f"reused={prediction.get('reused')} error={metadata.get('error')}"
        )
    else:
        lines.append("    metadata: none")
    lines.append(f"    files: {sorted(p.name for p in (dest / item.id).glob('*') if p.is_file())}")
    return lines


def soak(args: argparse.Namespace, work: Path) -> tuple[int, list[str]]:
    """Returns the exit code and the four closing lines."""
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    manifest, items = generate_inputs(work / "inputs", args.items)
    phases["generate"] = time.monotonic() - t0
    print(f"generated {len(items)} images + {manifest} in {phases['generate']:.1f} s")
    dest = work / "dest"
    by_sha = {item.sha256: item for item in items}

    disconnects = QuietDisconnects()
    logging.getLogger("uvicorn.error").addFilter(disconnects)
    with EmulatorServer(emulator_config(args)) as emu:
        shown = [
            *("max_concurrency", "latency_s", "jitter_s", "failure_rate", "failure_codes"),
            *("poll_429_rate", "poll_5xx_rate", "retry_after_s", "download_truncate_rate", "seed"),
        ]
        config = emu.config.public_dict()
        print(f"emulator at {emu.url}: { ({k: config[k] for k in shown}) }")
        hy3d = Hy3dCommand(hy3d_command(manifest, dest, args.concurrency), hy3d_env(emu, work), work)
        print("command:", " ".join(hy3d.argv))
        runs: list[RunResult] = []

        # 1. killed mid-run
        threshold = max(1, math.ceil(args.kill_at * len(items)))
        print(f"\n[run 1] kill -9 the process group once {threshold} submits were accepted")
        first = run_hy3d("run1", hy3d, emu, kill_after_submits=threshold, timeout_s=args.run_timeout)
        runs.append(first)
        if not first.killed:
            print(f"  !! run 1 ended (exit {first.returncode}) before the kill point: no crash was tested")
        at_kill = first.at_end
        meshes_at_kill, partials_at_kill = len(mesh_files(dest)), len(partial_files(dest))
        time.sleep(0.5)  # let requests the dead client had already sent reach the emulator
        predictions = emulator_predictions(emu)
        ledger = read_ledger(dest, emu)
        accepted_shas = {p.input_sha256 for p in predictions if p.input_sha256}
        unacknowledged = sorted(by_sha[s].id for s in accepted_shas - set(ledger.by_sha) if s in by_sha)
        print(
            f"  killed at {first.ended_at} after {first.seconds:.1f} s (exit {first.returncode}); at the "
            f"kill the emulator had {at_kill['submits_accepted']} submits accepted, {at_kill['in_flight']} "
            f"predictions in flight, {at_kill['completed']} completed, {at_kill['failed']} failed; DEST "
            f"held {meshes_at_kill} meshes, {partials_at_kill} .partial files"
        )
        print(
            f"  0.5 s later: {emu.stats.submits_accepted} accepted; ledger states {dict(ledger.states)}, "
            f"{len(ledger.claims)} claims"
        )
        if unacknowledged:
            print(
                f"  {len(unacknowledged)} accepted (billed) submit(s) whose answer the dead run never "
                f"recorded: {unacknowledged}"
            )
        for path in partial_files(dest):
            print(f"  left by the kill: {path.relative_to(dest)} ({path.stat().st_size} bytes)")

        # 2. to completion, and 3. again (must pay for nothing)
        names = ["run2"] if args.no_noop_run else ["run2", "run3"]
        for name in names:
            print(f"\n[{name}] same command, to completion")
            result = run_hy3d(name, hy3d, emu, kill_after_submits=None, timeout_s=args.run_timeout)
            runs.append(result)
            print(f"  exit {result.returncode} in {result.seconds:.1f} s, {result.new_submits} new submits")
            for line in log_highlights(result.log):
                print(f"  | {line}")

        # 4. the books
        t1 = time.monotonic()
        predictions = emulator_predictions(emu)
        ledger = read_ledger(dest, emu)
        snapshot = emu.stats.snapshot()
        per_input: Counter[str] = Counter(emu.stats.submits_by_input)
        duplicates = sum(n - 1 for n in per_input.values() if n > 1)
        completed_shas = {p.input_sha256 for p in predictions if p.status == "completed" and p.input_sha256}
        failed_shas = {p.input_sha256 for p in predictions if p.status == "failed" and p.input_sha256}
        cannot_land = (failed_shas - completed_shas) & set(by_sha)

        verified: set[str] = set()
        bad_meshes: list[tuple[Item, str]] = []
        for item in items:
            if (dest / item.id / "mesh.glb").exists():
                problem = verify_mesh(dest / item.id, emu)
                if problem is None:
                    verified.add(item.id)
                else:
                    bad_meshes.append((item, problem))
        # A kill -9 while a submit is on the wire leaves its outcome unknowable (no idempotency key,
        # no way to list predictions): the product reports such items as submit_unknown instead of
        # paying again. Reported is not lost; silently missing is.
        reported_unknown = {
            item.id
            for item in items
            if (read_json(dest / item.id / "metadata.json") or {}).get("status") == "submit_unknown"
        }
        missing = [item for item in items if item.sha256 in completed_shas and item.id not in verified]
        lost = [item for item in missing if item.id not in reported_unknown]
        in_flight_at_kill = [item for item in missing if item.id in reported_unknown]
        paid_shas = {p.input_sha256 for p in predictions if p.input_sha256}
        unpaid = [item for item in items if item.sha256 not in paid_shas and item.id not in verified]
        partials = partial_files(dest)
        phases["verify"] = time.monotonic() - t1

    # ---- report -----------------------------------------------------------------------------------
    print(
        "\nemulator:",
        {k: snapshot[k] for k in ("submits_received", "submits_accepted", "completed", "failed")},
    )
    print(
        f"  faults {snapshot['faults']}, failures by code {snapshot['failures_by_code']}, "
        f"{snapshot['total_polls']} polls, {sum(snapshot['downloads_by_output'].values())} downloads "
        f"({snapshot['downloads_truncated']} truncated), peak in flight {snapshot['peak_in_flight']}, "
        f"{disconnects.count} request(s) cut off by the kill"
    )
    print(f"ledger states {dict(ledger.states)}; claims left under DEST/.hy3d/claims: {len(ledger.claims)}")
    keyed = {content_key_of(dest, item, emu.url): item.id for item in items}
    drifted = [
        item.id
        for item in items
        if (key := recorded_content_key(dest, item)) and key != expected_content_key(emu.url, item.sha256)
    ]
    if drifted:
        print(
            f"!! content keys differ from tasks/submit.py's formula for {len(drifted)} items: {drifted[:3]}"
        )
    by_holder: dict[str, list[str]] = {}
    for path in ledger.claims:
        holder = read_json(path)
        who = (
            f"run {holder.get('run')} pid {holder.get('pid')}"
            if isinstance(holder, dict)
            else f"nobody: unreadable claim file ({path.stat().st_size} bytes)"
        )
        by_holder.setdefault(who, []).append(keyed.get(path.stem, path.stem))
    for who, held in by_holder.items():
        status = Counter(str((read_json(dest / i / "metadata.json") or {}).get("status")) for i in held)
        print(f"  {len(held)} held by {who} (items now {dict(status)}), e.g. {sorted(held)[:5]}")
    summaries = sorted((dest / "runs").glob("*.json")) if (dest / "runs").exists() else []
    for path in summaries:
        body = read_json(path)
        if isinstance(body, dict):
            last = " (last)" if path == summaries[-1] else ""
            print(
                f"run summary {path.name}{last}: {body.get('landed')}/{body.get('total')} landed, "
                f"{body.get('counts')}"
            )
    if not summaries:
        print("!! no run summary under DEST/runs/")

    def detail(title: str, found: list[Item]) -> None:
        for item in found[:DETAILS]:
            print(title)
            print("\n".join(describe_item(item, dest, ledger, predictions, emu.url)))
        if len(found) > DETAILS:
            print(f"{title} … and {len(found) - DETAILS} more: {[item.id for item in found[DETAILS:]]}")

    for sha, count in sorted(per_input.items()):
        if count > 1:
            print(f"DUPLICATE: {count} accepted submits for input {sha}")
    duplicated = [by_sha.get(key.removeprefix("sha256:")) for key, n in sorted(per_input.items()) if n > 1]
    detail("DUPLICATE:", [item for item in duplicated if item is not None])
    detail("LOST:", lost)
    detail("NOT LANDED, never accepted by the emulator (nothing paid):", unpaid)
    for item, problem in bad_meshes:
        print(f"BAD MESH: {item.id}: {problem}")
    for path in partials:
        print(f"PARTIAL: {path.relative_to(dest)} ({path.stat().st_size} bytes)")

    detail("IN FLIGHT AT THE KILL, reported submit_unknown:", in_flight_at_kill)
    best = len(items) - len(cannot_land) - len(reported_unknown)
    print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()), end="")
    print(
        "; "
        + ", ".join(
            f"{r.name} {r.seconds:.1f} s (exit {r.returncode}, +{r.new_submits} submits)" for r in runs
        )
    )
    print(
        f"best possible: {best}/{len(items)} ({len(cannot_land)} predictions failed on the emulator, "
        f"{len(reported_unknown)} submits were in flight at the kill and are reported submit_unknown — "
        f"{len(in_flight_at_kill)} of them were accepted; --resubmit-unknown lands them at a second charge)"
    )
    bad = len(bad_meshes) + len(partials)
    figures = [
        f"duplicate submits: {duplicates}",
        f"lost meshes: {len(lost)}",
        f"partial files: {bad}",
        f"landed: {len(verified)}/{len(items)}",
    ]
    return (0 if duplicates == 0 and not lost and bad == 0 and len(verified) == best else 1), figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hy3d-soak-"))
    code, figures = 1, list[str]()
    try:
        code, figures = soak(args, work)
    finally:
        if args.keep or code != 0:
            print(f"(kept {work} for inspection)")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print("\n".join(figures))
    return code


if __name__ == "__main__":
    sys.exit(main())
