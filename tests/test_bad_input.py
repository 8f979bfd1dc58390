"""Bad input of every kind: each is reported with its row and field before anything is paid for.

Row-level problems (a bad id, a bad image value, an image outside WaveSpeed's limits) become ``invalid``
items naming the manifest row and field, while a good row in the same manifest still lands. Whole-run
configuration problems (empty manifest, no ``image`` column, not UTF-8, unknown model, bad output, no
or wrong API key, an API root without a scheme or that cannot be reached) fail the run with one clear
message — through the flow and through the CLI — without a single submit, and (except the wrong key,
which costs exactly one 401) without any request at all.
"""

from __future__ import annotations

import csv
import http.server
import io
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image, ImageDraw

from emulator import EmulatorServer
from hy3d.cli import main
from tasks.errors import (
    APIUnreachableError,
    AuthenticationError,
    InvalidSettingsError,
    ManifestError,
    MissingAPIKeyError,
    OutputNotWritableError,
    UnknownModelError,
)
from tests.conftest import closed_port, run_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")

BAD_ROW = 3  # line 1 is the header, line 2 the good row


# --------------------------------------------------------------------------------------------------
# Images


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def good_png() -> bytes:
    """A valid 160 px PNG that differs from test to test (submits are cached by content)."""
    red, green, blue = os.urandom(3)
    image = Image.new("RGB", (160, 160), (250, 250, 250))
    ImageDraw.Draw(image).ellipse((20, 20, 140, 140), fill=(red, green, blue // 2))
    return encode(image)


def plain(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", size, (200, 40, 40)), fmt)


def oversized_png(total_bytes: int) -> bytes:
    """A valid 200 px PNG padded with trailing bytes (Pillow still reads its header)."""
    data = plain((200, 200))
    return data + b"\0" * (total_bytes - len(data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression-bomb sized image)."""
    data = bytearray(plain((200, 200)))
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


# --------------------------------------------------------------------------------------------------
# Manifests and outcomes


def write_manifest(folder: Path, rows: list[tuple[str, str]], name: str = "manifest.csv") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "image"])
    writer.writerows(rows)
    path = folder / name
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The manifest's folder, holding a fresh good image ``good.png``."""
    path = tmp_path / "photos"
    path.mkdir()
    (path / "good.png").write_bytes(good_png())
    return path


@pytest.fixture
def output(tmp_path: Path) -> Path:
    return tmp_path / "out"


def assert_good_landed(output: Path, emulator: EmulatorServer, folder: Path) -> None:
    """Only the good row was uploaded, submitted (once) and landed; nothing was paid for the rest."""
    assert (output / "good" / "mesh.glb").is_file()
    assert (output / "good" / "metadata.json").is_file()
    stats = emulator.stats
    assert stats.submits_for_image_bytes((folder / "good.png").read_bytes()) == 1
    assert stats.submits_received == 1
    assert stats.submits_accepted == 1
    assert stats.total_uploads == 1


def assert_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err


# --------------------------------------------------------------------------------------------------
# Row-level problems: reported with row and field, the good row lands


@dataclass(frozen=True)
class RowCase:
    field: str
    expected: tuple[str, ...]
    row: Callable[[Path, Path], tuple[str, str]]
    """(manifest folder, a folder outside it) -> the bad row's (id, image), writing any files it needs."""


def _image(name: str, data: bytes) -> Callable[[Path, Path], tuple[str, str]]:
    def make(folder: Path, outside: Path) -> tuple[str, str]:
        (folder / name).write_bytes(data)
        return "bad", name

    return make


def _id(item_id: str) -> Callable[[Path, Path], tuple[str, str]]:
    def make(folder: Path, outside: Path) -> tuple[str, str]:
        (folder / "other.png").write_bytes(plain((300, 300)))
        return item_id, "other.png"

    return make


def _file_url_outside(folder: Path, outside: Path) -> tuple[str, str]:
    secret = outside / "secret.png"
    secret.write_bytes(plain((300, 300)))  # a real image: refused for where it is, not what it is
    return "bad", secret.as_uri()


def _emulator_url(path: str) -> Callable[[Path, Path], tuple[str, str]]:
    """A row whose image is a URL on the test's emulator (its fixture sets WAVESPEED_BASE_URL)."""

    def make(folder: Path, outside: Path) -> tuple[str, str]:
        return "bad", os.environ["WAVESPEED_BASE_URL"] + path

    return make


ROW_CASES: dict[str, RowCase] = {
    "duplicate-id": RowCase("id", ("duplicate id 'good'", "row 2 already uses it"), _id("good")),
    "id-with-slash": RowCase("id", ("invalid id 'a/b'", "must not contain '/'"), _id("a/b")),
    "id-with-backslash": RowCase("id", ("invalid id 'a\\\\b'", "must not contain"), _id("a\\b")),
    "id-dotdot": RowCase("id", ("invalid id '..'", "must not contain '..'"), _id("..")),
    "id-with-nul": RowCase("id", ("invalid id 'a\\x00b'", "control characters", "U+0000"), _id("a\0b")),
    "id-over-200-chars": RowCase("id", ("must be at most 200 characters (it has 201)",), _id("x" * 201)),
    "ftp-url": RowCase(
        "image",
        ("unsupported scheme 'ftp:'", "ftp://example.com/a.png"),
        lambda folder, outside: ("bad", "ftp://example.com/a.png"),
    ),
    "javascript-url": RowCase(
        "image",
        ("unsupported scheme 'javascript:'",),
        lambda folder, outside: ("bad", "javascript:alert(1)"),
    ),
    "file-url-outside-tree": RowCase(
        "image", ("file: URL points outside the manifest's folder", "secret.png"), _file_url_outside
    ),
    "missing-file": RowCase(
        "image", ("file does not exist", "missing.png"), lambda folder, outside: ("bad", "missing.png")
    ),
    "not-an-image": RowCase(
        "image", ("not a readable image", "notes.png"), _image("notes.png", b"shopping list: milk\n")
    ),
    "not-an-image-extension": RowCase(
        "image", ("has extension '.txt'", "allowed image extensions"), _image("notes.txt", b"milk\n")
    ),
    "smaller-than-128px": RowCase(
        "image", ("image is 64x64 px", "128 to 5000 px"), _image("tiny.png", plain((64, 64)))
    ),
    "larger-than-5000px": RowCase(
        "image", ("image is 5001x130 px", "128 to 5000 px"), _image("wide.png", plain((5001, 130)))
    ),
    "decompression-bomb-header": RowCase(
        "image",
        ("far larger than 5000x5000 px", "bomb.png"),
        _image("bomb.png", png_claiming(20_000, 20_000)),
    ),
    "over-8mb": RowCase(
        "image",
        ("image is 9.0 MB", "at most 8 MB", "huge.png"),
        _image("huge.png", oversized_png(9_000_000)),
    ),
    "gif-named-png": RowCase(
        "image", ("GIF images are not accepted", "gif.png"), _image("gif.png", plain((200, 200), "GIF"))
    ),
    "bmp-named-png": RowCase(
        "image", ("BMP images are not accepted", "bmp.png"), _image("bmp.png", plain((200, 200), "BMP"))
    ),
    # Checked with a HEAD before paying: WaveSpeed would take the submit, bill it and fail it (1402).
    "image-url-404": RowCase(
        "image",
        ("http://127.0.0.1:", "/cdn/media/no-such-key.png answered HTTP 404"),
        _emulator_url("/cdn/media/no-such-key.png"),
    ),
}


@pytest.mark.parametrize("case", list(ROW_CASES.values()), ids=list(ROW_CASES))
def test_bad_row_is_reported_and_the_good_row_lands(
    case: RowCase,
    emulator: EmulatorServer,
    folder: Path,
    output: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    manifest = write_manifest(folder, [("good", "good.png"), case.row(folder, outside)])

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_failed()
    assert (summary.total, summary.landed, summary.failed) == (2, 1, 1)
    assert summary.counts == {"completed": 1, "invalid": 1}
    [bad] = [item for item in summary.items if item.status == "invalid"]
    assert bad.row == BAD_ROW
    assert bad.error is not None
    assert bad.error.startswith(f"manifest.csv row {BAD_ROW}, field {case.field!r}: "), bad.error
    for expected in case.expected:
        assert expected in bad.error, bad.error
    assert_good_landed(output, emulator, folder)
    # Nothing was written for the bad row (not even under a traversing id); ".hy3d" is run state.
    written = sorted(path.name for path in output.iterdir() if path.name != ".hy3d")
    assert written == ["_gallery", "good", "index.html", "runs"]
    assert not (tmp_path / "bad").exists() and not (output.parent / "mesh.glb").exists()
    assert_no_traceback(capfd)


def test_bad_rows_in_jsonl_name_row_and_field(
    emulator: EmulatorServer, folder: Path, output: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """JSONL rows are numbered by line too; a wrongly typed value names its key. The unusable id of
    row 1 must not fall back to the file name "good" and so make the good row 4 a "duplicate"."""
    manifest = folder / "manifest.jsonl"
    manifest.write_text(
        '{"id": ["x"], "image": "good.png"}\n'
        '{"id": "noimage"}\n'
        "not json\n"
        '{"id": "good", "image": "good.png"}\n',
        encoding="utf-8",
    )

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_failed()
    invalid = [(item.row, item.error) for item in summary.items if item.status == "invalid"]
    assert invalid == [
        (1, "manifest.jsonl row 1, field 'id': must be a string or an integer, not a list"),
        (2, "manifest.jsonl row 2, field 'image': is missing; every line needs an \"image\" key"),
        (3, "manifest.jsonl row 3: is not valid JSON (Expecting value at column 1)"),
    ]
    assert (summary.landed, summary.failed) == (1, 3)
    assert_good_landed(output, emulator, folder)
    assert_no_traceback(capfd)


# --------------------------------------------------------------------------------------------------
# Image URLs: asked for their headers before paying


class _PickyServer(http.server.BaseHTTPRequestHandler):
    """Refuses HEAD (405), as some servers do; a GET gets /ok.png (the first byte for a Range),
    503 for /busy.png, 404 for anything else. Remembers (method, path, Range) of every request."""

    image: ClassVar[bytes] = b""
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def do_HEAD(self) -> None:
        self.seen.append(("HEAD", self.path, self.headers.get("Range")))
        self._answer(405, b"")

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        self.seen.append(("GET", self.path, wanted))
        if self.path == "/ok.png":
            self._answer(206, self.image[:1]) if wanted == "bytes=0-0" else self._answer(200, self.image)
        else:
            self._answer(503 if self.path == "/busy.png" else 404, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def picky_server(folder: Path) -> Iterator[str]:
    _PickyServer.image, _PickyServer.seen = (folder / "good.png").read_bytes(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PickyServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_image_urls_are_checked_before_paying(
    emulator: EmulatorServer, picky_server: str, folder: Path, output: Path
) -> None:
    """A 4xx rejects the row (after a 1-byte GET where HEAD is refused); a 5xx or no answer at all only
    warns, since the URL may be reachable from WaveSpeed alone: those rows are submitted."""
    unreachable = f"http://127.0.0.1:{closed_port()}/x.png"
    manifest = write_manifest(
        folder,
        [
            ("ok", f"{picky_server}/ok.png"),
            ("gone", f"{picky_server}/gone.png"),
            ("busy", f"{picky_server}/busy.png"),
            ("nowhere", unreachable),
            ("again", f"{picky_server}/gone.png"),
        ],
    )

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_failed()
    status = {item.id: item.status.value for item in summary.items}
    assert status == {
        "ok": "completed",
        "gone": "invalid",
        "busy": "failed",
        "nowhere": "failed",
        "again": "invalid",
    }
    errors = {item.id: item.error for item in summary.items}
    assert errors["gone"] == f"manifest.csv row 3, field 'image': {picky_server}/gone.png answered HTTP 404"
    assert errors["again"] == f"manifest.csv row 6, field 'image': {picky_server}/gone.png answered HTTP 404"
    [busy, nowhere] = summary.problems
    assert busy.startswith(
        f"manifest.csv row 4, field 'image': could not check {picky_server}/busy.png (HTTP 503)"
    )
    assert nowhere.startswith(
        f"manifest.csv row 5, field 'image': could not check {unreachable} (ConnectError"
    )
    assert "WAVESPEED_CHECK_IMAGE_URLS=false" in busy
    # Each distinct URL asked once: HEAD, refused, then a 1-byte GET.
    checks = [request for request in _PickyServer.seen if request[0] == "HEAD" or request[2]]
    assert sorted(checks) == sorted(
        [
            (method, path, rng)
            for path in ("/ok.png", "/gone.png", "/busy.png")
            for method, rng in (("HEAD", None), ("GET", "bytes=0-0"))
        ]
    )
    assert emulator.stats.submits_for_url(f"{picky_server}/gone.png") == 0
    assert emulator.stats.submits_accepted == 3  # ok, busy, nowhere


# --------------------------------------------------------------------------------------------------
# Accepted oddities: the run lands


def test_unknown_extra_column_is_a_warning_and_the_run_lands(
    emulator: EmulatorServer, folder: Path, output: Path
) -> None:
    manifest = folder / "manifest.csv"
    manifest.write_text("id,image,colour\ngood,good.png,red\n", encoding="utf-8")

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_completed(), state.message
    assert summary.problems == [
        "manifest.csv row 1, field 'colour': unknown column 'colour' (expected: image, id)"
    ]
    assert_good_landed(output, emulator, folder)


def test_utf8_bom_is_accepted(emulator: EmulatorServer, folder: Path, output: Path) -> None:
    manifest = folder / "manifest.csv"
    manifest.write_bytes(b"\xef\xbb\xbfid,image\r\ngood,good.png\r\n")  # as Excel saves "CSV UTF-8"

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_completed(), state.message
    assert (summary.landed, summary.failed, summary.problems) == (1, 0, [])
    assert summary.items[0].id == "good"  # not "\ufeffid" mistaken for a column
    assert_good_landed(output, emulator, folder)


@pytest.mark.parametrize("kind", ["csv", "txt"])
def test_blank_and_comment_lines_are_skipped(
    kind: str, emulator: EmulatorServer, folder: Path, output: Path
) -> None:
    if kind == "csv":
        manifest = folder / "manifest.csv"
        manifest.write_text("# meshes for the shop\n\nid,image\n\n# the one below\ngood,good.png\n,\n\n")
        expected_row = 6
    else:
        manifest = folder / "images.txt"
        manifest.write_text("# meshes for the shop\n\n   \ngood.png\n# done\n\n")
        expected_row = 4

    state, summary = run_flow(manifest=str(manifest), output=str(output))

    assert state.is_completed(), state.message
    assert (summary.total, summary.landed, summary.problems) == (1, 1, [])
    assert summary.items[0].row == expected_row  # rows stay editor line numbers
    assert_good_landed(output, emulator, folder)


# --------------------------------------------------------------------------------------------------
# Whole-run configuration problems: Failed with one message, nothing requested


@dataclass(frozen=True)
class ConfigCase:
    error: type[Exception]
    expected: tuple[str, ...]
    setup: Callable[[Path, Path, pytest.MonkeyPatch], dict[str, Any]]
    """(manifest folder, tmp_path, monkeypatch) -> flow parameters (manifest, output, ...)."""
    requests: int = 0


def _params(manifest: Path, output: Path | str, **extra: Any) -> dict[str, Any]:
    return {"manifest": str(manifest), "output": str(output), **extra}


def _good_manifest(folder: Path) -> Path:
    return write_manifest(folder, [("good", "good.png")])


def _empty_manifest(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    (folder / "manifest.csv").write_bytes(b"")
    return _params(folder / "manifest.csv", tmp_path / "out")


def _no_image_column(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    (folder / "manifest.csv").write_text("id,picture\ngood,good.png\n")
    return _params(folder / "manifest.csv", tmp_path / "out")


def _not_utf8(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    (folder / "manifest.csv").write_bytes("id,image\ngood,good.png\ncafé,good.png\n".encode("latin-1"))
    return _params(folder / "manifest.csv", tmp_path / "out")


def _unknown_model(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return _params(_good_manifest(folder), tmp_path / "out", model="wavespeed-ai/hunyuan3d/v9-ultra")


def _unknown_protocol(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return _params(_good_manifest(folder), "nosuch://bucket/meshes")


def _output_under_a_file(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    (tmp_path / "a-file").write_text("not a folder")
    return _params(_good_manifest(folder), tmp_path / "a-file" / "out")


def _missing_key(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.delenv("WAVESPEED_API_KEY")
    monkeypatch.chdir(tmp_path)  # no stray .env supplies one
    return _params(_good_manifest(folder), tmp_path / "out")


def _wrong_key(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("WAVESPEED_API_KEY", "wsk-wrong-key")
    return _params(_good_manifest(folder), tmp_path / "out")


def _api_root(url: str) -> Callable[[Path, Path, pytest.MonkeyPatch], dict[str, Any]]:
    def setup(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        monkeypatch.setenv("WAVESPEED_BASE_URL", url.replace("{closed}", str(closed_port())))
        return _params(_good_manifest(folder), tmp_path / "out")

    return setup


CONFIG_CASES: dict[str, ConfigCase] = {
    "empty-manifest": ConfigCase(
        ManifestError, ("manifest.csv", "contains no images (it is empty)"), _empty_manifest
    ),
    "missing-image-column": ConfigCase(
        ManifestError, ("manifest.csv", "line 1", "has no 'image' column", "'picture'"), _no_image_column
    ),
    "not-utf8": ConfigCase(
        ManifestError,
        ("manifest.csv", "line 3", "is not valid UTF-8", "byte 0xe9", "save it as UTF-8"),
        _not_utf8,
    ),
    "unknown-model": ConfigCase(
        UnknownModelError, ("unknown model 'wavespeed-ai/hunyuan3d/v9-ultra'",), _unknown_model
    ),
    "output-unknown-protocol": ConfigCase(
        OutputNotWritableError,
        ("cannot write to the output 'nosuch://bucket/meshes'", "nosuch"),
        _unknown_protocol,
    ),
    "output-under-a-file": ConfigCase(
        OutputNotWritableError,
        ("cannot write to ", "a-file/out: ", "a-file is a file, not a folder"),
        _output_under_a_file,
    ),
    "missing-api-key": ConfigCase(
        MissingAPIKeyError, ("no WaveSpeed API key", "WAVESPEED_API_KEY"), _missing_key
    ),
    "wrong-api-key": ConfigCase(
        AuthenticationError, ("rejected the API key", "WAVESPEED_API_KEY"), _wrong_key, requests=1
    ),
    "api-root-without-scheme": ConfigCase(
        InvalidSettingsError,
        ("WAVESPEED_BASE_URL '127.0.0.1:37977' needs a scheme and host, e.g. https://api.wavespeed.ai",),
        _api_root("127.0.0.1:37977"),
    ),
    "api-root-refused": ConfigCase(
        APIUnreachableError,
        ("cannot reach the WaveSpeed API at http://127.0.0.1:", ": connection refused"),
        _api_root("http://127.0.0.1:{closed}"),
    ),
    "api-root-unresolvable": ConfigCase(
        APIUnreachableError,
        ("cannot reach the WaveSpeed API at https://wavespeed.invalid: the host name does not resolve",),
        _api_root("https://wavespeed.invalid"),
    ),
}


def assert_nothing_requested(emulator: EmulatorServer, case: ConfigCase) -> None:
    stats = emulator.stats
    assert sum(stats.requests.values()) == case.requests
    assert stats.auth_failures == case.requests  # the only request a wrong key costs is one 401
    assert (stats.submits_received, stats.submits_accepted, stats.total_uploads) == (0, 0, 0)


def assert_no_output(tmp_path: Path) -> None:
    """No mesh, metadata or run summary anywhere (a wrong key may leave the empty output folder)."""
    written = [path for path in tmp_path.rglob("*") if path.is_file() and "photos" not in path.parts]
    assert written in ([], [tmp_path / "a-file"]), written


@pytest.mark.parametrize("case", list(CONFIG_CASES.values()), ids=list(CONFIG_CASES))
def test_configuration_error_fails_the_flow_before_any_request(
    case: ConfigCase,
    emulator: EmulatorServer,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    parameters = case.setup(folder, tmp_path, monkeypatch)

    state, error = run_flow(**parameters)

    assert state.is_failed()
    assert isinstance(error, case.error), error
    message = str(error)
    assert state.message == message
    assert "\n" not in message
    for expected in case.expected:
        assert expected in message, message
    assert "wsk-wrong-key" not in message
    assert_nothing_requested(emulator, case)
    assert_no_output(tmp_path)
    assert_no_traceback(capfd)


CLI_CASES = [
    "empty-manifest",
    "missing-image-column",
    "not-utf8",
    "unknown-model",
    "output-unknown-protocol",
    "output-under-a-file",
    "missing-api-key",
    "wrong-api-key",
    "api-root-without-scheme",
    "api-root-refused",
    "api-root-unresolvable",
]


@pytest.mark.parametrize("name", CLI_CASES)
def test_configuration_error_exits_2_with_one_line(
    name: str,
    emulator: EmulatorServer,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CONFIG_CASES[name]
    parameters = case.setup(folder, tmp_path, monkeypatch)
    argv = ["run", parameters["manifest"], "--output", parameters["output"]]
    if "model" in parameters:
        argv += ["--model", parameters["model"]]

    code = main(argv)

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hy3d: error: "), err
    for expected in case.expected:
        assert expected in lines[0], lines[0]
    assert "wsk-wrong-key" not in err
    assert_nothing_requested(emulator, case)
    assert_no_output(tmp_path)
