"""Deliverables (``formats``): each one checked by the field's own validator, made without paying
again, and shown by the gallery.

- every web GLB passes the Khronos glTF-Validator (npm ``gltf-validator``, pinned in
  ``tools/formats-npm``) with no error, and weighs at most a third of ``mesh.glb`` for a textured
  20 k-face mesh with a 1 K texture;
- every USDZ passes every validator usd-core registers (``pxr.UsdValidation``) with no error;
- STL and OBJ read back in trimesh;
- a re-run with more formats adds them to items already done with no WaveSpeed call, an unchanged
  re-run rewrites nothing, a failed conversion keeps the item completed, a missing extra stops the run
  before anything is paid;
- the gallery, in Chromium, shows the web GLB (meshopt + WebP decoded in the page, from disk and
  over HTTP), each deliverable's size and the AR Quick Look link.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import trimesh
from PIL import Image

import tasks.deliverables as deliverables_module
from emulator import EmulatorServer
from emulator.meshgen import image_to_glb, prompt_to_glb
from hy3d.cli import main as cli_main
from tasks.deliverables import FILES, DeliverableSettings, build
from tasks.deliverables.gltf import read_glb
from tasks.fetch import inspect_glb_structure
from tests.conftest import SAMPLES, run_flow, serve

ROOT = Path(__file__).resolve().parents[1]
ALL_FORMATS = ("glb", "web", "usdz", "stl", "obj")


# -- the validators ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_tools() -> Path:
    """The pinned gltfpack and gltf-validator (``python3 tools/formats_npm.py``, as .ci/run does)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "formats_npm.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return ROOT / ".cache" / "formats-npm" / "node_modules"


