"""The Hunyuan3D models WaveSpeed serves, and the image inputs each takes."""

from __future__ import annotations

from tasks.settings import DEFAULT_MODEL

# model id -> its image-valued inputs (first = the main image); text-to-3d takes none.
MODEL_IMAGE_INPUTS: dict[str, tuple[str, ...]] = {
    DEFAULT_MODEL: ("image",),
    "wavespeed-ai/hunyuan3d/v2-base": ("image",),
    "wavespeed-ai/hunyuan3d/v2.1": ("image",),
    "wavespeed-ai/hunyuan3d-v2-multi-view": ("front_image_url", "back_image_url", "left_image_url"),
    "wavespeed-ai/hunyuan3d-v3/image-to-3d": ("image", "back_image", "left_image", "right_image"),
    "wavespeed-ai/hunyuan3d-v3/text-to-3d": (),
    "wavespeed-ai/hunyuan3d-v3/sketch-to-3d": ("image",),
    "wavespeed-ai/hunyuan-3d-v3.1/image-to-3d-rapid": ("image",),
}
KNOWN_MODELS = frozenset(MODEL_IMAGE_INPUTS)
# Models this version runs end to end (one image in, one mesh out); the others need per-model inputs.
SINGLE_IMAGE_MODELS = frozenset(
    model for model, fields in MODEL_IMAGE_INPUTS.items() if fields == ("image",)
) | {"wavespeed-ai/hunyuan3d-v3/image-to-3d"}


class UnknownModelError(ValueError):
    """Configuration error: the model id is not a Hunyuan3D model this tool knows how to drive."""


def check_model(model: str) -> str:
    if model not in KNOWN_MODELS:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise UnknownModelError(f"unknown model {model!r}; known Hunyuan3D models: {known}")
    if model not in SINGLE_IMAGE_MODELS:
        raise UnknownModelError(
            f"model {model!r} needs inputs other than one image (views or a prompt) and is not "
            "supported by this version yet"
        )
    return model
