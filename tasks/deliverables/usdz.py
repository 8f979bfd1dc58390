"""``mesh.usdz``: the mesh for AR Quick Look (iOS, iPadOS, visionOS), built with Pixar's usd-core.

The stage: ``/Root`` (the default prim, kind ``component``), one ``UsdGeom.Mesh`` per glTF primitive
under ``/Root/Geom`` (triangles, ``subdivisionScheme = none``, vertex normals, ``primvars:st``), each
bound to a ``UsdPreviewSurface`` material under ``/Root/Materials`` whose base colour texture is a
PNG or JPEG inside the package (USDZ allows no other image format). ``metersPerUnit = 1`` and
``upAxis = Y``: glTF's units and axes, so nothing moves. ``UsdUtils.CreateNewARKitUsdzPackage`` lays
the package out as the USDZ spec asks (uncompressed zip, the layer first, 64-byte aligned files).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from tasks.deliverables.printable import vertex_normals
from tasks.deliverables.tools import run_gltfpack
from tasks.deliverables.web import simplify_ratio
from tasks.errors import UsdzError
from tasks.fetch import inspect_glb_structure

# AR Quick Look's guidance: textures up to 2048 px (larger ones are downsampled on device anyway).
USDZ_TEXTURE_MAX_PX = 2048


def _simplified(source: str, folder: str, max_faces: int | None) -> str:
    """``source``, or a copy simplified to ``max_faces`` by gltfpack (no compression: trimesh reads it)."""
    ratio = simplify_ratio(inspect_glb_structure(source).faces, max_faces)
    if ratio is None:
        return source
    target = os.path.join(folder, "simplified.glb")
    run_gltfpack(["-i", source, "-o", target, "-noq", "-si", f"{ratio:.6f}", "-se", "0.05", "-sa"])
    return target


def _texture(material: Any) -> Image.Image | None:
    for name in ("baseColorTexture", "image"):
        image = getattr(material, name, None)
        if isinstance(image, Image.Image):
            return image
    return None


def _base_color(material: Any) -> tuple[float, float, float, float]:
    factor = getattr(material, "baseColorFactor", None)
    if factor is None:
        factor = getattr(material, "main_color", None)
    if factor is None:
        return (0.8, 0.8, 0.8, 1.0)
    values = np.asarray(factor, dtype=np.float64).reshape(-1)
    if values.max() > 1.0:  # trimesh keeps colours as uint8
        values = values / 255.0
    rgba = [*values.tolist(), 1.0, 1.0, 1.0, 1.0][:4]
    return (rgba[0], rgba[1], rgba[2], rgba[3])


def _min_alpha(image: Image.Image) -> int:
    extrema: Any = image.getchannel("A").getextrema()
    return int(extrema[0])


def _save_texture(image: Image.Image, folder: str, name: str) -> str:
    """The texture as PNG (alpha) or JPEG under ``folder/textures``; its package-relative path."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") and _min_alpha(image) < 255
    picture = image.convert("RGBA" if has_alpha else "RGB")
    if max(picture.size) > USDZ_TEXTURE_MAX_PX:
        picture.thumbnail((USDZ_TEXTURE_MAX_PX, USDZ_TEXTURE_MAX_PX), Image.Resampling.LANCZOS)
    relative = f"textures/{name}.{'png' if has_alpha else 'jpg'}"
    os.makedirs(os.path.join(folder, "textures"), exist_ok=True)
    buffer = io.BytesIO()
    if has_alpha:
        picture.save(buffer, format="PNG", optimize=True)
    else:
        picture.save(buffer, format="JPEG", quality=90)
    with open(os.path.join(folder, relative), "wb") as handle:
        handle.write(buffer.getvalue())
    return relative


