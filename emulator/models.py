"""The Hunyuan3D model table of the contract: required/optional inputs, their validation, and prices."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Check = Callable[[Any], str | None]
"""Returns None when the value is acceptable, else the reason it is not."""


class InvalidInput(ValueError):
    """A submit body that the model rejects with HTTP 400; `field` names the offending input."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def url_string(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty URL string"
    if not value.startswith(("http://", "https://", "data:")):
        return "must be an http(s) URL"
    return None


def text(max_chars: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string"
        if len(value) > max_chars:
            return f"must be at most {max_chars} characters"
        return None

    return check


def int_range(low: int | None, high: int | None) -> Check:
    def check(value: Any) -> str | None:
        if not _is_int(value):
            return "must be an integer"
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be between {low} and {high}"
        return None

    return check


def number_range(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if not _is_number(value):
            return "must be a number"
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}"
        return None

    return check


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be a boolean"


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    required: Mapping[str, Check]
    optional: Mapping[str, Check] = field(default_factory=dict)
    image_fields: tuple[str, ...] = ()
    """Inputs that are image URLs, the primary one (the mesh source) first."""
    multi_output: bool = False
    """v3/v3.1-family models: outputs may hold several files (preview image + mesh); the realistic
    profile gives them an OBJ zip for a mesh."""
    malformed_get_url: bool = False
    """Multi-view: `urls.get` has been seen malformed (`ai//api`)."""

    @property
    def primary_image(self) -> str | None:
        return self.image_fields[0] if self.image_fields else None

    def validate(self, inputs: Mapping[str, Any]) -> None:
        """Raise InvalidInput for the first missing required or invalid known input; unknown keys pass."""
        for name in self.required:
            value = inputs.get(name)
            if value is None or value == "":
                raise InvalidInput(name, "is required")
        for name, check in {**self.required, **self.optional}.items():
            if name in inputs and inputs[name] is not None:
                reason = check(inputs[name])
                if reason is not None:
                    raise InvalidInput(name, reason)


_V3_SHAPE: dict[str, Check] = {
    "enable_pbr": boolean,
    "polygon_type": one_of("triangle", "quadrilateral"),
    "face_count": int_range(40000, 1500000),
    "generate_type": one_of("Normal", "LowPoly", "Geometry"),
}

_SPECS = [
    ModelSpec("wavespeed-ai/hunyuan3d/v2-mini", {"image": url_string}, image_fields=("image",)),
    ModelSpec("wavespeed-ai/hunyuan3d/v2-base", {"image": url_string}, image_fields=("image",)),
    ModelSpec("wavespeed-ai/hunyuan3d/v2.1", {"image": url_string}, image_fields=("image",)),
    ModelSpec(
        "wavespeed-ai/hunyuan3d-v2-multi-view",
        {"front_image_url": url_string, "back_image_url": url_string, "left_image_url": url_string},
        {
            "num_inference_steps": int_range(1, 50),
            "guidance_scale": number_range(0, 20),
            "octree_resolution": int_range(64, 512),
            "seed": int_range(None, None),
            "textured_mesh": boolean,
        },
        image_fields=("front_image_url", "back_image_url", "left_image_url"),
        malformed_get_url=True,
    ),
    ModelSpec(
        "wavespeed-ai/hunyuan3d-v3/image-to-3d",
        {"image": url_string},
        {"back_image": url_string, "left_image": url_string, "right_image": url_string, **_V3_SHAPE},
        image_fields=("image", "back_image", "left_image", "right_image"),
        multi_output=True,
    ),
    ModelSpec(
        "wavespeed-ai/hunyuan3d-v3/text-to-3d",
        {"prompt": text(1024)},
        dict(_V3_SHAPE),
        multi_output=True,
    ),
    ModelSpec(
        "wavespeed-ai/hunyuan3d-v3/sketch-to-3d",
        {"image": url_string, "prompt": text(1024)},
        {"enable_pbr": boolean, "face_count": _V3_SHAPE["face_count"]},
        image_fields=("image",),
        multi_output=True,
    ),
    ModelSpec(
        "wavespeed-ai/hunyuan-3d-v3.1/image-to-3d-rapid",
        {"image": url_string},
        image_fields=("image",),
        multi_output=True,
    ),
    ModelSpec("wavespeed-ai/hunyuan-3d-v3.1/text-to-3d-rapid", {"prompt": text(200)}, multi_output=True),
]

MODELS: dict[str, ModelSpec] = {spec.model_id: spec for spec in _SPECS}
DEFAULT_MODEL = "wavespeed-ai/hunyuan3d/v2-mini"
MULTI_VIEW_TEXTURE_FACTOR = 3.0


def price_for(model_id: str, inputs: Mapping[str, Any], prices: Mapping[str, float], default: float) -> float:
    """USD for one prediction: the configured model price (x3 for a textured multi-view mesh)."""
    price = float(prices.get(model_id, default))
    if model_id == "wavespeed-ai/hunyuan3d-v2-multi-view" and inputs.get("textured_mesh") is True:
        price *= MULTI_VIEW_TEXTURE_FACTOR
    return round(price, 6)


def discounted(price: float, discount_rate: float) -> float:
    """What a prediction listed at `price` costs after the account's discount (and is billed)."""
    return round(price * (1.0 - discount_rate), 6)
