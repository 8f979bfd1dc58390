"""Side by side: this project's flow, an expert asyncio+httpx baseline and the official SDK.

One command, one run: the same emulator process (latency L ± jitter J, no faults, account
concurrency C), the same N images and concurrency C, a fresh local output folder per contender.
Contenders (``--contenders``, default per preset), each in its own process:

    flow            ``hy3d run MANIFEST --output DEST --concurrency C`` against a Prefect server that
                    the bench started once (``prefect server start`` on 127.0.0.1, own PREFECT_HOME,
                    analytics and UI off): server start-up is not in the wall time, its CPU is shown
                    apart ("server CPU") and is not in the flow's CPU.
    flow-adhoc      the same command as a person types it: no PREFECT_API_URL, so hy3d's long-lived
                    local Prefect server (hy3d/local_server.py; own HY3D_SERVER_HOME and PREFECT_HOME
                    under the work folder). The warm-up run starts it, measured runs reuse it: the
                    second ad-hoc run onwards. Its CPU is shown apart, like the flow's server.
    flow-ephemeral  the same command with HY3D_EPHEMERAL=1: Prefect's temporary server, whose
                    start-up *is* in the wall time and whose CPU *is* in the row's CPU (a reaped
                    child). Its database is migrated beforehand, so the start-up is a warm one.
    baseline        ``bench/baseline.py``: asyncio + httpx, upload -> submit -> poll -> streamed
                    download, semaphore of C, by default polling on the client's own schedule
                    (tasks.polling.PollSchedule: cold-start scouts, then polls planned from the
                    durations seen); ``--baseline-poll growing`` or ``fixed=S``.
    sdk             ``bench/sdk_runner.py``: ``wavespeed.upload`` + ``wavespeed.run()`` (SDK 2.0.5,
                    fixed 1 s polls) in a thread pool of C, then a streamed httpx download.

The emulator runs in its own process (``python -m emulator``) and is reset between contenders
(``POST /_emulator/reset``, same seed: the same jitter sequence for everyone). The flow runs as
``python bench/compare.py _flow ... -- run ...``, which calls ``hy3d.cli.main`` exactly as the
``hy3d`` console script does, after hooking Prefect to count the task and flow runs it creates.
``--profile`` runs it under py-spy (``--gil``: the stack of whichever thread holds the GIL, i.e.
where the process's one core of Python goes; found on PATH, in the venv or in /tmp/pyspy:
``python3 -m pip install --target /tmp/pyspy py-spy``), else under pyinstrument (main thread only);
the files go to bench/profiles/ (git-ignored by a .gitignore the bench writes there), the summary
to RESULTS.md.

Before measuring, each contender runs once on 2 other images with L=0.1 s (imports, bytecode,
server-side flow registration warm; ``--no-warmup`` to skip). This machine sets
PYTHONDONTWRITEBYTECODE=1 and the venv holds no .pyc: contenders get a PYTHONPYCACHEPREFIX under the
temp dir instead (``--cold-imports`` keeps compiling every import from source, seconds per process).
When a contender outlives ``--timeout`` it gets SIGINT, then SIGKILL 30 s later.

Per contender: wall time; ratio to ceil(N/C)*L and to the baseline; images/s and a steady-state
images/s (items landed between the 10th and 90th percentile of landing times, from the meshes'
mtimes); CPU seconds and peak RSS (``os.wait4`` rusage of the contender process, reaped descendants
included); polls per prediction and submits (emulator stats deltas); completion lag (emulator: from
a prediction becoming ``completed`` to the first poll that answered ``completed``, or the webhook
delivery acknowledged if earlier: ``--flow-webhook``); start-up (spawn to the first accepted
submit). Targets are printed next to the figures, never asserted.

    uv run python bench/compare.py --quick
    uv run python bench/compare.py --preset ratio|throughput|polls|memory|history [--profile]
    uv run python bench/compare.py --n 300 --c 50 --latency 2 --jitter 0.2 --contenders flow,baseline

The run's section (``## Preset `NAME```; ``NAME+custom`` when --n, --c or --latency override the
preset) replaces the one of the same name in bench/RESULTS.md, or is added at its end; earlier runs
stay in git history (``--no-record`` to skip). Exit 0 when every contender landed every item, 1
otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PROFILES = BENCH / "profiles"
RESULTS = BENCH / "RESULTS.md"
BIN = Path(sys.executable).parent
MODEL = "wavespeed-ai/hunyuan3d/v2-mini"
FLOW_NAME = "hunyuan3d-meshes"
EMULATOR_KEY = "wsk-emulator-key"
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

ALL_CONTENDERS = ("flow", "flow-adhoc", "flow-ephemeral", "baseline", "sdk")


@dataclass(frozen=True)
class Preset:
    name: str
    n: int
    c: int
    latency: float
    jitter: float
    mesh_bytes: int | None
    contenders: tuple[str, ...]
    target: str
    repeat: int = 1  # runs per contender; rows show the median run


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("quick", 100, 20, 1.0, 0.1, None, ALL_CONTENDERS, "smoke run: every target printed"),
        Preset("ratio", 1000, 100, 5.0, 0.5, None, ALL_CONTENDERS, "wall(flow)/wall(baseline) <= 1.05"),
        Preset("throughput", 5000, 1000, 10.0, 1.0, None, ("flow", "baseline", "sdk"), ">= 100 images/s"),
        Preset(
            "polls",
            200,
            100,
            30.0,
            3.0,
            None,
            ("flow", "baseline", "sdk"),
            "<= 3 polls per prediction, completion noticed within 10 % of L",
        ),
        Preset(
            "memory",
            50,
            50,
            5.0,
            0.5,
            100_000_000,
            ("flow", "baseline", "sdk"),
            "peak RSS < 400 MB with 50 x 100 MB meshes downloading at once",
        ),
        Preset(
            "startup",
            1,
            1,
            1.0,
            0.1,
            None,
            ("flow-adhoc", "flow", "flow-ephemeral", "baseline"),
            "spawn -> first submit <= 3 s for an ad-hoc run (flow-adhoc), median of 5",
            repeat=5,
        ),
        Preset(
            "adhoc",
            400,
            100,
            3.0,
            0.3,
            None,
            ("flow-adhoc", "baseline"),
            "whole process, start-up included: wall(flow-adhoc)/wall(baseline) <= 1.10 (<= 1.05 at N=1000)",
            repeat=3,
        ),
        Preset(
            "history",
            5000,
            1000,
            10.0,
            1.0,
            None,
            ("flow",),
            "Prefect records every task run and flow run the flow created",
        ),
    )
}


# ---- processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


PYCACHE = Path(tempfile.gettempdir()) / "hy3d-compare-pycache"


def clean_env() -> dict[str, str]:
    """This environment without PREFECT_*/WAVESPEED_*; bytecode cached under PYCACHE (this machine
    sets PYTHONDONTWRITEBYTECODE=1 and the venv has no .pyc: every process would otherwise compile
    every module it imports from source, seconds for Prefect — not what a deployed venv pays)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WAVESPEED_"))}
    if not COLD_IMPORTS:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


