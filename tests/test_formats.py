"""Outputs told apart by content, and meshes in other formats made into verified GLBs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from tasks.convert import convert_to_glb
from tasks.errors import IncompleteDownloadError, MeshConversionError
from tasks.fetch import choose_mesh, inspect_glb, kind_of

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
GLB = b"glTF\x02\0\0\0" + b"\0" * 20
ZIP = b"PK\x03\x04" + b"\0" * 20
OBJ = b"# made by hand\nmtllib model.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


@pytest.mark.parametrize(
    ("url", "content_type", "head", "kind"),
    [
        ("https://cdn/out/a.glb", None, GLB, "glb"),
        ("https://cdn/o/token?X-Amz-Signature=abc", "application/octet-stream", GLB, "glb"),
        ("https://cdn/o/token", "model/gltf-binary", b"", "glb"),
        ("https://cdn/o/token", "binary/octet-stream", ZIP, "zip"),
        ("https://cdn/o/token", None, OBJ, "obj"),
        ("https://cdn/o/token", "text/plain", OBJ, "obj"),
        ("https://cdn/o/preview?sig=1", "application/octet-stream", PNG, "png"),
        ("https://cdn/o/a.PNG", None, PNG, "png"),
        ("https://cdn/o/mislabelled.png", None, GLB, "glb"),  # the bytes win over a wrong name
        ("https://cdn/o/a.usdz", None, ZIP, "usdz"),  # a USDZ is a zip: the name says which
        ("https://cdn/o/token", None, b"\0\1\2", None),
    ],
)
def test_kind_by_extension_then_content_type_then_bytes(
    url: str, content_type: str | None, head: bytes, kind: str | None
) -> None:
    assert kind_of(url, content_type, head) == kind


def test_the_mesh_is_chosen_by_format_not_by_order() -> None:
    assert choose_mesh(["png", "glb"]) == 1
    assert choose_mesh(["png", "zip", "glb"]) == 2
    assert choose_mesh(["png", "obj", "zip"]) == 1
    from tasks.errors import DownloadError

    with pytest.raises(DownloadError, match="none of the 2 output"):
        choose_mesh(["png", None])


def _textured_box() -> tuple[str, dict[str, bytes]]:
    mesh = trimesh.creation.box()
    uv = np.random.default_rng(1).random((len(mesh.vertices), 2))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.new("RGB", (32, 32), (200, 30, 30)))
    text, files = trimesh.exchange.obj.export_obj(
        mesh, include_texture=True, return_texture=True, mtl_name="model.mtl"
    )
    return text, files


def test_a_zipped_obj_becomes_a_textured_glb(tmp_path: Path) -> None:
    text, files = _textured_box()
    archive = tmp_path / "mesh.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("result/model.obj", text)
        for name, data in files.items():
            bundle.writestr(f"result/{name}", data)
        bundle.writestr("../escape.txt", "never written outside")
    target = tmp_path / "mesh.glb"
    convert_to_glb(str(archive), "zip", str(target))
    stats = inspect_glb(str(target))
    assert stats.faces == 12
    geometry = next(iter(trimesh.load(target, force="scene").geometry.values()))
    assert geometry.visual.material.baseColorTexture.size == (32, 32)  # the texture came along
    assert not (tmp_path / "escape.txt").exists()


def test_a_plain_obj_becomes_a_glb(tmp_path: Path) -> None:
    source = tmp_path / "download.partial"
    source.write_text(_textured_box()[0])
    convert_to_glb(str(source), "obj", str(tmp_path / "mesh.glb"))
    assert inspect_glb(str(tmp_path / "mesh.glb")).faces == 12


def test_unusable_archives_are_clear_errors(tmp_path: Path) -> None:
    images = tmp_path / "images.zip"
    with zipfile.ZipFile(images, "w") as bundle:
        bundle.writestr("a.png", PNG)
    with pytest.raises(MeshConversionError, match="holds no mesh"):
        convert_to_glb(str(images), "zip", str(tmp_path / "out.glb"))
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(images.read_bytes()[:30])
    with pytest.raises(IncompleteDownloadError):  # worth downloading again
        convert_to_glb(str(damaged), "zip", str(tmp_path / "out.glb"))
