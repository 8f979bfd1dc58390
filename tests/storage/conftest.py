"""One storage suite, many backends: the fsspec way (``fsspec/tests/abstract``): the tests in this folder take
a ``backend`` fixture, parametrised over a local path, ``file://``, ``memory://``, ``s3://`` (moto's server
mode), ``gs://`` (gcp-storage-emulator) and ``az://`` (azurite from npm).

Every server runs on 127.0.0.1, started once per session, and only when a test asks for its backend. Each
test gets a private folder on its backend (a fresh prefix in the one bucket/container) and the storage
options the product needs (endpoint and credentials) — the environment holds no cloud credentials, so a
run that works proves the options were passed through. A backend whose server cannot start is skipped
with the reason; under CI (``CI`` set) it fails instead, so CI never skips a backend silently.
"""

from __future__ import annotations

import os

# Read by gcsfs when it is imported: with the experimental zonal-bucket support on, every operation
# against an emulator stalls ~60 s on a gRPC probe.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import contextlib
import logging
import secrets
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn

import fsspec
import pytest
from fsspec import AbstractFileSystem

from tasks.storage import Storage
from tests.storage import azurite

BUCKET = "hy3d-tests"
BACKENDS = ["local", "file", "memory", "s3", "gcs", "azure"]
SERVER_START_TIMEOUT_S = 30.0

# Azurite's well-known development account (public, documented by Microsoft; accepted by nothing else).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Backend:
    """A private folder on one storage backend, and a client of the test's own to look at it."""

    name: str
    root: str
    """URL of this test's folder, e.g. ``s3://hy3d-tests/<hex>`` (a plain path for ``local``)."""
    options: dict[str, Any]
    """What the product needs to reach it: endpoint and credentials (empty for local and memory)."""
    secrets: tuple[str, ...]
    """Credential values in ``options``: they must never be written anywhere."""
    authorizations: set[str] | None = None
    """``Authorization`` headers the server received, where it does not check them itself (GCS)."""
    fs: AbstractFileSystem = field(init=False, repr=False)
    base: str = field(init=False)

    def __post_init__(self) -> None:
        # Not the product's cached instance: the test looks at the storage as another client would.
        self.fs, self.base = fsspec.core.url_to_fs(self.root, skip_instance_cache=True, **self.options)

    @property
    def is_object_store(self) -> bool:
        return self.name in ("s3", "gcs", "azure")

    def url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def write(self, relative: str, data: bytes) -> None:
        path = self.path(relative)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
        self.fs.pipe_file(path, data)

    def read(self, relative: str) -> bytes:
        self.fs.invalidate_cache()  # what the product wrote since this client last listed
        data: bytes = self.fs.cat_file(self.path(relative))
        return data

    def exists(self, relative: str) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self.path(relative)))

    def files(self, relative: str = "") -> list[str]:
        """Every object (file) under ``relative``, as paths relative to the test's folder, sorted."""
        self.fs.invalidate_cache()
        top = self.path(relative) if relative else self.base
        prefix = self.base.rstrip("/") + "/"
        found = [str(path) for path in self.fs.find(top)]
        return sorted(path.removeprefix(prefix) for path in found)

    def storage(self, relative: str) -> Storage:
        """The product's view of ``relative``, through a client (connection, caches) of its own, as
        another process or machine would have."""
        return Storage(self.url(relative), {**self.options, "skip_instance_cache": True})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_for_port(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server process exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def unavailable(backend: str, reason: str) -> NoReturn:
    message = f"{backend} backend unavailable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI installs every backend: none may be skipped there)", pytrace=False)
    pytest.skip(message)


