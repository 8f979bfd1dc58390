"""What ``hy3d run`` shows while it runs and at the end (issue 20, part 5), and the words it uses for
an output it cannot write (part 6).

Real ``hy3d`` processes against the emulator: through a pipe (plain progress lines, the summary as
aligned text, no per-task-run lines unless --verbose), on a pseudo-terminal (the rich bar and table),
and against outputs that are a file, a folder it may not write, a read-only and a full file system
(tmpfs mounts: the tests run as root; skipped where mounting is not allowed). The pieces (the
counting, the lines' pace, the log filter, the error words) are also tested on their own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import pty
import re
import shutil
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from emulator import EmulatorServer
from flows.progress import ItemOutcome, ItemStatus, NoProgress, RunSummary, current_progress, reporting_to
from hy3d.progress import (
    NoTaskTracebacks,
    PlainProgress,
    QuietRunLogs,
    Tally,
    plain_table,
    print_summary,
    rich_table,
    short_duration,
    use_terminal,
)
from tasks.storage import storage_error_message
from tests.conftest import cli_command, client_env, run_cli, run_process

PROGRESS_LINE = re.compile(
    r"^(\d+)/(\d+) done, (\d+) failed(, \d+ skipped)?, \$\d+\.\d\d spent(, ETA (\S+))?$"
)


def outcome(status: ItemStatus, row: int = 1) -> ItemOutcome:
    return ItemOutcome(id=f"item-{row}", row=row, status=status, source="x.png")


def write_manifest(samples: Path) -> Path:
    manifest = samples / "manifest.csv"
    manifest.write_text(
        "id,image\nred-ball,red-ball.png\nblue-mug,blue-mug.png\n"
        "gold-star,gold-star.png\ngreen-pyramid,green-pyramid.jpg\n"
    )
    return manifest


def progress_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if PROGRESS_LINE.match(line)]


# -- the pieces ------------------------------------------------------------------------------------


def test_tally_counts_failures_and_estimates_from_items_that_worked() -> None:
    tally = Tally(10, lambda: 0.24)
    tally.started -= 60  # a minute in
    for row, status in enumerate([ItemStatus.already_done] * 4 + [ItemStatus.completed, ItemStatus.failed]):
        tally.record(outcome(status, row))
    assert (tally.done, tally.failed) == (6, 1)
    # 2 items worked in 60 s (the 4 already done took no time): 4 left, 2 minutes.
    assert tally.eta_s(now=tally.started + 60) == pytest.approx(120)
    assert tally.line().startswith("6/10 done, 1 failed, $0.24 spent, ETA ")
    assert Tally(3, lambda: None).line() == "0/3 done, 0 failed, ETA ?"
    stopped = Tally(3, lambda: None)
    for row in range(3):  # a stopped run's items were not attempted: not failures
        stopped.record(outcome(ItemStatus.skipped, row))
    assert stopped.line() == "3/3 done, 0 failed, 3 skipped"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45.4, "45s"), (89, "89s"), (180, "3m"), (3000, "50m"), (7500, "2h05m")]
)
def test_short_duration(seconds: float, text: str) -> None:
    assert short_duration(seconds) == text


def test_plain_lines_every_n_items_and_a_last_one() -> None:
    out = io.StringIO()
    plain = PlainProgress(out, interval_s=3600, every=2)
    plain.start(5, lambda: 0.1)
    for row in range(5):
        plain.item_finished(outcome(ItemStatus.failed if row == 2 else ItemStatus.completed, row))
    plain.finish()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["2/5 done", "4/5 done", "5/5 done"]
    assert lines[-1] == "5/5 done, 1 failed, $0.10 spent"


def test_plain_lines_every_interval_while_nothing_finishes() -> None:
    out = io.StringIO()
    plain = PlainProgress(out, interval_s=0.2)
    plain.start(400, lambda: 0.0)
    time.sleep(0.9)
    plain.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2
    assert set(lines) == {"0/400 done, 0 failed, $0.00 spent, ETA ?"}


def test_force_terminal_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.delenv("HY3D_FORCE_TERMINAL", raising=False)
    assert not use_terminal(pipe)
    monkeypatch.setenv("HY3D_FORCE_TERMINAL", "1")
    assert use_terminal(pipe)
    monkeypatch.setenv("HY3D_FORCE_TERMINAL", "0")
    assert not use_terminal(pipe)


def test_a_listener_that_raises_is_switched_off_not_the_run(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Broken(NoProgress):
        def item_finished(self, outcome: ItemOutcome) -> None:
            calls.append(outcome.id)
            raise RuntimeError("terminal went away")

    with reporting_to(Broken()):
        listener = current_progress()
        listener.start(2, lambda: None)
        listener.item_finished(outcome(ItemStatus.completed, 1))
        listener.item_finished(outcome(ItemStatus.completed, 2))
        listener.finish()
    assert calls == ["item-1"]
    assert "progress display switched off: RuntimeError: terminal went away" in caplog.text
    assert isinstance(current_progress(), type(listener))  # a fresh guard around the no-op again


def record(name: str, level: int, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord(name, level, __file__, 1, "message", None, exc_info)


def test_console_filter_keeps_warnings_and_other_loggers() -> None:
    quiet = QuietRunLogs()
    assert not quiet.filter(record("prefect.task_runs", logging.INFO))
    assert not quiet.filter(record("prefect.flow_runs", logging.INFO))
    assert quiet.filter(record("prefect.flow_runs", logging.WARNING))
    assert quiet.filter(record("prefect.task_runs", logging.ERROR))
    assert quiet.filter(record("prefect", logging.INFO))  # "Starting temporary server…"
    finished = record("prefect.flow_runs", logging.ERROR)
    finished.msg = "Finished in state Failed('0/4 meshes landed (4 failed)')"
    assert not quiet.filter(finished)  # the summary says it


def test_task_run_tracebacks_are_left_out_of_the_console_only() -> None:
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as exc:
        failed = record("prefect.task_runs", logging.ERROR, exc)
        crashed = record("prefect.flow_runs", logging.ERROR, exc)
    formatter = NoTaskTracebacks(logging.Formatter("%(message)s"))
    assert formatter.format(failed) == "message"
    assert failed.exc_info is not None  # the API handler still gets it
    assert "Traceback" in formatter.format(crashed)  # a flow's crash keeps its traceback


def built_summary(items: list[ItemOutcome], output: str, **cost: float) -> RunSummary:
    """The summary of a run of model "m" over "m.csv" (no flow run, no row problems)."""
    return RunSummary.build(
        manifest="m.csv",
        output=output,
        model="m",
        flow_run_id=None,
        started_at="2026-01-01T00:00:00Z",
        items=items,
        problems=[],
        **cost,
    )


def summary(**changes: object) -> RunSummary:
    items = [
        outcome(ItemStatus.completed, 1),
        outcome(ItemStatus.completed, 2),
        outcome(ItemStatus.failed, 3),
    ]
    built = built_summary(items, "/data/out", cost_usd=0.06, refund_usd=0.02)
    built.summary_url, built.gallery_url = "/data/out/runs/x.json", "file:///data/out/index.html"
    return built.model_copy(update=changes)


def test_summary_as_aligned_text() -> None:
    assert plain_table(summary()) == [
        "2/3 meshes landed (2 completed, 1 failed)",
        "  completed  2",
        "  failed     1",
        "  cost       $0.0600 billed for new predictions; $0.0200 of it is refunded within 3 hours "
        "(failed predictions)",
        "  summary    /data/out/runs/x.json",
        "  gallery    file:///data/out/index.html",
    ]
    out = io.StringIO()
    print_summary(summary(), terminal=False, out=out)
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("  item-3: failed")
    assert printed[1].startswith("- 1 prediction(s) failed on WaveSpeed")
    assert printed[2:] == plain_table(summary())


def test_deliverables_not_made_are_listed_and_counted() -> None:
    made = outcome(ItemStatus.completed, 1).model_copy(
        update={"deliverables": {"usdz": {"error": "usd-core is not installed"}, "stl": {"path": "mesh.stl"}}}
    )
    built = built_summary([made], "/o")
    out = io.StringIO()
    print_summary(built, terminal=False, out=out)
    printed = out.getvalue().splitlines()
    assert "  item-1: usdz not made: usd-core is not installed" in printed
    assert "  deliverables  1 not made (meshes kept)" in printed


def test_summary_as_a_rich_table() -> None:
    console = Console(record=True, width=100, force_terminal=True)
    console.print(rich_table(summary()))
    text = console.export_text()
    assert "2/3 meshes landed" in text
    assert "╭" in text and "│ completed │ 2" in text
    assert "$0.0600 billed for new predictions; $0.0200 of it is refunded" in text
    assert "file:///data/out/index.html" in text


@pytest.mark.parametrize(
    ("code", "filename", "words"),
    [
        (errno.EACCES, "/data/out/x", "cannot write to /data/out: permission denied"),
        (errno.EPERM, "/data/out/x", "cannot write to /data/out: permission denied"),
        (errno.EROFS, "/data/out/x", "cannot write to /data/out: read-only file system"),
        (errno.ENOSPC, "/data/out/.hy3d/staging/a.partial", "no space left on the device holding /data/out"),
        (errno.EDQUOT, "/data/out/a", "disk quota exceeded on /data/out"),
        (errno.EIO, "/data/out/a", None),
    ],
)
def test_storage_error_words(code: int, filename: str, words: str | None) -> None:
    assert storage_error_message(OSError(code, os.strerror(code), filename), "/data/out") == words


def test_storage_error_words_for_files_in_the_way(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    exists = FileExistsError(errno.EEXIST, "File exists", str(a_file))
    assert storage_error_message(exists, str(a_file)) == f"{a_file} is a file, not a folder"
    under = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(a_file / "sub" / "out"))
    assert storage_error_message(under, str(a_file / "sub")) == (
        f"cannot write to {a_file / 'sub'}: {a_file} is a file, not a folder"
    )
    # os.replace(staged, DEST/ball/mesh.glb) where DEST/ball is a file: the destination is named.
    staged = tmp_path / "staged.partial"
    staged.write_text("x")
    rename = NotADirectoryError(errno.ENOTDIR, "Not a directory")
    rename.filename, rename.filename2 = str(staged), str(a_file / "mesh.glb")
    assert (
        storage_error_message(rename, str(tmp_path))
        == f"cannot write to {tmp_path}: {a_file} is a file, not a folder"
    )
    assert storage_error_message(ValueError("no"), "/x") is None


def test_a_full_temporary_folder_is_named_for_object_stores() -> None:
    import tempfile

    full = OSError(
        errno.ENOSPC, "No space left on device", os.path.join(tempfile.gettempdir(), "hy3d-x.partial")
    )
    assert storage_error_message(full, "s3://bucket/meshes") == (
        f"no space left on the device holding the temporary folder {tempfile.gettempdir()} "
        "(downloads for s3://bucket/meshes are staged there)"
    )


# -- real runs -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_piped_run_prints_plain_progress_and_a_table_and_no_task_run_lines(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    emulator.config.latency_s = 1.5  # long enough for a few lines on the clock
    env = {**client_env(emulator), "HY3D_PROGRESS_INTERVAL": "0.5"}
    env.pop("HY3D_FORCE_TERMINAL", None)

    result = run_cli(["run", str(write_manifest(samples)), "-o", str(tmp_path / "out")], env, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = progress_lines(result.stdout)
    assert len(lines) >= 4, result.stdout
    assert any(line.endswith("ETA ?") for line in lines)  # on the clock, before the first item
    assert any(re.search(r"ETA \d+s$", line) for line in lines)  # after it
    assert re.fullmatch(r"4/4 done, 0 failed, \$0\.08 spent", lines[-1]), lines
    assert "\x1b[" not in result.stdout  # no colour, no cursor moves
    table = result.stdout.split(lines[-1] + "\n", 1)[1].splitlines()
    assert table[0] == "4/4 meshes landed (4 completed)"
    assert table[1] == "  completed  4"
    assert table[2] == "  cost       $0.0800 billed for new predictions"
    assert re.fullmatch(rf"  summary    {re.escape(str(tmp_path / 'out' / 'runs'))}/\S+\.json", table[3])
    assert table[4] == f"  gallery    file://{tmp_path / 'out' / 'index.html'}"
    assert "Finished in state" not in result.stderr
    assert "Task run" not in result.stderr
    assert "red-ball: completed" not in result.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_verbose_brings_back_the_run_log_lines(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    result = run_cli(
        ["run", str(write_manifest(samples)), "-o", str(tmp_path / "out"), "--verbose"],
        client_env(emulator),
        tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Task run 'submit-" in result.stderr
    assert "Finished in state Completed()" in result.stderr
    assert "red-ball: completed" in result.stderr
    assert progress_lines(result.stdout)[-1].startswith("4/4 done, 0 failed")


@pytest.mark.usefixtures("prefect_harness")
def test_failures_show_as_warnings_and_in_the_counts(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    emulator.config.failure_rate, emulator.config.failure_codes = 1.0, (5003,)
    result = run_cli(
        ["run", str(write_manifest(samples)), "-o", str(tmp_path / "out")], client_env(emulator), tmp_path
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert progress_lines(result.stdout)[-1].startswith("4/4 done, 4 failed, ")
    assert re.search(r"^  failed +4$", result.stdout, re.MULTILINE), result.stdout
    assert "red-ball: failed" in result.stderr  # the flow's WARNING line stays
    assert "Finished in state" not in result.stderr  # the ERROR one the summary says better goes
    assert "Traceback" not in result.stderr


def run_on_a_terminal(args: list[str], env: dict[str, str], cwd: Path, columns: int = 120) -> tuple[int, str]:
    """Run ``hy3d`` with stdout and stderr on a pseudo-terminal; return its exit code and all it
    wrote there (escape sequences included)."""
    command, full_env = cli_command(args, env)
    full_env.pop("HY3D_FORCE_TERMINAL", None)
    full_env["TERM"] = "xterm-256color"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(command, env=full_env, cwd=cwd, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        code = process.wait(timeout=300)
        reader.join(10)
    finally:
        with contextlib.suppress(OSError):
            os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.usefixtures("prefect_harness")
def test_terminal_run_draws_a_bar_and_a_table(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    emulator.config.latency_s = 1.0
    code, screen = run_on_a_terminal(
        ["run", str(write_manifest(samples)), "-o", str(tmp_path / "out")], client_env(emulator), tmp_path
    )

    assert code == 0, screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "━" in plain  # the bar
    assert re.search(r"meshes .*━.* 4/4 done 0 failed \$0\.08 spent", plain), plain
    assert re.search(r"\d/4 done 0 failed \$0\.\d\d spent ETA \S+", plain), plain  # on its way
    assert "╭" in plain and "│ completed │ 4" in plain  # the table
    assert "$0.0800 billed for new predictions" in plain
    assert "Finished in state" not in plain
    assert "Traceback" not in plain


# -- outputs it cannot write -----------------------------------------------------------------------


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"hy3d: error: {expected}"]
    assert result.stdout == ""


@pytest.mark.usefixtures("prefect_harness")
def test_an_output_that_is_a_file_is_one_line(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest, env = str(write_manifest(samples)), client_env(emulator)
    a_file = tmp_path / "meshes.txt"
    a_file.write_text("not a folder")

    assert_one_line(
        run_cli(["run", manifest, "-o", str(a_file)], env, tmp_path), f"{a_file} is a file, not a folder"
    )
    under = a_file / "meshes"
    assert_one_line(
        run_cli(["run", manifest, "-o", str(under)], env, tmp_path),
        f"cannot write to {under}: {a_file} is a file, not a folder",
    )
    assert sum(emulator.stats.requests.values()) == 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_folder_it_may_not_write_is_one_line(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    """Root may write anywhere: the process runs as root without CAP_DAC_OVERRIDE (setpriv), so the
    folder's mode bits apply to it as to anyone."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    probe = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "touch", str(locked / "x")],
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0 or b"Permission denied" not in probe.stderr:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {probe.stderr!r}")
    command, env = cli_command(
        ["run", str(write_manifest(samples)), "-o", str(locked / "out")], client_env(emulator)
    )
    result = run_process(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command], env, tmp_path, timeout_s=120
    )
    assert_one_line(result, f"cannot write to {locked / 'out'}: permission denied")


