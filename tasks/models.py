"""The Hunyuan3D models WaveSpeed serves: one typed input model per endpoint.

Each model's inputs and ranges are those of its page on WaveSpeed (``https://wavespeed.ai/models/<id>``),
read against WaveSpeed's own clients where the page is silent; docs/wavespeed-api.md lists the sources.

Manifest columns and flow-level ``inputs`` are validated against these before anything is paid
for. Image-valued inputs are listed separately: their manifest values are paths or URLs that the
flow resolves, checks and uploads, and the model receives URLs.

The API's resources as the flow sees them. Sections: the models and their typed inputs, the
images they take (checked before paying), and the prediction the API returns. The CLI's option
model imports this module for every command (``hy3d --help`` too), so Pillow and the output store
(fsspec) are imported by the functions that use them.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import ImageProblem, UnknownModelError

DEFAULT_MODEL = "wavespeed-ai/hunyuan3d/v2-mini"


class _Inputs(BaseModel):
    # Unknown keys are errors here (WaveSpeed would silently ignore a misspelt option).
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class NoOptions(_Inputs):
    """v2-mini, v2-base, v2.1, v3.1 rapid: the image is the only documented input."""


class MultiViewOptions(_Inputs):
    # Ranges of WaveSpeed's own ComfyUI node; its seed-less form, but the API page lists a seed.
    num_inference_steps: int = Field(default=50, ge=1, le=50)
    guidance_scale: float = Field(default=7.5, ge=0, le=20)
    octree_resolution: int = Field(default=256, ge=64, le=512)
    seed: int | None = None
    textured_mesh: bool = Field(default=False, description="Textured output; priced 3x.")


class V3Options(_Inputs):
    enable_pbr: bool = False
    polygon_type: Literal["triangle", "quadrilateral"] = "triangle"
    face_count: int = Field(default=500_000, ge=40_000, le=1_500_000)
    generate_type: Literal["Normal", "LowPoly", "Geometry"] = "Normal"


class V3TextOptions(V3Options):
    prompt: str = Field(min_length=1, max_length=1024)


class RapidTextOptions(_Inputs):
    # "max 200 UTF-8 characters" on the model's page: refused here, before anything is paid.
    prompt: str = Field(min_length=1, max_length=200)


class V3SketchOptions(_Inputs):
    prompt: str = Field(min_length=1, max_length=1024)
    enable_pbr: bool = False
    face_count: int = Field(default=500_000, ge=40_000, le=1_500_000)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    options: type[_Inputs]
    # Model input name -> required? The first is the main image (the manifest's `image` column).
    image_inputs: tuple[tuple[str, bool], ...]
    # The manifest's main column: "image", or "prompt" for text-to-3d.
    primary: Literal["image", "prompt"] = "image"

    @property
    def image_fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.image_inputs)

    @property
    def main_image_input(self) -> str | None:
        return self.image_inputs[0][0] if self.image_inputs else None

    @property
    def extra_image_columns(self) -> tuple[str, ...]:
        """Manifest columns holding further views (named like the model input)."""
        return self.image_fields[1:]

    @property
    def option_fields(self) -> frozenset[str]:
        return frozenset(self.options.model_fields)

    def validate_options(self, values: dict[str, Any]) -> dict[str, Any]:
        """Validated, defaults left out (WaveSpeed applies its own); raises ValidationError."""
        return self.options.model_validate(values).model_dump(exclude_unset=True)


MODELS: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(DEFAULT_MODEL, NoOptions, (("image", True),)),
        ModelSpec("wavespeed-ai/hunyuan3d/v2-base", NoOptions, (("image", True),)),
        ModelSpec("wavespeed-ai/hunyuan3d/v2.1", NoOptions, (("image", True),)),
        ModelSpec(
            "wavespeed-ai/hunyuan3d-v2-multi-view",
            MultiViewOptions,
            (("front_image_url", True), ("back_image_url", True), ("left_image_url", True)),
        ),
        ModelSpec(
            "wavespeed-ai/hunyuan3d-v3/image-to-3d",
            V3Options,
            (("image", True), ("back_image", False), ("left_image", False), ("right_image", False)),
        ),
        ModelSpec("wavespeed-ai/hunyuan3d-v3/text-to-3d", V3TextOptions, (), primary="prompt"),
        ModelSpec("wavespeed-ai/hunyuan3d-v3/sketch-to-3d", V3SketchOptions, (("image", True),)),
        ModelSpec("wavespeed-ai/hunyuan-3d-v3.1/image-to-3d-rapid", NoOptions, (("image", True),)),
        ModelSpec("wavespeed-ai/hunyuan-3d-v3.1/text-to-3d-rapid", RapidTextOptions, (), primary="prompt"),
    )
}
KNOWN_MODELS = frozenset(MODELS)


def check_model(model: str) -> ModelSpec:
    spec = MODELS.get(model)
    if spec is None:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise UnknownModelError(f"unknown model {model!r}; known Hunyuan3D models: {known}")
    return spec


def describe_validation_error(error: ValidationError) -> list[tuple[str, str]]:
    """(field, message) pairs a user can act on, from pydantic's error list."""
    problems = []
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"]) or ""
        if detail["type"] == "extra_forbidden":
            problems.append((field, "is not an input of this model"))
        elif detail["type"] == "missing":
            problems.append((field, "is required by this model"))
        else:
            problems.append((field, f"{detail['msg']} (got {detail.get('input')!r})"))
    return problems