COLD_IMPORTS = False


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def group_cpu_s(pgid: int) -> float:
    """user+sys seconds of every live process of the group, with the children each has reaped."""
    total = 0
    for pid in group_members(pgid):
        fields = proc_stat(pid)
        if fields:
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def code_fingerprint() -> str:
    """Which flow was measured: sha256 over hy3d/, flows/, tasks/ sources, and the newest mtime."""
    import hashlib

    digest, newest = hashlib.sha256(), 0.0
    for path in sorted(p for d in ("hy3d", "flows", "tasks") for p in (ROOT / d).rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    stamp = datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"sha256 {digest.hexdigest()[:12]} of hy3d/ flows/ tasks/ *.py, newest file {stamp}"


def group_rss_mb(pgid: int) -> float:
    total = 0
    for pid in group_members(pgid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return total * PAGE / MB


class Group:
    """A process started in its own session (group id = pid); stop() ends the whole group."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name, self.log = name, log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace_s)
        for pid in group_members(self.pid):  # whatever ignored SIGTERM or outlived the leader
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._out.close()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def wait_until(what: str, check: Any, timeout_s: float, group: Group) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not group.alive():
            raise SystemExit(f"{what}: the process exited:\n{group.tail()}")
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(0.2)
    raise SystemExit(f"{what}: not ready after {timeout_s:g} s:\n{group.tail()}")


# ---- inputs ------------------------------------------------------------------------------------------


def make_inputs(folder: Path, count: int, first: int = 0) -> Path:
    """``count`` distinct 128-160 px PNGs (shapes seeded by index, the index written into the top
    row) and ``manifest.csv`` (id,image)."""
    from PIL import Image, ImageDraw

    images = folder / "images"
    images.mkdir(parents=True)
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image"])
        for index in range(first, first + count):
            rng = random.Random(index * 7919 + 17)
            size = (rng.randint(128, 160), rng.randint(128, 160))
            background = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            image = Image.new("RGB", size, background)
            draw = ImageDraw.Draw(image)
            for _ in range(rng.randint(1, 3)):
                x0, y0 = rng.randint(8, size[0] // 2), rng.randint(8, size[1] // 2)
                x1, y1 = rng.randint(x0 + 16, size[0] - 8), rng.randint(y0 + 16, size[1] - 8)
                colour = tuple(255 - c for c in background)
                shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
                shape((x0, y0, x1, y1), fill=colour)
            for bit in range(20):
                shade = 255 if (index >> bit) & 1 else 0
                image.putpixel((bit, 0), (shade, shade, background[2]))
            name = f"item-{index:05d}"
            image.save(images / f"{name}.png", format="PNG", compress_level=1)
            writer.writerow([name, f"images/{name}.png"])
    return manifest


# ---- the emulator and the Prefect server ---------------------------------------------------------------


class Emulator:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        command = [
            sys.executable,
            "-m",
            "emulator",
            "--host",
            LOOPBACK,
            "--port",
            "0",
            "--latency",
            str(args.latency),
            "--jitter",
            str(args.jitter),
            "--max-concurrency",
            str(args.c),
            "--seed",
            str(args.seed),
            "--balance",
            "1000000000",
        ]
        if args.mesh_bytes:
            command += ["--mesh-bytes", str(args.mesh_bytes)]
        self.group = Group("emulator", command, clean_env(), ROOT, work / "emulator.log")
        self.url: str = wait_until("emulator", self._read_url, 60, self.group)
        import httpx

        self.http = httpx.Client(base_url=self.url, timeout=120.0)

    def _read_url(self) -> str | None:
        match = re.search(r"WAVESPEED_BASE_URL=(\S+)", self.group.log.read_text(errors="replace"))
        return match.group(1) if match else None

    def reset(self) -> None:
        self.http.post("/_emulator/reset").raise_for_status()

    def configure(self, **changes: float) -> None:
        self.http.patch("/_emulator/config", json=changes).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.http.get("/_emulator/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def cpu_s(self) -> float:
        return group_cpu_s(self.group.pid)

    def stop(self) -> None:
        self.http.close()
        self.group.stop()


def prefect_base_env(home: Path) -> dict[str, str]:
    env = clean_env()
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_UI_ENABLED": "false",
        }
    )
    return env


class PrefectServer:
    def __init__(self, work: Path) -> None:
        port = free_port()
        self.api_url = f"http://{LOOPBACK}:{port}/api"
        command = [str(BIN / "prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)]
        env = prefect_base_env(work / "server-home")
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        started = time.monotonic()
        self.group = Group("prefect-server", command, env, work, work / "prefect-server.log")
        import httpx

        self.http = httpx.Client(base_url=self.api_url, timeout=60.0)
        wait_until("prefect server", lambda: self.http.get("/health").status_code == 200, 300, self.group)
        self.startup_s = time.monotonic() - started

    def cpu_s(self) -> float:
        return group_cpu_s(self.group.pid)

    def count(self, path: str, body: dict[str, Any]) -> int:
        response = self.http.post(path, json=body)
        response.raise_for_status()
        return int(response.json())

    def flow_runs_since(self, epoch: float) -> list[str]:
        """Ids of the flow runs created after ``epoch`` (when the flow died without its report)."""
        after = datetime.fromtimestamp(epoch, UTC).isoformat()
        body = {"flow_runs": {"expected_start_time": {"after_": after}}, "limit": 200}
        response = self.http.post("/flow_runs/filter", json=body)
        response.raise_for_status()
        return [str(run["id"]) for run in response.json()]

    def history(self, flow_run_ids: list[str]) -> dict[str, int]:
        runs = {"task_runs": {"flow_run_id": {"any_": flow_run_ids}}}
        completed = {
            "task_runs": {"flow_run_id": {"any_": flow_run_ids}, "state": {"type": {"any_": ["COMPLETED"]}}}
        }
        return {
            "flow_runs": self.count("/flow_runs/count", {"flow_runs": {"id": {"any_": flow_run_ids}}}),
            "task_runs": self.count("/task_runs/count", runs),
            "task_runs_completed": self.count("/task_runs/count", completed),
        }

    def stop(self) -> None:
        self.http.close()
        self.group.stop()


def migrate_ephemeral_home(home: Path) -> float:
    """Create and migrate the ephemeral server's database once, outside the measurement."""
    started = time.monotonic()
    subprocess.run(
        [str(BIN / "prefect"), "server", "database", "upgrade", "-y"],
        env=prefect_base_env(home),
        cwd=home.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
        check=True,
    )
    return time.monotonic() - started


class AdhocServer:
    """hy3d's local Prefect server as flow-adhoc runs use it: started by the first such run (the
    warm-up), found through its server.json, stopped with `hy3d server stop` at the end."""

    def __init__(self, work: Path) -> None:
        self.home = work / "adhoc-server-home"
        self.env = {
            "HY3D_SERVER_HOME": str(self.home),
            "HY3D_SERVER_PORT": str(free_port()),
            "HY3D_SERVER_START_TIMEOUT": "600",
        }
        self.prefect_home = work / "adhoc-prefect-home"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads((self.home / "server.json").read_text())["pid"])
        return None

    def cpu_s(self) -> float:
        pid = self.pid()
        return group_cpu_s(pid) if pid else 0.0  # its own session: pgid = pid

    def stop(self) -> None:
        env = {**prefect_base_env(self.prefect_home), **self.env}
        subprocess.run(
            [str(BIN / "hy3d"), "server", "stop"], env=env, capture_output=True, timeout=120, check=False
        )


# ---- running one contender -------------------------------------------------------------------------------


@dataclass
class Measured:
    name: str
    command: list[str]
    returncode: int | None
    wall_s: float
    cpu_s: float
    system_cpu_s: float  # the kernel's share of cpu_s (system calls: sockets, files)
    maxrss_mb: float
    group_peak_rss_mb: float
    emulator_cpu_s: float
    server_cpu_s: float | None
    landed: int
    stats: dict[str, Any]
    started_at: float
    mtimes: list[float]
    timed_out: bool
    log: Path
    other_cpu_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    report: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    # With --repeat: every run's wall and start-up (this object is the median-wall run).
    walls: list[float] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def submits(self) -> int:
        return int(self.stats.get("submits_accepted", 0))

    @property
    def polls_per_prediction(self) -> float | None:
        return self.stats["total_polls"] / self.submits if self.submits else None

    @property
    def lag(self) -> dict[str, Any]:
        summary: dict[str, Any] = self.stats.get("completion_lag_s") or {}
        return summary

    @property
    def startup_s(self) -> float | None:
        accepted = self.stats.get("accepted_at") or {}
        return min(accepted.values()) - self.started_at if accepted else None

    def steady_rate(self) -> float | None:
        """Items landed between the 10th and 90th percentile landing times, per second."""
        times = sorted(self.mtimes)
        if len(times) < 10:
            return None
        low, high = int(0.1 * len(times)), math.ceil(0.9 * len(times)) - 1
        span = times[high] - times[low]
        return (high - low) / span if span > 0 else None


def landed_meshes(dest: Path, ids: Sequence[str]) -> list[float]:
    mtimes = []
    for item_id in ids:
        with contextlib.suppress(OSError):
            stat = (dest / item_id / "mesh.glb").stat()
            if stat.st_size > 0:
                mtimes.append(stat.st_mtime)
    return mtimes


def run_contender(
    name: str,
    command: list[str],
    env: dict[str, str],
    work: Path,
    dest: Path,
    ids: Sequence[str],
    emulator: Emulator,
    server: PrefectServer | AdhocServer | None,
    timeout_s: float,
) -> Measured:
    emulator.reset()
    log = work / f"{name}.log"
    (work / f"{name}-report.json").unlink(missing_ok=True)  # the flow wrapper writes it at exit
    emulator_cpu0 = emulator.cpu_s()
    server_cpu0 = server.cpu_s() if server else None
    busy0, load0 = machine_busy_s(), os.getloadavg()[0]
    print(f"  {name}: {shlex.join(command[:4])} ... (log {log})", flush=True)
    started_at = time.time()
    group = Group(name, command, env, work, log)
    peak_rss, timed_out, next_sample = 0.0, False, 0.0
    while True:
        pid, status, usage = os.wait4(group.pid, os.WNOHANG)
        if pid:
            break
        now = time.time()
        if now - started_at > timeout_s and not timed_out:
            # SIGINT first: hy3d stops (KeyboardInterrupt) and the flow wrapper still writes its report.
            print(f"  {name}: still running after {timeout_s:.0f} s: interrupted", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group.pid, signal.SIGINT)
            timed_out = True
        if timed_out and now - started_at > timeout_s + 30:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group.pid, signal.SIGKILL)
        if now >= next_sample:
            peak_rss = max(peak_rss, group_rss_mb(group.pid))
            next_sample = now + 0.5
        time.sleep(0.05)
    wall = time.time() - started_at
    group.proc.returncode = os.waitstatus_to_exitcode(status)
    group.stop(grace_s=0)  # anything the contender left behind
    server_cpu = server.cpu_s() - server_cpu0 if server and server_cpu0 is not None else None
    measured = Measured(
        name=name,
        command=command,
        returncode=group.proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        system_cpu_s=usage.ru_stime,
        maxrss_mb=usage.ru_maxrss / 1024,
        group_peak_rss_mb=peak_rss,
        emulator_cpu_s=emulator.cpu_s() - emulator_cpu0,
        server_cpu_s=server_cpu,
        landed=0,
        stats=emulator.stats(),
        started_at=started_at,
        mtimes=landed_meshes(dest, ids),
        timed_out=timed_out,
        log=log,
    )
    measured.landed = len(measured.mtimes)
    ours = measured.cpu_s + measured.emulator_cpu_s + (server_cpu or 0.0)
    measured.other_cpu_s = max(0.0, machine_busy_s() - busy0 - ours)
    measured.load = (load0, os.getloadavg()[0])
    print(
        f"  {name}: {measured.wall_s:.1f} s, {measured.landed}/{len(ids)} landed, exit {measured.returncode}",
        flush=True,
    )
    if measured.landed != len(ids):
        print(group.tail(), flush=True)
    return measured


