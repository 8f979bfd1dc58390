"""What saved durations are worth: a run into an output that an earlier run filled.

    python bench/warmstart.py [--n 100] [--c 100] [--latency 30] [--repeat 2]

One emulator (L ± L/10, account concurrency C) and one Prefect server, as in ``compare.py``. A first
run fills DEST and saves its durations (``DEST/.hy3d/durations.json``). Then batches of N new images
go into the same DEST, alternately with the saved durations (warm: a nightly run) and with the file
removed (cold: a first run, or a flow without saved durations). Printed side by side, as
``hy3d run`` experiences them: wall time from spawn to exit, polls per prediction and notice lag,
from the emulator's counters.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import (
    EMULATOR_KEY,
    Emulator,
    PrefectServer,
    clean_env,
    group_lags_and_polls,
    make_inputs,
    prefect_base_env,
)

ROOT = Path(__file__).resolve().parents[1]


def run_batch(
    work: Path, name: str, first: int, args: argparse.Namespace, emulator: Emulator, server: PrefectServer
) -> dict[str, float]:
    manifest = make_inputs(work / name, args.n, first)
    env = clean_env()
    env.update(prefect_base_env(work / "client-home"))
    env.update(
        {
            "WAVESPEED_API_KEY": EMULATOR_KEY,
            "WAVESPEED_BASE_URL": emulator.url,
            "PREFECT_API_URL": server.api_url,
            "PREFECT_LOCAL_STORAGE_PATH": str(work / f"results-{name}"),
        }
    )
    command = [sys.executable, "-m", "hy3d.cli", "run", str(manifest), "--output", str(work / "dest")]
    command += ["--concurrency", str(args.c)]
    emulator.reset()
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{name}: hy3d run exited {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    stats = emulator.stats()
    ids = list((stats.get("polls_by_prediction") or {}).keys() | (stats.get("completed_at") or {}).keys())
    lags, polls = group_lags_and_polls(stats, ids)
    return {"wall": wall, "polls": polls, "lag": statistics.mean(lags), "lag_max": max(lags)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per batch (100)")
    parser.add_argument("--c", type=int, default=100, help="concurrency, the flow's and the account's (100)")
    parser.add_argument("--latency", type=float, default=30.0, help="L, seconds per prediction (30)")
    parser.add_argument("--repeat", type=int, default=2, help="warm and cold batches each (2)")
    args = parser.parse_args()
    args.jitter, args.seed, args.mesh_bytes = args.latency / 10, 7, 0
    with tempfile.TemporaryDirectory(prefix="hy3d-warmstart-") as folder:
        work = Path(folder)
        emulator = Emulator(work, args)
        server = PrefectServer(work)
        args.emulator_url = emulator.url
        try:
            run_batch(work, "fill", 0, args, emulator, server)
            rows: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
            for index in range(args.repeat):
                for kind in ("warm", "cold"):
                    if kind == "cold":
                        (work / "dest" / ".hy3d" / "durations.json").unlink()
                    first = (1 + 2 * index + (kind == "cold")) * args.n
                    rows[kind].append(run_batch(work, f"{kind}-{index}", first, args, emulator, server))
        finally:
            server.stop()
            emulator.stop()
    print(f"N={args.n}, C={args.c}, L={args.latency:g} s ± {args.jitter:g} s; {args.repeat} batches each\n")
    print("| start | wall s | polls/pred | lag mean s | lag max s |\n|---|---|---|---|---|")
    for kind, results in rows.items():
        cells = [
            " / ".join(f"{result[key]:.2f}" for result in results)
            for key in ("wall", "polls", "lag", "lag_max")
        ]
        label = "warm (saved durations)" if kind == "warm" else "cold (file removed)"
        print(f"| {label} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