def build_usdz(source: str, folder: str, *, max_faces: int | None) -> str:
    """Write ``folder/mesh.usdz`` from the GLB at ``source``; return its path."""
    from pxr import UsdShade

    meshes = _triangle_meshes(_simplified(source, folder, max_faces))
    layer = os.path.join(folder, "mesh.usdc")
    stage = _new_stage(layer)
    for number, mesh in enumerate(meshes):
        geom = _define_mesh(stage, f"/Root/Geom/mesh_{number}", mesh)
        texture, vertex_colours = _define_colour_primvars(geom, mesh)
        material = _define_material(stage, number, mesh, texture, vertex_colours, folder)
        UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
    stage.GetRootLayer().Save()
    del stage
    return _package(layer, os.path.join(folder, "mesh.usdz"))


def _triangle_meshes(path: str) -> list[Any]:
    """The GLB's meshes that hold triangles (one per glTF primitive)."""
    scene: Any = trimesh.load(path, file_type="glb", force="scene", process=False)
    meshes = [m for m in scene.dump(concatenate=False) if isinstance(m, trimesh.Trimesh) and len(m.faces)]
    if not meshes:
        raise UsdzError("the GLB holds no triangle mesh")
    return meshes


def _new_stage(layer: str) -> Any:
    """A stage at ``layer`` in glTF's units and axes, with ``/Root`` (its default prim, a component)
    holding the ``Geom`` and ``Materials`` scopes."""
    from pxr import Kind, Usd, UsdGeom

    stage = Usd.Stage.CreateNew(layer)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, UsdGeom.LinearUnits.meters)
    root = UsdGeom.Xform.Define(stage, "/Root")
    stage.SetDefaultPrim(root.GetPrim())
    Usd.ModelAPI(root.GetPrim()).SetKind(Kind.Tokens.component)
    UsdGeom.Scope.Define(stage, "/Root/Geom")
    UsdGeom.Scope.Define(stage, "/Root/Materials")
    return stage


def _define_mesh(stage: Any, prim_path: str, mesh: Any) -> Any:
    """The ``UsdGeom.Mesh`` of a trimesh mesh: its triangles, vertex normals and extent."""
    from pxr import Gf, UsdGeom, Vt

    geom = UsdGeom.Mesh.Define(stage, prim_path)
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int32)
    geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(vertices))
    geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, dtype=np.int32)))
    geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(faces.reshape(-1)))
    geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    geom.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    geom.CreateDoubleSidedAttr(False)
    normals = np.ascontiguousarray(vertex_normals(mesh), dtype=np.float32)
    geom.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(normals))
    geom.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    geom.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*low.tolist()), Gf.Vec3f(*high.tolist())]))
    return geom


def _define_colour_primvars(geom: Any, mesh: Any) -> tuple[Image.Image | None, bool]:
    """``primvars:st`` when the mesh has a UV per vertex; else ``primvars:displayColor`` when it has
    vertex colours. Returns the base colour texture to use (None without UVs) and whether
    ``displayColor`` was written."""
    from pxr import Sdf, UsdGeom, Vt

    visual: Any = mesh.visual
    material_source = getattr(visual, "material", None)
    uv = getattr(visual, "uv", None)
    texture = _texture(material_source) if material_source is not None else None
    primvars = UsdGeom.PrimvarsAPI(geom)
    if uv is not None and len(uv) == len(mesh.vertices):
        st = primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
        st.Set(Vt.Vec2fArray.FromNumpy(np.ascontiguousarray(uv, dtype=np.float32)))
    else:
        texture = None
    if texture is not None or getattr(visual, "kind", None) != "vertex":
        return texture, False
    colors = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
    display = primvars.CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex)
    display.Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(colors)))
    return None, True