def settle_history(
    server: PrefectServer, flow_run_ids: list[str], created: int, settle_s: float
) -> dict[str, Any]:
    """Counts right after the flow exited, then again until they stop moving (or ``settle_s``)."""
    at_exit = server.history(flow_run_ids)
    started, last, stable = time.monotonic(), at_exit, 0
    while time.monotonic() - started < settle_s and last["task_runs"] < created:
        time.sleep(2.0)
        now = server.history(flow_run_ids)
        stable = stable + 1 if now == last else 0
        last = now
        if stable >= 5:
            break
    return {"at_exit": at_exit, "settled": last, "settle_s": round(time.monotonic() - started, 1)}


# ---- the flow wrapper (runs in the contender's process) ---------------------------------------------------


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread, by Python thread name (digits folded: pools count as one)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    by_name: dict[str, float] = defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        fields: list[str] | None = None
        with contextlib.suppress(OSError):
            text = (task / "stat").read_text()
            fields = text.rsplit(")", 1)[-1].split()
        if not fields:
            continue
        name = re.sub(r"\d+", "N", names.get(int(task.name), "(non-Python)"))
        by_name[name] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    times = os.times()
    by_name["(threads gone at exit: asyncio.to_thread pool...)"] = max(
        0.0, times.user + times.system - sum(by_name.values())
    )
    return dict(sorted(by_name.items(), key=lambda kv: -kv[1]))


IDLE_FUNCTIONS = {"poll", "select", "epoll", "sleep", "wait", "acquire", "_run_once", "run_forever"}


def _package_of(path: str | None) -> str:
    if not path:
        return "(builtin)"
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    for own in ("flows", "tasks", "hy3d", "bench"):
        if f"/{own}/" in path:
            return own
    return "stdlib" if "/lib/python" in path else path.rsplit("/", 1)[-1]


def _profile_summary(session: Any, text_path: Path, html_path: Path) -> dict[str, Any]:
    """Self time of the main thread by package and by function, selector/sleep waits excluded."""
    root = session.root_frame()
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    idle = 0.0
    stack = [root] if root is not None else []
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if frame.is_synthetic:  # [self]/[await] leaves: already in their parent's total_self_time
            continue
        spent = frame.total_self_time
        if spent <= 0:
            continue
        function = str(frame.function)
        if function.split(".")[-1] in IDLE_FUNCTIONS:
            idle += spent
            continue
        package = _package_of(frame.file_path)
        by_package[package] += spent
        by_function[f"{function} ({frame.file_path_short}:{frame.line_no})"] += spent
    return {
        "duration_s": round(session.duration, 2),
        "cpu_s": round(session.cpu_time, 2),
        "idle_s": round(idle, 2),
        "busy_s": round(sum(by_package.values()), 2),
        "by_package": [(k, round(v, 2)) for k, v in by_package.most_common(12)],
        "by_function": [(k, round(v, 3)) for k, v in by_function.most_common(15)],
        "text": str(text_path),
        "html": str(html_path),
    }


def flow_wrapper(argv: list[str]) -> NoReturn:
    """``compare.py _flow --report PATH [--profile PREFIX] -- run MANIFEST ...``: the ``hy3d`` script
    (its quick exit included), counting what Prefect creates."""
    from hy3d.cli import run_then_exit_quickly

    run_then_exit_quickly(lambda: _flow(argv))