# ==== Images ======================================================================================
#
# Check an image against WaveSpeed's limits before paying for anything (pure, no network).

MIN_SIDE_PX = 128
MAX_SIDE_PX = 5000
MAX_IMAGE_BYTES = 8 * 1024 * 1024
# Pillow calls many camera JPEGs "MPO" (a JPEG with extra frames appended): still a JPEG file.
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "WEBP": "image/webp"}
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def inspect_image(data: bytes, *, size: int | None = None) -> ImageInfo:
    """Format and size from the header only; raise :class:`ImageProblem` when outside the limits.

    ``size`` is the file's full size when ``data`` holds only its beginning (a reader may stop after
    ``MAX_IMAGE_BYTES + 1`` bytes rather than load a huge file); it defaults to ``len(data)``.
    """
    from PIL import Image, UnidentifiedImageError  # not for every CLI command: see the module's docstring

    total = len(data) if size is None else size
    if total > MAX_IMAGE_BYTES:
        raise ImageProblem(f"image is {total / 1e6:.1f} MB; WaveSpeed accepts at most 8 MB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format or "", image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses headers claiming ~90+ million pixels, far beyond the limit per side.
        raise ImageProblem(
            f"image is far larger than {MAX_SIDE_PX}x{MAX_SIDE_PX} px ({exc}); WaveSpeed accepts "
            f"{MIN_SIDE_PX} to {MAX_SIDE_PX} px per side"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageProblem("not a readable image (JPG, PNG or WEBP expected)") from exc
    content_type = CONTENT_TYPES.get(fmt)
    if content_type is None:
        raise ImageProblem(f"{fmt or 'unknown'} images are not accepted; use JPG, PNG or WEBP")
    if min(width, height) < MIN_SIDE_PX or max(width, height) > MAX_SIDE_PX:
        raise ImageProblem(
            f"image is {width}x{height} px; WaveSpeed accepts {MIN_SIDE_PX} to {MAX_SIDE_PX} px per side"
        )
    return ImageInfo(content_type=content_type, width=width, height=height)


# ==== Predictions =================================================================================
#
# The prediction resource as the API returns it.

# Statuses after which a prediction never changes. The official SDK treats the last three as
# terminal too; anything unknown means "keep waiting".
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timeout", "deleted"})

# Task error codes (data.code) after which a new submit of the same input may succeed.
TRANSIENT_TASK_CODES = frozenset({5000, 5003, 5004})


_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?")


def rfc3339_to_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (any number of fraction digits; no
    zone means UTC), or None when it is not one. ``datetime`` alone keeps only microseconds, too
    coarse to order predictions accepted in the same microsecond burst."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    day, clock, fraction, zone = match.groups()
    offset = "+00:00" if zone is None or zone in "Zz" else f"{zone[:3]}:{zone[-2:]}"
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{offset}")
    except ValueError:
        return None
    whole_seconds = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return whole_seconds * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))