def khronos_reports(modules: Path, paths: list[Path]) -> list[dict[str, Any]]:
    """The Khronos glTF-Validator's report of each file (node, tools/formats-npm/validate.cjs)."""
    result = subprocess.run(
        ["node", str(ROOT / "tools" / "formats-npm" / "validate.cjs"), str(modules), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_valid_gltf(modules: Path, *paths: Path) -> None:
    reports = khronos_reports(modules, list(paths))
    assert len(reports) == len(paths)
    for report in reports:
        errors = [m for m in report["messages"] if m["severity"] == 0]
        assert report["numErrors"] == 0 and not errors, (report["file"], errors)
        assert "EXT_meshopt_compression" in report["extensionsUsed"], report
        assert "EXT_texture_webp" in report["extensionsUsed"] or "textures" not in report, report


def usd_errors(path: Path) -> list[str]:
    """Errors of every validator usd-core registers (pxr.UsdValidation) on the package."""
    from pxr import Usd, UsdValidation

    stage = Usd.Stage.Open(str(path))
    validators = UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
    assert len(validators) >= 25  # all of them, USDZ package validators included
    found = UsdValidation.ValidationContext(validators).Validate(stage)
    return [
        f"{error.GetName()}: {error.GetMessage()}"
        for error in found
        if error.GetType() == UsdValidation.ValidationErrorType.Error
    ]


def assert_valid_usdz(path: Path, *, textured: bool = True) -> None:
    from pxr import Usd, UsdGeom, UsdShade

    assert usd_errors(path) == []
    with zipfile.ZipFile(path) as package:
        names = package.namelist()
        assert names[0].endswith(".usdc")
        assert all(info.compress_type == zipfile.ZIP_STORED for info in package.infolist())
        assert any(name.endswith((".png", ".jpg")) for name in names) == textured, names
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    meshes = [UsdGeom.Mesh(p) for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert meshes
    for mesh in meshes:
        assert len(mesh.GetNormalsAttr().Get()) == len(mesh.GetPointsAttr().Get())
        st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
        assert st.IsDefined() == textured
        material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
        assert material and material.GetSurfaceOutput().HasConnectedSource()


def assert_readable(path: Path, fmt: str) -> int:
    """trimesh reads the STL, or the OBJ unzipped with its MTL and texture; returns the faces."""
    if fmt == "stl":
        mesh: Any = trimesh.load(path, file_type="stl")
        assert mesh.bounds[0][2] == pytest.approx(0.0, abs=1e-6)  # standing on the build plate
        return len(mesh.faces)
    folder = path.parent / f"{path.name}-unzipped"
    with zipfile.ZipFile(path) as bundle:
        bundle.extractall(folder)
    assert {"mesh.obj", "mesh.mtl"} <= set(os.listdir(folder))
    scene: Any = trimesh.load(folder / "mesh.obj", file_type="obj", force="scene")
    return sum(len(geometry.faces) for geometry in scene.geometry.values())


# -- conversions ------------------------------------------------------------------------------------


def test_each_format_passes_its_validator_and_the_web_glb_is_a_third(
    node_tools: Path, tmp_path: Path
) -> None:
    source = tmp_path / "mesh.glb"
    source.write_bytes(image_to_glb((SAMPLES / "red-ball.png").read_bytes(), grid=100, texture_px=1024))
    faces = inspect_glb_structure(str(source)).faces
    assert 18_000 <= faces <= 22_000
    document, binary = read_glb(source.read_bytes())
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(document["meshes"][0]["primitives"][0]["attributes"])
    view = document["bufferViews"][document["images"][0]["bufferView"]]
    texture = Image.open(io.BytesIO(binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]))
    assert max(texture.size) == 1024

    made: dict[str, Path] = {}
    settings = DeliverableSettings(("web", "usdz", "stl", "obj"))
    for fmt in settings.formats:
        folder = tmp_path / fmt
        folder.mkdir()
        made[fmt] = Path(build(fmt, str(source), str(folder), settings))
        assert made[fmt].name == FILES[fmt]

    web = made["web"]
    assert_valid_gltf(node_tools, web)
    ratio = web.stat().st_size / source.stat().st_size
    assert ratio <= 1 / 3, ratio
    web_document, web_binary = read_glb(web.read_bytes())
    assert web_document["images"][0]["mimeType"] == "image/webp"
    view = web_document["bufferViews"][web_document["images"][0]["bufferView"]]
    webp = Image.open(io.BytesIO(web_binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]))
    assert webp.format == "WEBP" and max(webp.size) <= 1024
    assert inspect_glb_structure(str(web)).faces == faces  # no max_faces: every face kept

    assert_valid_usdz(made["usdz"])
    assert assert_readable(made["stl"], "stl") == faces
    assert assert_readable(made["obj"], "obj") == faces

    # A face budget and a smaller texture; a vertex-coloured mesh (no texture) as USDZ.
    small = DeliverableSettings(("web", "usdz"), web_texture_px=256, max_faces=5000)
    folder = tmp_path / "small"
    folder.mkdir()
    budget = Path(build("web", str(source), str(folder), small))
    assert inspect_glb_structure(str(budget)).faces <= 5000
    assert_valid_gltf(node_tools, budget)
    assert budget.stat().st_size < web.stat().st_size
    usdz = Path(build("usdz", str(source), str(folder), small))
    assert_valid_usdz(usdz)
    blob = tmp_path / "blob.glb"
    blob.write_bytes(prompt_to_glb("a green blob"))
    folder = tmp_path / "blob"
    folder.mkdir()
    assert_valid_usdz(Path(build("usdz", str(blob), str(folder), settings)), textured=False)


def test_usd_validation_catches_a_bad_package(tmp_path: Path) -> None:
    """The USDZ check can fail: a stage without metersPerUnit/upAxis, packaged with a PNG it lacks."""
    from pxr import Sdf, Usd, UsdGeom, UsdUtils

    layer = tmp_path / "bad.usdc"
    stage = Usd.Stage.CreateNew(str(layer))
    UsdGeom.Mesh.Define(stage, "/Mesh")
    stage.GetRootLayer().Save()
    bad = tmp_path / "bad.usdz"
    assert UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(bad))
    assert usd_errors(bad)


# -- the flow ----------------------------------------------------------------------------------------


def write_manifest(samples: Path, ids: list[str]) -> Path:
    names = {"red-ball": "red-ball.png", "blue-mug": "blue-mug.png", "star": "gold-star.png"}
    manifest = samples / "manifest.csv"
    manifest.write_text("id,image\n" + "".join(f"{i},{names[i]}\n" for i in ids))
    return manifest


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under the items' folders: (size, mtime in ns)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.relative_to(folder).parts[0].startswith((".", "_", "runs", "index"))
    }