def _flow(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compare.py _flow")
    parser.add_argument("--report", required=True)
    parser.add_argument("--profile", default=None)
    parser.add_argument("hy3d", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    hy3d_args = args.hy3d[1:] if args.hy3d[:1] == ["--"] else args.hy3d
    profiler: Any = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.01, async_mode="disabled")
        profiler.start()

    task_runs: set[str] = set()
    flow_runs: list[str] = []
    import prefect.task_engine as task_engine
    import prefect.utilities.engine as engine_utilities
    from prefect.client.orchestration._flow_runs.client import FlowRunAsyncClient, FlowRunClient

    emit = engine_utilities.emit_task_run_state_change_event

    def counting_emit(*a: Any, **kw: Any) -> Any:
        run = kw.get("task_run", a[0] if a else None)
        if run is not None:
            task_runs.add(str(run.id))
        return emit(*a, **kw)

    setattr(task_engine, "emit_task_run_state_change_event", counting_emit)  # noqa: B010
    create_async, create_sync = FlowRunAsyncClient.create_flow_run, FlowRunClient.create_flow_run

    async def counting_create_async(self: Any, *a: Any, **kw: Any) -> Any:
        run = await create_async(self, *a, **kw)
        flow_runs.append(str(run.id))
        return run

    def counting_create_sync(self: Any, *a: Any, **kw: Any) -> Any:
        run = create_sync(self, *a, **kw)
        flow_runs.append(str(run.id))
        return run

    setattr(FlowRunAsyncClient, "create_flow_run", counting_create_async)  # noqa: B010
    setattr(FlowRunClient, "create_flow_run", counting_create_sync)  # noqa: B010

    code = 1
    report: dict[str, Any] = {}
    try:
        from hy3d.cli import main as hy3d_main

        code = hy3d_main(hy3d_args)
    finally:
        report["threads_cpu_s"] = _thread_cpu()
        report["task_runs_created"] = len(task_runs)
        report["flow_run_ids"] = flow_runs
        if profiler is not None:
            session = profiler.stop()
            prefix = Path(args.profile)
            prefix.parent.mkdir(parents=True, exist_ok=True)
            ignore = prefix.parent / ".gitignore"  # profiles stay local; RESULTS.md has the summary
            if not ignore.exists():
                ignore.write_text("*\n")
            text_path, html_path = prefix.with_suffix(".txt"), prefix.with_suffix(".html")
            text_path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
            html_path.write_text(profiler.output_html())
            report["profile"] = _profile_summary(session, text_path, html_path)
        Path(args.report).write_text(json.dumps(report))
    return code


# ---- the bench ----------------------------------------------------------------------------------------


def poll_policy(flow_env: dict[str, str]) -> tuple[float, float, float]:
    """The flow client's effective poll policy: its settings' defaults, or the --flow-env overrides."""
    from tasks.client import WaveSpeedSettings

    fields = WaveSpeedSettings.model_fields

    def value(name: str) -> float:
        env = f"WAVESPEED_{name.upper()}"
        default = fields[name].default
        return float(flow_env.get(env, os.environ.get(env, default)))

    return value("poll_initial_interval_s"), value("poll_backoff"), value("poll_max_interval_s")


def describe_policy(policy: tuple[float, float, float]) -> str:
    initial, backoff, maximum = policy
    if backoff == 1:
        return f"fixed {initial:g} s"
    return f"first after {initial:g} s, x{backoff:g} per poll, capped at {maximum:g} s"


def contender_command(
    name: str, manifest: Path, dest: Path, args: argparse.Namespace, work: Path, run: str = ""
) -> tuple[list[str], dict[str, str]]:
    env = clean_env()
    if not args.emulator_url.startswith(f"http://{LOOPBACK}:"):
        raise SystemExit(f"the emulator must be on {LOOPBACK}, not {args.emulator_url}")
    env.update({"WAVESPEED_API_KEY": EMULATOR_KEY, "WAVESPEED_BASE_URL": args.emulator_url})
    c = str(args.c)
    if name in ("flow", "flow-adhoc", "flow-ephemeral"):
        report = work / f"{name}{run}-report.json"
        command = [sys.executable, str(BENCH / "compare.py"), "_flow", "--report", str(report)]
        if args.profile and name == "flow" and args.pyspy is None:
            command += ["--profile", str(args.profile_prefix)]
        elif args.profile and name == "flow":
            raw = args.profile_prefix.with_suffix(".pyspy.txt")
            command = [
                args.pyspy,
                "record",
                "--nonblocking",
                # Only the thread holding the GIL: a thread waiting for it (the to_thread pool, while
                # the event loop runs) would otherwise count as busy and hide where the CPU goes.
                "--gil",
                "-r",
                "100",
                "-f",
                "raw",
                "-o",
                str(raw),
                "--",
                *command,
            ]
        flow_c = str(args.flow_concurrency or args.c)
        command += ["--", "run", str(manifest), "--output", str(dest), "--concurrency", flow_c]
        if args.flow_queue_headroom is not None:
            command += ["--queue-headroom", str(args.flow_queue_headroom)]
        homes = {"flow-ephemeral": "ephemeral-home", "flow-adhoc": "adhoc-prefect-home"}
        env.update(prefect_base_env(work / homes.get(name, f"{name}-client-home")))
        env.pop("PREFECT_UI_ENABLED", None)
        env["PREFECT_LOCAL_STORAGE_PATH"] = str(work / f"{name}-results{run}")  # no cache carried over
        if name == "flow":
            env["PREFECT_API_URL"] = args.api_url
        if name == "flow-ephemeral":
            env["HY3D_EPHEMERAL"] = "1"
        if name == "flow-adhoc":
            env.update(args.adhoc.env)
        env.update(args.flow_env)
        return command, env
    if name == "baseline":
        initial, backoff, maximum = args.baseline_policy
        adaptive = ["--poll-adaptive"] if args.baseline_poll == "client" else []
        command = [
            sys.executable,
            str(BENCH / "baseline.py"),
            str(manifest),
            "--output",
            str(dest),
            "--concurrency",
            c,
            "--poll-initial",
            str(initial),
            "--poll-backoff",
            str(backoff),
            "--poll-max",
            str(maximum),
            *adaptive,
        ]
        return command, env
    if name == "sdk":
        return [
            sys.executable,
            str(BENCH / "sdk_runner.py"),
            str(manifest),
            "--output",
            str(dest),
            "--concurrency",
            c,
        ], env
    raise SystemExit(f"unknown contender {name!r}")


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def table(results: list[Measured], args: argparse.Namespace) -> list[str]:
    ideal = math.ceil(args.n / args.c) * args.latency
    baseline = next((r for r in results if r.name == "baseline"), None)
    header = (
        "| contender | wall s | / ideal | / baseline | images/s | steady images/s | CPU s | peak RSS MB "
        "| polls/pred | submits | lag mean / p90 / max s | lag p90 / L | start-up s | landed |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        lag = r.lag
        lines.append(
            "| "
            + " | ".join(
                [
                    r.name,
                    fmt(r.wall_s, 1),
                    fmt(r.wall_s / ideal),
                    fmt(r.wall_s / baseline.wall_s if baseline else None, 3),
                    fmt(args.n / r.wall_s, 1),
                    fmt(r.steady_rate(), 1),
                    fmt(r.cpu_s, 1),
                    fmt(r.maxrss_mb, 0),
                    fmt(r.polls_per_prediction),
                    f"{r.submits}",
                    f"{fmt(lag.get('mean'))} / {fmt(lag.get('p90'))} / {fmt(lag.get('max'))}",
                    fmt(lag["p90"] / args.latency if lag.get("p90") is not None else None),
                    fmt(r.startup_s, 1),
                    f"{r.landed}/{args.n}",
                ]
            )
            + " |"
        )
    return lines


def median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def repeat_table(results: list[Measured], args: argparse.Namespace) -> list[str]:
    """With --repeat: each contender's start-up and wall, median and every run."""
    if args.repeat < 2:
        return []
    baseline = next((r for r in results if r.name == "baseline"), None)
    base_wall = median(baseline.walls) if baseline else None
    header = (
        f"| contender | start-up s, median of {args.repeat} | start-up s, each run | wall s, median "
        "| wall s, each run | wall / baseline (medians) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        wall = median(r.walls)
        lines.append(
            f"| {r.name} | {fmt(median(r.startups))} | {' / '.join(fmt(s) for s in r.startups)} "
            f"| {fmt(wall, 1)} | {' / '.join(fmt(w, 1) for w in r.walls)} "
            f"| {fmt(wall / base_wall if wall and base_wall else None, 3)} |"
        )
    return lines


def targets(results: list[Measured], args: argparse.Namespace) -> list[str]:
    by = {r.name: r for r in results}
    lines = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("meets" if ok else "MISSES")

    adhoc, plain = by.get("flow-adhoc"), by.get("baseline")
    for r in results:
        if r.name.startswith("flow") and r.startups:
            startup = median(r.startups)
            judged = f": {verdict(startup is not None and startup <= 3.0)}" if r is adhoc else ""
            lines.append(
                f"start-up [{r.name}]: spawn -> first submit, median of {len(r.startups)} = {fmt(startup)} s"
                + (" (target <= 3 s from the second ad-hoc run on)" + judged if r is adhoc else "")
            )
    if adhoc and plain and args.n >= 100:  # a whole run, not a start-up probe
        ratio = (median(adhoc.walls) or adhoc.wall_s) / (median(plain.walls) or plain.wall_s)
        limit = 1.05 if args.n >= 1000 else 1.10
        lines.append(
            f"whole process: wall(flow-adhoc)/wall(baseline) = {ratio:.3f}, start-up included "
            f"(medians of {len(adhoc.walls)}; target <= {limit:.2f} at N={args.n}): {verdict(ratio <= limit)}"
        )

    flow, baseline = by.get("flow"), by.get("baseline")
    if flow and baseline:
        ratio = flow.wall_s / baseline.wall_s
        lines.append(
            f"ratio: wall(flow)/wall(baseline) = {ratio:.3f} (target <= 1.05): {verdict(ratio <= 1.05)}"
        )
        eph = by.get("flow-ephemeral")
        if eph:
            lines.append(
                f"ratio, ephemeral: wall(flow-ephemeral)/wall(baseline) = {eph.wall_s / baseline.wall_s:.3f}"
            )
    for r in results:
        # The target is a sustained rate: judged on the steady rate. The overall rate includes the
        # first wave's whole latency (nothing lands before L), so at N=5000, C=1000, L=10 even a
        # zero-overhead run makes exactly 100 overall.
        rate, steady = args.n / r.wall_s, r.steady_rate()
        lines.append(
            f"throughput [{r.name}]: {fmt(steady, 1)} images/s steady (sustained), {rate:.1f} overall "
            f"(target >= 100 sustained at N=5000 C=1000 L=10; ceiling here C/L = "
            f"{args.c / args.latency:.1f}): {verdict(None if steady is None else steady >= 100)}"
        )
    for r in results:
        polls, lag = r.polls_per_prediction, r.lag.get("mean")
        ok = None if polls is None or lag is None else polls <= 3 and lag <= 0.1 * args.latency
        lines.append(
            f"polls [{r.name}]: {fmt(polls)} polls/prediction (target <= 3), completion noticed after "
            f"{fmt(lag)} s on average, p90 {fmt(r.lag.get('p90'))} s (target <= 10 % of L = "
            f"{0.1 * args.latency:.2f} s): {verdict(ok)}"
        )
    for r in results:
        lines.append(
            f"memory [{r.name}]: peak RSS {r.maxrss_mb:.0f} MB (process), {r.group_peak_rss_mb:.0f} MB "
            f"(its process group, sampled) (target < 400 MB at 50 x 100 MB): {verdict(r.maxrss_mb < 400)}"
        )
    for r in results:
        if r.history:
            settled, at_exit = r.history["settled"], r.history["at_exit"]
            if "task_runs_created" not in r.report:
                lines.append(
                    f"history [{r.name}]: the flow was killed before reporting what it created; the "
                    f"server recorded {settled['flow_runs']} flow run(s) and {settled['task_runs']} task "
                    f"runs ({settled['task_runs_completed']} COMPLETED) {r.history['settle_s']} s after exit"
                )
                continue
            created = r.report.get("task_runs_created", 0)
            created_flows = len(r.report.get("flow_run_ids", []))
            lines.append(
                f"history [{r.name}]: the flow created {created_flows} flow run(s) and {created} task runs; "
                f"the server recorded {at_exit['flow_runs']} flow run(s) and {at_exit['task_runs']} "
                f"task runs at exit, {settled['task_runs']} ({settled['task_runs_completed']} COMPLETED) "
                f"{r.history['settle_s']} s later: "
                f"{verdict(settled['task_runs'] >= created and settled['flow_runs'] >= created_flows)}"
            )
    return lines


PHASES = (
    ("accepted -> started", "accepted_at", "started_at"),
    ("accepted -> 1st poll", "accepted_at", "first_poll_at"),
    ("completed -> noticed", "completed_at", "noticed_at"),
    ("noticed -> download", "noticed_at", "first_download_at"),
)


def phases(stats: dict[str, Any]) -> str:
    """Median / p90 seconds between emulator timeline events, over the predictions having both."""
    parts = []
    for label, start_key, end_key in PHASES:
        start, end = stats.get(start_key) or {}, stats.get(end_key) or {}
        gaps = sorted(end[pid] - start[pid] for pid in start if pid in end)
        if gaps:
            p50, p90 = gaps[len(gaps) // 2], gaps[min(len(gaps) - 1, int(0.9 * len(gaps)))]
            parts.append(f"{label} {p50:.2f} / {p90:.2f}")
    return "; ".join(parts)


QUEUED_S = 0.5  # a prediction that waited longer than this for a slot of the account was queued


def queued_ids(stats: dict[str, Any]) -> set[str]:
    """The predictions that waited longer than QUEUED_S in the account's queue."""
    accepted, started = stats.get("accepted_at") or {}, stats.get("started_at") or {}
    return {pid for pid in started if pid in accepted and started[pid] - accepted[pid] > QUEUED_S}


def group_lags_and_polls(stats: dict[str, Any], group: Collection[str]) -> tuple[list[float], float]:
    """The notice lags of a group's completed predictions, and the group's mean polls."""
    done, noticed = stats.get("completed_at") or {}, stats.get("noticed_at") or {}
    polls = stats.get("polls_by_prediction") or {}
    lags = [noticed[pid] - done[pid] for pid in group if pid in done and pid in noticed]
    return lags, sum(polls.get(pid, 0) for pid in group) / max(1, len(group))


def queued_split(stats: dict[str, Any]) -> str:
    """Polls and notice lag of the predictions that waited in the account's queue and of the rest
    (empty when none waited): queue headroom's cost shows there."""
    started = stats.get("started_at") or {}
    first_poll = stats.get("first_poll_at") or {}
    queued = queued_ids(stats)
    if not queued:
        return ""
    parts = []
    for label, group in (("queued", queued), ("not queued", set(started) - queued)):
        lags, mean_polls = group_lags_and_polls(stats, group)
        to_poll = sorted(first_poll[pid] - started[pid] for pid in group if pid in first_poll)
        if group and lags and to_poll:
            parts.append(
                f"{label} {len(group)}: {mean_polls:.2f} polls, "
                f"lag mean {sum(lags) / len(lags):.2f} s, started -> 1st poll median "
                f"{to_poll[len(to_poll) // 2]:.2f} s"
            )
    return "; ".join(parts)


def by_acceptance(stats: dict[str, Any], window_s: float) -> list[str]:
    """Lag, polls and queued share of the predictions accepted in each ``window_s`` from the first
    accept: the first wave, the transition after it and the steady state behave differently."""
    accepted = stats.get("accepted_at") or {}
    if not accepted:
        return []
    origin = min(accepted.values())
    windows: dict[int, list[str]] = {}
    for pid, at in accepted.items():
        windows.setdefault(int((at - origin) // window_s), []).append(pid)
    all_queued = queued_ids(stats)
    rows = []
    for index in sorted(windows):
        group = windows[index]
        lags, mean_polls = group_lags_and_polls(stats, group)
        queued = sum(1 for pid in group if pid in all_queued)
        if lags:
            rows.append(
                f"{index * window_s:.0f}-{(index + 1) * window_s:.0f} s: {len(group)} accepted, "
                f"{100 * queued / len(group):.0f} % queued, lag mean {sum(lags) / len(lags):.2f} s, "
                f"{mean_polls:.2f} polls"
            )
    return rows


def details(results: list[Measured], args: argparse.Namespace, server: PrefectServer | None) -> list[str]:
    lines = []
    for r in results:
        extra = [
            f"CPU {r.cpu_s:.1f} s ({r.system_cpu_s:.1f} s of it in the kernel)",
            f"emulator CPU {r.emulator_cpu_s:.1f} s",
            f"peak in flight {r.stats.get('peak_in_flight')}",
            f"uploads {r.stats.get('uploads')}",
            f"downloads {sum((r.stats.get('downloads_by_output') or {}).values())}",
            f"polls {r.stats.get('total_polls')}",
        ]
        if r.server_cpu_s is not None:
            extra.append(f"Prefect server CPU {r.server_cpu_s:.1f} s (not in the row's CPU)")
        extra.append(
            f"CPU of everything else on the machine meanwhile {r.other_cpu_s:.1f} s "
            f"(load {r.load[0]:.1f} -> {r.load[1]:.1f})"
        )
        if r.mtimes:
            extra.append(f"last mesh landed {r.started_at + r.wall_s - max(r.mtimes):.1f} s before exit")
        lines.append(f"- {r.name}: " + ", ".join(extra))
        lines.append(f"  - per prediction, median / p90 s: {phases(r.stats)}")
        windows = by_acceptance(r.stats, window_s=max(5.0, args.latency / 2))
        if windows:
            lines.append("  - by acceptance time: " + "; ".join(windows))
        split = queued_split(r.stats)
        if split:
            lines.append(f"  - waited in the account's queue (> {QUEUED_S:g} s) or not: {split}")
        threads = r.report.get("threads_cpu_s")
        if threads:
            top = ", ".join(f"{k} {v:.1f}" for k, v in list(threads.items())[:6])
            lines.append(f"  - CPU s by thread: {top}")
        if r.returncode or r.timed_out:
            lines.append(f"  - exit {r.returncode}{' (timed out)' if r.timed_out else ''}; log {r.log}")
    if server is not None:
        lines.append(f"- Prefect server start-up {server.startup_s:.1f} s (not counted)")
    return lines


def profile_lines(results: list[Measured]) -> list[str]:
    lines: list[str] = []
    for r in results:
        profile = r.report.get("profile")
        if not profile:
            continue
        if profile.get("kind") == "py-spy":
            lines += pyspy_lines(r.name, profile)
            continue
        lines += [
            f"Profile of `{r.name}` (pyinstrument, main thread wall time, 10 ms samples; C calls that "
            "release the GIL include the wait to get it back): "
            f"{profile['duration_s']} s wall, {profile['cpu_s']} s CPU in the process; "
            f"main thread busy {profile['busy_s']} s, waiting "
            f"{profile['idle_s']} s. Files: `{Path(profile['text']).relative_to(ROOT)}`, "
            f"`{Path(profile['html']).relative_to(ROOT)}` (not committed).",
            "",
            "Main-thread busy time by package (self time of the innermost frame):",
            "",
            "| package | s |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in profile["by_package"]],
            "",
            "Top functions by self time:",
            "",
            "| function | s |",
            "|---|---|",
            *[f"| `{k}` | {v} |" for k, v in profile["by_function"]],
            "",
        ]
    return lines


def find_pyspy(given: str | None) -> str | None:
    for candidate in (given, shutil.which("py-spy"), str(BIN / "py-spy"), "/tmp/pyspy/bin/py-spy"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _spy_package(path: str) -> str:
    """py-spy prints paths relative to sys.path: ``httpx/_client.py``, ``flows/pipeline.py``, ``enum.py``."""
    if not path:
        return "(native)"
    if path.startswith("<frozen"):
        return "(imports)"
    if path.startswith("/"):
        return _package_of(path)
    if "/" not in path:
        return "stdlib"
    return path.split("/", 1)[0]


def _without_line(frame: str) -> str:
    """``_shade (flows/gallery.py:331)`` -> ``_shade (flows/gallery.py)``: one row per function."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def pyspy_summary(raw: Path) -> dict[str, Any]:
    """Collapsed stacks (root first, ``frame (file:line)`` separated by ``;``, then a count) of CPU
    samples of the thread holding the GIL: self samples by package and function, and the share of samples with
    each package anywhere on the stack."""
    self_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()  # innermost hy3d/flows/tasks frame: the project code responsible
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        paths = [f[f.rfind("(") + 1 : f.rfind(":")] if "(" in f else "" for f in frames]
        packages = [_spy_package(p) for p in paths]
        for package in set(packages):
            anywhere[package] += count
        self_pkg[packages[-1]] += count
        self_fn[_without_line(frames[-1])] += count
        for frame, package in zip(reversed(frames), reversed(packages), strict=True):
            if package in ("flows", "tasks", "hy3d"):
                own_fn[_without_line(frame)] += count
                break
    return {
        "kind": "py-spy",
        "samples": total,
        "raw": str(raw),
        "self_by_package": self_pkg.most_common(12),
        "anywhere_by_package": [kv for kv in anywhere.most_common(13) if kv[0] != "stdlib"][:12],
        "self_by_function": self_fn.most_common(15),
        "by_project_function": own_fn.most_common(12),
    }


def pyspy_lines(name: str, profile: dict[str, Any]) -> list[str]:
    total = max(1, int(profile["samples"]))

    def rows(pairs: list[Any]) -> list[str]:
        return [f"| `{k}` | {v} | {100 * v / total:.1f} % |" for k, v in pairs]

    return [
        f"Profile of `{name}` (py-spy `--gil`, 100 samples/s of the stack of the thread holding the GIL "
        f"— {total} samples ~ {total / 100:.0f} s of Python; "
        f"shares below are of these samples): raw collapsed stacks in "
        f"`{Path(profile['raw']).relative_to(ROOT)}` (not committed).",
        "",
        "Self time by package (innermost frame; `site-packages/` paths keep only the distribution):",
        "",
        "| package | samples | share |",
        "|---|---|---|",
        *rows(profile["self_by_package"]),
        "",
        "Samples with the package anywhere on the stack (inclusive):",
        "",
        "| package | samples | share |",
        "|---|---|---|",
        *rows(profile["anywhere_by_package"]),
        "",
        "Hottest innermost functions:",
        "",
        "| function | samples | share |",
        "|---|---|---|",
        *rows(profile["self_by_function"]),
        "",
        "Project code on whose behalf the CPU was spent (innermost hy3d/flows/tasks frame):",
        "",
        "| function | samples | share |",
        "|---|---|---|",
        *rows(profile["by_project_function"]),
        "",
    ]


def machine() -> str:
    mem = "?"
    with contextlib.suppress(OSError, StopIteration):
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    from importlib.metadata import version

    versions = ", ".join(f"{p} {version(p)}" for p in ("prefect", "httpx", "wavespeed", "pyinstrument"))
    return (
        f"nproc {os.cpu_count()}, memory {mem}, Python {platform.python_version()} "
        f"({platform.machine()}, {platform.system()} {platform.release()}), {versions}"
    )


def record(lines: list[str], path: Path) -> None:
    """Write the section `lines` over the one with the same heading (lines[0]), else at the end."""
    text = path.read_text() if path.exists() else "# bench/compare.py results\n"
    sections = [s.strip("\n") for s in re.split(r"^(?=## )", text, flags=re.MULTILINE) if s.strip()]
    at = next((i for i, s in enumerate(sections) if s.partition("\n")[0] == lines[0]), len(sections))
    sections[at : at + 1] = ["\n".join(lines).strip("\n")]
    path.write_text("\n\n".join(sections) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a scenario (see the table)")
    parser.add_argument("--quick", action="store_true", help="same as --preset quick (N=100, C=20, L=1 s)")
    parser.add_argument("--n", type=int, default=None, help="images (overrides the preset)")
    parser.add_argument("--c", type=int, default=None, help="concurrency and account concurrency")
    parser.add_argument("--latency", type=float, default=None, help="emulated generation seconds L")
    parser.add_argument("--jitter", type=float, default=None, help="+/- seconds around L (default L/10)")
    parser.add_argument("--mesh-bytes", type=int, default=None, help="pad every GLB to about this size")
    parser.add_argument(
        "--contenders", default=None, help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}"
    )
    parser.add_argument(
        "--baseline-poll",
        default="client",
        help="'client' (default: the client's schedule, tasks.polling.PollSchedule), 'growing' (the "
        "WAVESPEED_POLL_* settings' growing interval only) or 'fixed=SECONDS'",
    )
    parser.add_argument(
        "--flow-concurrency",
        type=int,
        default=None,
        help="the flow's --concurrency when it should differ from C, the account's (WaveSpeed queues "
        "submits beyond the account's concurrency; default C)",
    )
    parser.add_argument(
        "--flow-queue-headroom",
        type=int,
        default=None,
        metavar="N",
        help="the flow's --queue-headroom (predictions queued beyond its concurrency; default: the "
        "flow's own, half of it). 0 keeps exactly C in flight, like the baseline and the SDK",
    )
    parser.add_argument(
        "--flow-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the flow contenders (e.g. WAVESPEED_POLL_INITIAL_INTERVAL_S=1)",
    )
    parser.add_argument(
        "--flow-webhook",
        action="store_true",
        help="run the flow contenders in webhook mode: the emulator delivers finished predictions to a "
        "receiver on a free loopback port (sets WAVESPEED_WEBHOOK_URL and WAVESPEED_WEBHOOK_LISTEN)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="run the flow under py-spy (if found) or pyinstrument"
    )
    parser.add_argument("--py-spy", dest="pyspy_path", default=None, help="py-spy binary (default: search)")
    parser.add_argument(
        "--profiler", choices=("auto", "py-spy", "pyinstrument"), default="auto", help="with --profile"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per contender (default per preset: 5 for startup, 3 for adhoc, else 1); rows show "
        "the median-wall run, a table every run's start-up and wall",
    )
    parser.add_argument("--seed", type=int, default=7, help="emulator seed (jitter sequence)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="per contender, s (default 10x ideal+300)"
    )
    parser.add_argument("--history-settle", type=float, default=180.0, help="max s to wait for the server")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="markdown file (its section of this preset is replaced)"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="do not write the section to the results file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (inputs, outputs, logs)")
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the unmeasured 2-image run of each contender"
    )
    parser.add_argument(
        "--cold-imports",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as set here (contenders compile every import from source)",
    )
    args = parser.parse_args(argv)
    name = "quick" if args.quick else args.preset
    explicit = any(v is not None for v in (args.n, args.c, args.latency))
    if name is None and not explicit:
        parser.error("give --preset NAME, --quick, or --n/--c/--latency")
    preset = PRESETS[name] if name else Preset("custom", 100, 20, 1.0, 0.1, None, ALL_CONTENDERS, "custom")
    if explicit and name:
        preset = replace(preset, name=f"{name}+custom")
    elif explicit:
        preset = replace(preset, name="custom")
    args.preset_obj = preset
    args.n = args.n or preset.n
    args.c = args.c or preset.c
    args.latency = args.latency if args.latency is not None else preset.latency
    default_jitter = preset.jitter if args.latency == preset.latency else args.latency / 10
    args.jitter = args.jitter if args.jitter is not None else default_jitter
    args.mesh_bytes = args.mesh_bytes if args.mesh_bytes is not None else preset.mesh_bytes
    contenders = tuple(args.contenders.split(",")) if args.contenders else preset.contenders
    unknown = set(contenders) - set(ALL_CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {sorted(unknown)}")
    args.contender_list = contenders
    args.repeat = args.repeat or preset.repeat
    if args.n < 1 or args.c < 1 or args.latency < 0 or args.jitter < 0 or args.repeat < 1:
        parser.error("--n, --c and --repeat must be >= 1, --latency and --jitter >= 0")
    try:
        args.flow_env = dict(kv.split("=", 1) for kv in args.flow_env)
    except ValueError:
        parser.error("--flow-env takes KEY=VALUE")
    if args.flow_webhook:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args.flow_env.setdefault("WAVESPEED_WEBHOOK_URL", f"http://127.0.0.1:{port}/wavespeed")
        args.flow_env.setdefault("WAVESPEED_WEBHOOK_LISTEN", f"127.0.0.1:{port}")
    if args.baseline_poll not in ("client", "growing") and not re.fullmatch(
        r"fixed=\d+(\.\d+)?", args.baseline_poll
    ):
        parser.error("--baseline-poll takes 'client', 'growing' or 'fixed=SECONDS'")
    return args


def bench(args: argparse.Namespace, work: Path, argv: list[str]) -> int:
    preset: Preset = args.preset_obj
    ideal = math.ceil(args.n / args.c) * args.latency
    timeout_s = args.timeout or 10 * ideal + 300
    flow_policy = poll_policy(args.flow_env)
    if args.baseline_poll in ("client", "growing"):
        args.baseline_policy = flow_policy
    else:
        fixed = float(args.baseline_poll.split("=", 1)[1])
        args.baseline_policy = (fixed, 1.0, fixed)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.profile_prefix = PROFILES / f"{stamp}-{preset.name}-flow"
    args.pyspy = None if args.profiler == "pyinstrument" else find_pyspy(args.pyspy_path)
    if args.profile and args.profiler == "py-spy" and args.pyspy is None:
        raise SystemExit("--profiler py-spy: no py-spy binary found (pip install --target DIR py-spy)")
    if args.profile and args.pyspy:
        PROFILES.mkdir(parents=True, exist_ok=True)
        if not (PROFILES / ".gitignore").exists():
            (PROFILES / ".gitignore").write_text("*\n")
    mesh = f"meshes padded to {args.mesh_bytes / 1e6:g} MB" if args.mesh_bytes else "meshes ~90 kB"
    print(
        f"preset {preset.name}: N={args.n} C={args.c} L={args.latency:g} s ± {args.jitter:g} s, {mesh}; "
        f"ideal ceil(N/C)*L = {ideal:g} s; contenders {', '.join(args.contender_list)}",
        flush=True,
    )
    fingerprint = code_fingerprint()
    started = time.monotonic()
    manifest = make_inputs(work / "inputs", args.n)
    ids = [f"item-{i:05d}" for i in range(args.n)]
    print(f"  {args.n} images generated in {time.monotonic() - started:.1f} s", flush=True)

    emulator = Emulator(work, args)
    args.emulator_url = emulator.url
    server: PrefectServer | None = None
    args.adhoc = AdhocServer(work)
    first_adhoc: Measured | None = None
    results: list[Measured] = []
    try:
        if "flow" in args.contender_list:
            server = PrefectServer(work)
            args.api_url = server.api_url
            print(f"  Prefect server up in {server.startup_s:.1f} s at {server.api_url}", flush=True)
        if "flow-ephemeral" in args.contender_list:
            spent = migrate_ephemeral_home(work / "ephemeral-home")
            print(f"  ephemeral database migrated in {spent:.1f} s (not counted)", flush=True)
        if not args.no_warmup:
            warm_manifest = make_inputs(work / "warmup-inputs", 2, first=args.n)
            warm_ids = [f"item-{i:05d}" for i in (args.n, args.n + 1)]
            profile, args.profile = args.profile, False
            emulator.configure(latency_s=0.1, jitter_s=0.0)  # warm-ups need not wait L
            for name in args.contender_list:
                label = f"{name}-warmup"
                command, env = contender_command(name, warm_manifest, work / f"out-{label}", args, work)
                warm = run_contender(
                    label, command, env, work, work / f"out-{label}", warm_ids, emulator, None, 600
                )
                if name == "flow-adhoc":
                    first_adhoc = warm  # the first ad-hoc run: it started the local server
            args.profile = profile
            emulator.configure(latency_s=args.latency, jitter_s=args.jitter)
        servers = {"flow": server, "flow-adhoc": args.adhoc}
        for name in args.contender_list:
            runs: list[Measured] = []
            for index in range(args.repeat):
                run = "" if args.repeat == 1 else f"-{index + 1}"
                label = f"{name}{run}"
                dest = work / f"out-{label}"
                command, env = contender_command(name, manifest, dest, args, work, run=run)
                measured = run_contender(
                    label, command, env, work, dest, ids, emulator, servers.get(name), timeout_s
                )
                measured.name = name
                report_path = work / f"{label}-report.json"
                if report_path.exists():
                    measured.report = json.loads(report_path.read_text())
                raw = args.profile_prefix.with_suffix(".pyspy.txt")
                if name == "flow" and args.profile and args.pyspy and raw.exists():
                    measured.report["profile"] = pyspy_summary(raw)
                if name == "flow" and server is not None:
                    created = int(measured.report.get("task_runs_created", 10**9))  # unknown: until stable
                    run_ids = measured.report.get("flow_run_ids") or server.flow_runs_since(
                        measured.started_at
                    )
                    measured.history = settle_history(server, run_ids, created, args.history_settle)
                runs.append(measured)
            chosen = sorted(runs, key=lambda r: r.wall_s)[(len(runs) - 1) // 2]  # the median wall
            chosen.walls = [r.wall_s for r in runs]
            chosen.startups = [s for r in runs if (s := r.startup_s) is not None]
            results.append(chosen)
    finally:
        emulator.stop()
        if server is not None:
            server.stop()
        if "flow-adhoc" in args.contender_list:
            args.adhoc.stop()

    lines = [
        f"## Preset `{preset.name}`",  # record() replaces the section with this heading
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, code `{fingerprint.split()[1]}`: N={args.n}, C={args.c}, "
        f"L={args.latency:g} s ± {args.jitter:g} s, {mesh}",
        "",
        f"- Command: `uv run python bench/compare.py {shlex.join(argv)}`",
        f"- Machine: {machine()}",
        f"- Code measured: {fingerprint}"
        + (
            ""
            if code_fingerprint() == fingerprint
            else f" — CHANGED during the run, now {code_fingerprint()}"
        ),
        f"- Target of this preset: {preset.target}",
        f"- Ideal ceil(N/C)·L = {ideal:g} s; emulator account concurrency {args.c}, no faults, "
        f"seed {args.seed}"
        + (f"; the flow's --concurrency {args.flow_concurrency}" if args.flow_concurrency else "")
        + (
            f"; the flow's --queue-headroom {args.flow_queue_headroom}"
            if args.flow_queue_headroom is not None
            else "; the flow's queue headroom: its default (half of its concurrency, rounded up)"
        ),
        f"- Poll policy in tasks.client (the flow may schedule its polls otherwise: see 'accepted -> "
        f"1st poll' below): {describe_policy(flow_policy)}; baseline: "
        f"{describe_policy(args.baseline_policy)}"
        + (
            ", scheduled by tasks.polling.PollSchedule like the client's (`--baseline-poll client`: "
            "cold-start scouts, then polls planned from the durations seen)"
            if args.baseline_poll == "client"
            else ""
        )
        + "; SDK: fixed 1 s (its default)",
        f"- Flow env overrides: {args.flow_env or 'none'}",
        "- Warm start: "
        + ("cold imports (PYTHONDONTWRITEBYTECODE kept)" if args.cold_imports else "bytecode cached")
        + ("" if args.no_warmup else ", each contender ran once on 2 other images first (not measured)"),
        *(
            ["- Profiled (`--profile`): the flow row's wall, CPU and RSS include the profiler's cost"]
            if args.profile
            else []
        ),
        *(
            [
                f"- Repeats: {args.repeat} runs per contender, one after the other (fresh output and "
                "result store each); the main table shows each contender's median-wall run"
            ]
            if args.repeat > 1
            else []
        ),
        *(
            [
                f"- The first ad-hoc run (the warm-up, 2 images at L=0.1 s) started the local Prefect "
                f"server: wall {first_adhoc.wall_s:.1f} s, spawn -> first submit "
                f"{fmt(first_adhoc.startup_s, 1)} s; the runs measured found it running"
            ]
            if first_adhoc is not None
            else []
        ),
        "",
        *table(results, args),
        "",
        *repeat_table(results, args),
        *([""] if args.repeat > 1 else []),
        "Targets (printed, not asserted):",
        "",
        *[f"- {t}" for t in targets(results, args)],
        "",
        "Details:",
        "",
        *details(results, args, server),
        "",
        *profile_lines(results),
    ]
    print("\n" + "\n".join(lines), flush=True)
    if not args.no_record:
        record(lines, args.results)
        print(f"(section {lines[0][3:]} written to {args.results})")
    return 0 if all(r.landed == args.n for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_flow"]:
        return flow_wrapper(argv[1:])
    args = parse_args(argv)
    global COLD_IMPORTS
    COLD_IMPORTS = args.cold_imports
    work = Path(tempfile.mkdtemp(prefix="hy3d-compare-"))
    code = 1
    try:
        code = bench(args, work, argv)
    finally:
        if args.keep or code != 0:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
