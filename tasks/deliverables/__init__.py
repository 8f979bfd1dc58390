"""Deliverables: files made from a verified ``mesh.glb`` for where meshes go next.

- ``glb``: ``mesh.glb``, WaveSpeed's mesh, always kept as delivered.
- ``web``: ``mesh.web.glb`` for ``<model-viewer>``, three.js, product pages: textures at most
  ``web_texture_px`` as WebP (Pillow), simplified to ``max_faces``, quantized and meshopt-compressed
  (gltfpack). See :mod:`tasks.deliverables.web`.
- ``usdz``: ``mesh.usdz`` for AR Quick Look on iOS: usd-core (``UsdGeom.Mesh``, ``UsdPreviewSurface``,
  ``UsdUtils.CreateNewARKitUsdzPackage``). See :mod:`tasks.deliverables.usdz`.
- ``stl``: ``mesh.stl`` for 3D printing (binary, Z up, on the build plate); ``obj``: ``mesh.obj.zip``
  (OBJ + MTL + texture). Both by trimesh: :mod:`tasks.deliverables.printable`.

Every builder is blocking CPU work that reads a local GLB and writes into a local folder: run it in
a worker thread (:mod:`flows.deliver` does, a bounded number at a time). Nothing here touches the
output storage.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tasks.errors import DeliverablesUnavailableError, UnknownFormatError

FormatName = Literal["glb", "web", "usdz", "stl", "obj"]
FORMATS: tuple[str, ...] = ("glb", "web", "usdz", "stl", "obj")
EXTRA_FORMATS: tuple[str, ...] = FORMATS[1:]  # what is made from mesh.glb
FILES: dict[str, str] = {
    "web": "mesh.web.glb",
    "usdz": "mesh.usdz",
    "stl": "mesh.stl",
    "obj": "mesh.obj.zip",
}
DEFAULT_WEB_TEXTURE_PX = 1024
EXTRA = "prefect-hunyuan3d[formats]"


def parse_formats(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"glb,web"`` or ``["web", "usdz"]`` -> the formats beyond ``glb`` in canonical order
    (``glb`` is always made, so asking for it or not is the same). Raises UnknownFormatError."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    wanted = {str(name).strip().lower() for name in names if str(name).strip()}
    unknown = sorted(wanted - set(FORMATS))
    if unknown:
        raise UnknownFormatError(f"unknown format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    return tuple(name for name in EXTRA_FORMATS if name in wanted)


@dataclass(frozen=True)
class DeliverableSettings:
    """What a run asks for beyond ``mesh.glb``, and how."""

    formats: tuple[str, ...]  # from EXTRA_FORMATS, canonical order
    web_texture_px: int = DEFAULT_WEB_TEXTURE_PX
    max_faces: int | None = None

    @classmethod
    def from_parameters(
        cls, formats: str | Iterable[str] | None, web_texture_px: int | None, max_faces: int | None
    ) -> DeliverableSettings:
        if web_texture_px is not None and web_texture_px < 16:
            raise UnknownFormatError(f"web_texture_px must be at least 16, got {web_texture_px}")
        if max_faces is not None and max_faces < 12:
            raise UnknownFormatError(f"max_faces must be at least 12, got {max_faces}")
        return cls(parse_formats(formats), web_texture_px or DEFAULT_WEB_TEXTURE_PX, max_faces)

    def recipe(self, fmt: str) -> dict[str, Any]:
        """The settings a deliverable of ``fmt`` depends on: recorded with it, and a deliverable made
        with other settings is made again."""
        if fmt == "web":
            return {"texture_px": self.web_texture_px, "max_faces": self.max_faces}
        if fmt == "usdz":
            return {"max_faces": self.max_faces}
        return {}

    def needs_gltfpack(self) -> bool:
        return "web" in self.formats or ("usdz" in self.formats and self.max_faces is not None)


def check_available(settings: DeliverableSettings) -> None:
    """Raise DeliverablesUnavailableError, in one line, when a library or tool a format needs is
    missing: called before anything is paid for."""
    problems: list[str] = []
    if "usdz" in settings.formats and importlib.util.find_spec("pxr") is None:
        problems.append(f"usdz needs the optional extra {EXTRA} (usd-core): pip install '{EXTRA}'")
    if settings.needs_gltfpack():
        from tasks.deliverables.tools import gltfpack_command

        try:
            gltfpack_command()
        except FileNotFoundError as exc:
            what = "web" if "web" in settings.formats else "usdz with max_faces"
            problems.append(f"{what} needs gltfpack: {exc}")
    if "web" in settings.formats and not _pillow_writes_webp():
        problems.append("web needs Pillow built with WebP support")
    if problems:
        raise DeliverablesUnavailableError("; ".join(problems))


def _pillow_writes_webp() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def is_current(record: Any, recipe: Mapping[str, Any]) -> bool:
    """Was this deliverable made, with these settings? (A failed one is not current: asked again,
    it is tried again.)"""
    return (
        isinstance(record, dict)
        and "error" not in record
        and isinstance(record.get("bytes"), int)
        and record.get("settings", {}) == dict(recipe)
    )


def build(fmt: str, source: str, folder: str, settings: DeliverableSettings) -> str:
    """Make the deliverable ``fmt`` from the GLB at ``source`` inside ``folder`` (empty, local), verify
    it, and return its path there. Blocking; raises on any failure."""
    if fmt == "web":
        from tasks.deliverables.web import build_web_glb

        return build_web_glb(source, folder, texture_px=settings.web_texture_px, max_faces=settings.max_faces)
    if fmt == "usdz":
        from tasks.deliverables.usdz import build_usdz

        return build_usdz(source, folder, max_faces=settings.max_faces)
    if fmt == "stl":
        from tasks.deliverables.printable import build_stl

        return build_stl(source, folder)
    if fmt == "obj":
        from tasks.deliverables.printable import build_obj_zip

        return build_obj_zip(source, folder)
    raise UnknownFormatError(f"unknown format {fmt!r}")
