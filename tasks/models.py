"""The Hunyuan3D models WaveSpeed serves: one typed input model per endpoint.

Each model's inputs and ranges are those of its page on WaveSpeed (``https://wavespeed.ai/models/<id>``),
read against WaveSpeed's own clients where the page is silent; docs/wavespeed-api.md lists the sources.

Manifest columns and flow-level ``inputs`` are validated against these before anything is paid
for. Image-valued inputs are listed separately: their manifest values are paths or URLs that the
flow resolves, checks and uploads, and the model receives URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.errors import UnknownModelError
from tasks.settings import DEFAULT_MODEL


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