@contextlib.contextmanager
def tmpfs(path: Path, *options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (made) for the block; the test is skipped where mount is refused."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.mark.usefixtures("prefect_harness")
def test_a_read_only_file_system_is_one_line(emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro", "size=64k") as read_only:
        result = run_cli(
            ["run", str(write_manifest(samples)), "-o", str(read_only / "out")],
            client_env(emulator),
            tmp_path,
        )
    assert_one_line(result, f"cannot write to {read_only / 'out'}: read-only file system")


@pytest.mark.usefixtures("prefect_harness")
def test_a_full_disk_is_one_line_up_front_and_an_item_error_mid_run(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest, env = str(write_manifest(samples)), client_env(emulator)
    with tmpfs(tmp_path / "small", "size=256k") as small:
        # Full before the run: nothing is paid for.
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as handle:
            handle.write(b"\0" * 512 * 1024)
        assert_one_line(
            run_cli(["run", manifest, "-o", str(small / "out")], env, tmp_path),
            f"no space left on the device holding {small / 'out'}",
        )
        assert emulator.stats.submits_received == 0

        # Room to start, not for the meshes (1 MB each): every item says so in words.
        filler.unlink()
        emulator.config.mesh_bytes_target = 1_000_000
        result = run_cli(["run", manifest, "-o", str(small / "out")], env, tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    for item in ("red-ball", "blue-mug", "gold-star", "green-pyramid"):
        assert (
            f"  {item}: error: no space left on the device holding {small / 'out'}"
            in result.stdout.splitlines()
        )
    assert "Errno" not in result.stdout
    assert "Traceback" not in result.stderr
    assert re.search(r"^  error +4$", result.stdout, re.MULTILINE), result.stdout