def _define_material(
    stage: Any, number: int, mesh: Any, texture: Image.Image | None, vertex_colours: bool, folder: str
) -> Any:
    """A ``UsdPreviewSurface`` material with the glTF material's metallic and roughness factors, its
    diffuse colour from the texture (saved into ``folder``), else the vertex colours, else the base
    colour factor."""
    from pxr import Gf, Sdf, UsdShade

    prim_path = f"/Root/Materials/material_{number}"
    material_source = getattr(mesh.visual, "material", None)
    material = UsdShade.Material.Define(stage, prim_path)
    shader = UsdShade.Shader.Define(stage, f"{prim_path}/surface")
    shader.CreateIdAttr("UsdPreviewSurface")
    rgba = _base_color(material_source)
    metallic = float(getattr(material_source, "metallicFactor", None) or 0.0)
    roughness = getattr(material_source, "roughnessFactor", None)
    shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(metallic)
    shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(
        float(roughness) if roughness is not None else 0.8
    )
    diffuse = shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    if texture is not None:
        texture_file = _save_texture(texture, folder, f"base_color_{number}")
        sampler = _texture_sampler(stage, prim_path, texture_file, rgba)
        diffuse.ConnectToSource(sampler.ConnectableAPI(), "rgb")
        if rgba[3] < 1.0 or (texture.mode == "RGBA" and _min_alpha(texture) < 255):
            shader.CreateInput("opacity", Sdf.ValueTypeNames.Float).ConnectToSource(
                sampler.ConnectableAPI(), "a"
            )
    elif vertex_colours:
        reader = UsdShade.Shader.Define(stage, f"{prim_path}/color_reader")
        reader.CreateIdAttr("UsdPrimvarReader_float3")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("displayColor")
        diffuse.ConnectToSource(reader.ConnectableAPI(), "result")
    else:
        diffuse.Set(Gf.Vec3f(*rgba[:3]))
        if rgba[3] < 1.0:
            shader.CreateInput("opacity", Sdf.ValueTypeNames.Float).Set(rgba[3])
    material.CreateSurfaceOutput().ConnectToSource(shader.ConnectableAPI(), "surface")
    return material


def _texture_sampler(
    stage: Any, material_path: str, texture_file: str, scale: tuple[float, float, float, float]
) -> Any:
    """A ``UsdUVTexture`` in the material that reads ``texture_file`` (package-relative) through
    ``primvars:st``, repeating, its colour scaled by the base colour factor."""
    from pxr import Gf, Sdf, UsdShade

    reader = UsdShade.Shader.Define(stage, f"{material_path}/st_reader")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    sampler = UsdShade.Shader.Define(stage, f"{material_path}/base_color")
    sampler.CreateIdAttr("UsdUVTexture")
    sampler.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(texture_file)
    sampler.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
    sampler.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
    sampler.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
    sampler.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(*scale))
    sampler.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
    return sampler


def _package(layer: str, target: str) -> str:
    """The USDZ package of ``layer`` written at ``target`` as AR Quick Look wants it, and checked."""
    from pxr import Sdf, UsdUtils

    if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(layer), target):
        raise UsdzError("UsdUtils.CreateNewARKitUsdzPackage failed")
    verify_usdz(target)
    return target


def verify_usdz(path: str) -> None:
    """The package opens, its default prim is there, and it holds triangles with points."""
    import zipfile

    from pxr import Usd, UsdGeom

    with zipfile.ZipFile(path) as package:
        entries = package.infolist()
        if not entries or not entries[0].filename.endswith((".usdc", ".usda", ".usd")):
            raise UsdzError("the package does not start with its USD layer")
        if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
            raise UsdzError("the package has compressed entries (USDZ stores them uncompressed)")
    stage = Usd.Stage.Open(path)
    if stage is None or not stage.GetDefaultPrim():
        raise UsdzError("the package has no default prim")
    faces = 0
    for prim in stage.Traverse():
        if prim.IsA(UsdGeom.Mesh):
            counts = UsdGeom.Mesh(prim).GetFaceVertexCountsAttr().Get()
            faces += len(counts) if counts is not None else 0
    if faces == 0:
        raise UsdzError("the package holds no faces")