# Keys under which an output given as an object carries its URL (WaveSpeed's CLI and MCP server type
# outputs as ``string | Record<string, unknown>``; see docs/wavespeed-api.md).
OUTPUT_URL_KEYS = ("url", "uri", "href", "download_url", "file_url", "output_url")


def output_url(output: Any) -> str | None:
    """The URL of one ``outputs`` item: the string itself, or the URL an object carries."""
    if isinstance(output, str):
        return output.strip() or None
    if isinstance(output, dict):
        for key in OUTPUT_URL_KEYS:
            value = output.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _liberal(data: Any) -> Any:
    """Read an answer as the public clients do (``?? []``): a field that is null, or not of the
    documented type, counts as absent. Only a missing ``id`` makes an answer unusable."""
    from tasks.storage import redact, redact_data  # fsspec: not for every CLI command

    if not isinstance(data, dict):
        return data
    clean = dict(data)
    if isinstance(clean.get("id"), int) and not isinstance(clean.get("id"), bool):
        clean["id"] = str(clean["id"])
    raw_outputs = clean.get("outputs")
    items = raw_outputs if isinstance(raw_outputs, list) else []
    clean["outputs"] = [url for url in map(output_url, items) if url]
    clean["output_objects"] = [redact_data(item) for item in items if isinstance(item, dict)]
    expected: dict[str, tuple[type, ...]] = {
        "model": (str,),
        "status": (str,),
        "error": (str,),
        "code": (int, str),
        "created_at": (str,),
        "executionTime": (int, float, str),
        "timings": (dict,),
        "has_nsfw_contents": (list,),
    }
    for key, types in expected.items():
        value = clean.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, types):
            clean.pop(key, None)
    if isinstance(data.get("error"), dict):  # {"message": ...} instead of a string
        clean["error"] = str(data["error"].get("message") or data["error"])
    if "error" in clean:
        clean["error"] = redact(clean["error"])  # a server may echo the request, key included
    for key in ("code", "executionTime"):
        if isinstance(clean.get(key), str):
            try:
                clean[key] = float(clean[key]) if key == "executionTime" else int(clean[key])
            except ValueError:
                clean.pop(key)
    if "status" in clean:
        clean["status"] = clean["status"].strip().lower()
    if "has_nsfw_contents" in clean:
        clean["has_nsfw_contents"] = [bool(flag) for flag in clean["has_nsfw_contents"]]
    return clean


class Prediction(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    id: str = Field(min_length=1)
    model: str = ""
    # "" when the answer gave none: not terminal, so a wait goes on polling.
    status: str = ""
    outputs: list[str] = Field(default_factory=list, description="The output URLs, in the server's order.")
    output_objects: list[dict[str, Any]] = Field(
        default_factory=list, description="Outputs the server gave as objects, kept as they were."
    )
    error: str = ""
    code: int = 0
    created_at: str | None = None
    execution_time_ms: float | None = Field(default=None, alias="executionTime")
    timings: dict[str, Any] = Field(default_factory=dict)
    has_nsfw_contents: list[bool] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _accept_variants(cls, data: Any) -> Any:
        return _liberal(data)

    @property
    def created_ns(self) -> int | None:
        """When the server accepted it (ns since the epoch), if it said so readably."""
        return rfc3339_to_ns(self.created_at) if self.created_at else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"

    @property
    def inference_ms(self) -> float | None:
        value = self.timings.get("inference")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