def assert_recorded(out: Path, item_id: str, formats: tuple[str, ...]) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((out / item_id / "metadata.json").read_text())
    assert metadata["status"] == "completed"
    records = metadata["deliverables"]
    assert set(records) == set(formats) - {"glb"}
    for fmt, record in records.items():
        data = (out / item_id / FILES[fmt]).read_bytes()
        assert record["path"] == FILES[fmt]
        assert (record["bytes"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    return metadata


@pytest.mark.usefixtures("prefect_harness")
def test_asking_again_adds_formats_without_paying_and_an_unchanged_rerun_rewrites_nothing(
    node_tools: Path, emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    state, summary = run_flow(manifest=str(write_manifest(samples, ["red-ball"])), output=str(out))
    assert state.is_completed() and summary.landed == 1
    assert "deliverables" not in json.loads((out / "red-ball" / "metadata.json").read_text())
    assert not list(out.glob("red-ball/mesh.*.*"))  # glb only, as before formats existed
    stats = emulator.stats
    paid, uploads = stats.submits_received, stats.total_uploads
    mesh = (out / "red-ball" / "mesh.glb").read_bytes()

    # More formats, and one new item: the item already done gets them from its mesh, unpaid.
    manifest = write_manifest(samples, ["red-ball", "blue-mug"])
    state, summary = run_flow(manifest=str(manifest), output=str(out), formats="glb,web,usdz,stl,obj")
    assert state.is_completed(), state.message
    assert summary.counts == {"already_done": 1, "completed": 1} and summary.deliverables_failed == 0
    assert stats.submits_received == paid + 1  # blue-mug only: 0 new submits for red-ball
    assert stats.total_uploads == uploads + 1
    assert stats.submits_for_image_bytes((samples / "red-ball.png").read_bytes()) == 1
    assert (out / "red-ball" / "mesh.glb").read_bytes() == mesh  # kept as WaveSpeed made it
    for item in summary.items:
        assert set(item.deliverables or {}) == {"web", "usdz", "stl", "obj"}, item
    for item_id in ("red-ball", "blue-mug"):
        metadata = assert_recorded(out, item_id, ALL_FORMATS)
        assert metadata["deliverables"]["web"]["settings"] == {"texture_px": 1024, "max_faces": None}
        assert_valid_usdz(out / item_id / "mesh.usdz")
        faces = metadata["mesh"]["faces"]
        assert assert_readable(out / item_id / "mesh.stl", "stl") == faces
        assert assert_readable(out / item_id / "mesh.obj.zip", "obj") == faces
        assert (out / item_id / "mesh.web.js").exists()  # the gallery's copy, for file://
    assert_valid_gltf(node_tools, out / "red-ball" / "mesh.web.glb", out / "blue-mug" / "mesh.web.glb")
    assert not list(out.rglob("*.partial"))

    # Unchanged: nothing is made, paid, or written (metadata included).
    before, polls = snapshot(out), stats.total_polls
    state, summary = run_flow(manifest=str(manifest), output=str(out), formats=list(ALL_FORMATS))
    assert state.is_completed() and summary.counts == {"already_done": 2}
    assert snapshot(out) == before
    assert (stats.submits_received, stats.total_polls) == (paid + 1, polls)

    # Other settings remake only what depends on them; a removed file is made again.
    (out / "red-ball" / "mesh.stl").unlink()
    state, summary = run_flow(
        manifest=str(manifest), output=str(out), formats=["web", "stl"], web_texture_px=256
    )
    assert state.is_completed()
    after = snapshot(out)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {
        "red-ball/mesh.web.glb",
        "red-ball/mesh.web.js",
        "red-ball/mesh.stl",
        "red-ball/metadata.json",
        "blue-mug/mesh.web.glb",
        "blue-mug/mesh.web.js",
        "blue-mug/metadata.json",
    }
    remade = json.loads((out / "blue-mug" / "metadata.json").read_text())["deliverables"]["web"]
    assert remade["settings"] == {"texture_px": 256, "max_faces": None}
    assert stats.submits_received == paid + 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_conversion_keeps_the_mesh_and_is_tried_again(
    node_tools: Path, emulator: EmulatorServer, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "gltfpack"
    broken.write_text("#!/bin/sh\necho 'gltfpack: out of luck' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("HY3D_GLTFPACK", str(broken))
    out = tmp_path / "out"
    manifest = write_manifest(samples, ["star"])

    state, summary = run_flow(manifest=str(manifest), output=str(out), formats=["web", "stl"])

    assert state.is_completed(), state.message  # the mesh landed: the item and the run completed
    assert summary.counts == {"completed": 1} and summary.deliverables_failed == 1
    assert any("deliverable" in advice for advice in summary.advice)
    metadata = json.loads((out / "star" / "metadata.json").read_text())
    assert metadata["status"] == "completed"
    assert "out of luck" in metadata["deliverables"]["web"]["error"]
    assert metadata["deliverables"]["stl"]["bytes"] == (out / "star" / "mesh.stl").stat().st_size
    assert not (out / "star" / "mesh.web.glb").exists()
    assert summary.items[0].failed_deliverables() == ["web"]

    monkeypatch.delenv("HY3D_GLTFPACK")
    paid = emulator.stats.submits_received
    state, summary = run_flow(manifest=str(manifest), output=str(out), formats=["web", "stl"])
    assert state.is_completed() and summary.deliverables_failed == 0
    assert emulator.stats.submits_received == paid
    assert_recorded(out, "star", ("web", "stl"))
    assert_valid_gltf(node_tools, out / "star" / "mesh.web.glb")


@pytest.mark.usefixtures("prefect_harness")
def test_a_missing_extra_or_tool_stops_the_run_before_anything_is_paid(
    emulator: EmulatorServer,
    samples: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write_manifest(samples, ["red-ball"])
    real_find_spec = importlib.util.find_spec

    def without_usd(name: str, *args: Any) -> Any:
        return None if name == "pxr" else real_find_spec(name, *args)

    with monkeypatch.context() as patched:
        patched.setattr(deliverables_module.importlib.util, "find_spec", without_usd)
        state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "out"), formats="glb,usdz")
    assert state.is_failed()
    assert "prefect-hunyuan3d[formats]" in state.message and "\n" not in state.message

    monkeypatch.setenv("HY3D_GLTFPACK", str(tmp_path / "no-such-gltfpack"))
    state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "out"), formats=["web"])
    assert state.is_failed() and "web needs gltfpack" in state.message, state.message
    assert (emulator.stats.submits_received, emulator.stats.total_uploads) == (0, 0)

    # The CLI: an unknown format is a usage error (exit 2), a missing tool one line on stderr (exit 2).
    capsys.readouterr()
    assert cli_main(["run", str(manifest), "--output", str(tmp_path / "cli"), "--formats", "glb,fbx"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hy3d: error: --formats: ") and "'usdz'" in error and "\n" not in error
    assert cli_main(["run", str(manifest), "--output", str(tmp_path / "cli"), "--formats", "web"]) == 2
    assert emulator.stats.submits_received == 0


# -- the gallery, in Chromium -------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_gallery_shows_the_web_glb_its_deliverables_and_the_ar_link(
    node_tools: Path, emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    from tests.browser import PageLog, chromium, needs_chromium
    from tests.test_gallery import wait_for_viewers

    if needs_chromium.args[0]:
        pytest.skip(needs_chromium.kwargs["reason"])
    out = tmp_path / "out"
    state, summary = run_flow(
        manifest=str(write_manifest(samples, ["red-ball", "blue-mug"])),
        output=str(out),
        formats=list(ALL_FORMATS),
    )
    assert state.is_completed() and summary.gallery_url
    page_url = summary.gallery_url
    with chromium() as browser:
        for where in ("disk", "http"):
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            log = PageLog(page)
            if where == "disk":
                page.goto(page_url)
                cards = {card["id"]: card for card in wait_for_viewers(page)}
            else:
                with serve(out) as root:
                    page.goto(f"{root}/index.html")
                    cards = {card["id"]: card for card in wait_for_viewers(page)}
            for item_id in ("red-ball", "blue-mug"):
                card = cards[item_id]
                assert card["loaded"] == "true" and card["drawn"] > 0.1, card
                assert card["via"] == ("sidecar" if where == "disk" else "fetch"), card
                shown = page.eval_on_selector(
                    f'article.card[data-id="{item_id}"]',
                    """c => ({
                        mesh: c.dataset.mesh,
                        ar: [...c.querySelectorAll('a[rel="ar"]')].map(a => [
                            a.getAttribute('href'), a.firstElementChild && a.firstElementChild.tagName]),
                        files: [...c.querySelectorAll('ul.deliverables li')].map(li => [
                            li.dataset.format, (li.querySelector('a') || {}).textContent,
                            (li.querySelector('.size') || {}).textContent]),
                    })""",
                )
                assert shown["mesh"] == "web", shown  # the meshopt + WebP GLB, decoded in the page
                assert shown["ar"] == [[f"{item_id}/mesh.usdz", "IMG"]], shown
                metadata = json.loads((out / item_id / "metadata.json").read_text())
                assert [row[0] for row in shown["files"]] == ["web", "usdz", "stl", "obj"]
                for fmt, name, size in shown["files"]:
                    assert name and size, (fmt, shown)
                    kb = metadata["deliverables"][fmt]["bytes"] / 1024
                    assert size in (f"{kb:.1f} KB", f"{kb / 1024:.1f} MB"), (fmt, size)
            assert log.errors == [], (where, log.errors)
            if where == "disk":
                page.screenshot(path=str(tmp_path / "gallery-formats.png"), full_page=True)