# -- servers (one per session, started on first use) -----------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key: str
    secret: str


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto in server mode (s3fs runs on aiobotocore, which moto's in-process mock does not intercept)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        from moto.server import ThreadedMotoServer

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        wait_for_port(port, SERVER_START_TIMEOUT_S)
    except Exception as exc:
        unavailable("s3", f"moto's ThreadedMotoServer did not start: {type(exc).__name__}: {exc}")
    # moto accepts any credentials; random ones make the never-written scan meaningful.
    info = S3Server(
        f"http://127.0.0.1:{port}", f"hy3d-key-{secrets.token_hex(8)}", f"hy3d-secret-{secrets.token_hex(16)}"
    )
    try:
        import s3fs

        s3 = s3fs.S3FileSystem(
            endpoint_url=info.endpoint, key=info.key, secret=info.secret, skip_instance_cache=True
        )
        s3.mkdir(BUCKET)
        yield info
    finally:
        server.stop()


@dataclass(frozen=True)
class GCSServer:
    endpoint: str
    authorizations: set[str]
    """``Authorization`` headers of the uploads it received (it checks none: tests look here)."""


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """gcp-storage-emulator, in this process, with the bucket made; it is taught ``ifGenerationMatch=0``."""
    import gcsfs

    if gcsfs.GCSFileSystem.__name__ != "GCSFileSystem":
        unavailable("gcs", "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set")
    try:
        from gcp_storage_emulator.server import create_server

        port = free_port()
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
        server.start()
        wait_for_port(port, SERVER_START_TIMEOUT_S)
    except Exception as exc:
        unavailable("gcs", f"gcp-storage-emulator did not start: {type(exc).__name__}: {exc}")
    try:
        info = GCSServer(f"http://127.0.0.1:{port}", set())
        with _gcs_emulator_honours_if_generation_match(info.authorizations):
            yield info
    finally:
        server.stop()


@contextlib.contextmanager
def _gcs_emulator_honours_if_generation_match(authorizations: set[str]) -> Iterator[None]:
    """Real GCS refuses an upload sent with ``ifGenerationMatch=0`` when the object exists (HTTP 412):
    that is how gcsfs makes ``open(path, "xb")`` exclusive, and what claims rest on. gcp-storage-emulator
    ignores every precondition, so this adds that one to its upload route for the session. (It serves one
    request at a time, so the check and the create cannot interleave.) Without the parameter on the
    request nothing changes: a client that does not send it still overwrites, and the claims test fails.
    It also notes each upload's ``Authorization`` header into ``authorizations``."""
    from gcp_storage_emulator import server as emulator_server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    original = objects.insert

    def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        authorizations.add(str(request.get_header("Authorization", "")))
        if request.query.get("ifGenerationMatch") == ["0"]:
            name = (request.query.get("name") or [None])[0]
            if name is None and request.query.get("uploadType") == ["multipart"]:
                name = request.data["meta"].get("name")
            elif name is None and isinstance(request.data, dict):
                name = request.data.get("name")
            try:
                storage.get_file_obj(request.params["bucket_name"], name)
            except NotFound:
                pass
            else:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json(
                    {
                        "error": {
                            "code": 412,
                            "message": "At least one of the pre-conditions you specified did not hold.",
                            "errors": [{"reason": "conditionNotMet"}],
                        }
                    }
                )
                return None
        return original(request, response, storage, *args, **kwargs)

    routes = [handlers for _, handlers in emulator_server.HANDLERS if handlers.get("POST") is original]
    objects.insert = insert
    for handlers in routes:
        handlers["POST"] = insert
    try:
        yield
    finally:
        objects.insert = original
        for handlers in routes:
            handlers["POST"] = original


@dataclass(frozen=True)
class AzureServer:
    connection_string: str


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureServer]:
    """azurite-blob from npm (installed into .cache/azurite when missing), in memory, on a free port."""
    try:
        executable = azurite.ensure_installed()
    except (azurite.NpmUnavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable("azure", f"azurite {azurite.VERSION} cannot be installed: {exc}")
    port = free_port()
    log = tmp_path_factory.mktemp("azurite") / "azurite.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                str(executable),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=log.parent,
        )
    try:
        try:
            wait_for_port(port, SERVER_START_TIMEOUT_S, alive=lambda: process.poll() is None)
        except RuntimeError as exc:
            unavailable("azure", f"azurite-blob did not start ({exc}): {log.read_text()[-500:]}")
        connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
        import adlfs

        adlfs.AzureBlobFileSystem(connection_string=connection_string, skip_instance_cache=True).mkdir(BUCKET)
        yield AzureServer(connection_string)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- the backend of one test ------------------------------------------------------------------------------


def _clear_client_caches() -> None:
    """fsspec keeps one client per (class, options): drop them so no listing cache outlives a test."""
    for module, name in (
        ("s3fs", "S3FileSystem"),
        ("gcsfs", "GCSFileSystem"),
        ("adlfs", "AzureBlobFileSystem"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            getattr(__import__(module), name).clear_instance_cache()


def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing but the storage options may get a client in: no AWS env/config, no instance metadata
    lookups (they would leave loopback), no emulator host taken from the environment."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_STORAGE_")) or name in ("GOOGLE_APPLICATION_CREDENTIALS",):
            monkeypatch.delenv(name)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    missing = str(tmp_path / "no-such-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    # gcsfs takes a raw bearer token as is only when told not to look its expiry up online.
    monkeypatch.setenv("FETCH_RAW_TOKEN_EXPIRY", "false")


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    name: str = request.param
    _no_ambient_credentials(monkeypatch, tmp_path)
    folder = uuid.uuid4().hex
    options: dict[str, Any] = {}
    hidden: tuple[str, ...] = ()
    seen: set[str] | None = None
    if name == "local":
        root = str(tmp_path / "store")
        os.makedirs(root)
    elif name == "file":
        root = f"file://{tmp_path}/store"
        os.makedirs(tmp_path / "store")
    elif name == "memory":
        root = f"memory://hy3d-{folder}"  # one store per process: a unique prefix per test
    elif name == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        root = f"s3://{BUCKET}/{folder}"
        options = {"endpoint_url": s3.endpoint, "key": s3.key, "secret": s3.secret}
        hidden = (s3.key, s3.secret)
    elif name == "gcs":
        gcs: GCSServer = request.getfixturevalue("gcs_server")
        root = f"gs://{BUCKET}/{folder}"
        # A raw bearer token (the emulator accepts any): a credential the scan can look for.
        token = f"ya29.hy3d-token-{secrets.token_hex(16)}"
        options = {"endpoint_url": gcs.endpoint, "token": token}
        hidden = (token,)
        seen = gcs.authorizations
    elif name == "azure":
        az: AzureServer = request.getfixturevalue("azure_server")
        root = f"az://{BUCKET}/{folder}"
        options = {"connection_string": az.connection_string}
        hidden = (az.connection_string, AZURITE_KEY)
    else:  # pragma: no cover - BACKENDS and this chain agree
        raise AssertionError(name)
    _clear_client_caches()
    yield Backend(name, root, options, hidden, seen)
    _clear_client_caches()
    if name == "memory":
        with contextlib.suppress(FileNotFoundError):
            fsspec.filesystem("memory").rm(f"/hy3d-{folder}", recursive=True)


@pytest.fixture
def local_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary folder for the process (object-store outputs are staged there): tests can
    prove nothing is left in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
