"""Check an image against WaveSpeed's limits before paying for anything (pure, no network)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from tasks.errors import ImageProblem

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
