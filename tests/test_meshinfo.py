"""GLB verification: trimesh for ordinary meshes, the glTF JSON for very large ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator import image_to_glb
from emulator.glb import pad_glb
from tasks import fetch
from tasks.errors import IncompleteDownloadError
from tests.conftest import SAMPLES


@pytest.fixture
def glb(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.glb"
    path.write_bytes(image_to_glb((SAMPLES / "red-ball.png").read_bytes(), 32))
    return path


def test_structural_reading_agrees_with_trimesh(glb: Path) -> None:
    full = fetch.inspect_glb(str(glb))
    light = fetch.inspect_glb_structure(str(glb))
    assert full.parsed_by == "trimesh" and light.parsed_by == "gltf-json"
    assert (light.vertices, light.faces) == (full.vertices, full.faces)
    assert full.faces > 0 and light.bounds is not None


def test_large_meshes_are_checked_without_a_full_parse(
    glb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.glb"
    big.write_bytes(pad_glb(glb.read_bytes(), 3_000_000))
    monkeypatch.setattr(fetch, "FULL_PARSE_MAX_BYTES", 1_000_000)
    stats = fetch.inspect_glb(str(big))
    assert stats.parsed_by == "gltf-json" and stats.faces > 0


@pytest.mark.parametrize("parser", [fetch.inspect_glb, fetch.inspect_glb_structure])
def test_truncated_or_corrupt_files_are_rejected(glb: Path, tmp_path: Path, parser: object) -> None:
    data = glb.read_bytes()
    cut = tmp_path / "cut.glb"
    cut.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.glb"
    corrupt.write_bytes(data[:20] + b"\x00" * (len(data) - 20))
    for path in (cut, corrupt):
        with pytest.raises(IncompleteDownloadError):
            if parser is fetch.inspect_glb_structure:
                fetch.check_glb_header(str(path))
            parser(str(path))  # type: ignore[operator]
