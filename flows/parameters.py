"""Parameter types shared by the ``hunyuan3d-meshes`` and ``hunyuan3d-meshes-sharded`` flows.

Each alias holds a parameter's type and constraints, and its description where both flows word it
alike. Where they do not (per run, per chunk), a flow adds its own: ``Annotated[ConcurrencyParam,
Field(description=...)]`` (pydantic merges the two ``Field``s). What the Prefect UI shows as a
parameter's description comes from the ``Args:`` section of the flow's docstring, which Prefect's
parameter schema puts over these.
"""

# No `from __future__ import annotations`: the flows' annotations are these objects themselves
# (flow.serve() pickles the flows, deployments resolve their annotations at load time).

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from tasks.deliverables import DEFAULT_WEB_TEXTURE_PX, FormatName
from tasks.models import KNOWN_MODELS

# A plain string checked in the flow's body (one clear error), offered as a choice in the UI form.
ModelParam = Annotated[
    str,
    Field(description="WaveSpeed Hunyuan3D model id.", json_schema_extra={"enum": sorted(KNOWN_MODELS)}),
]
ConcurrencyParam = Annotated[int, Field(ge=1, le=10_000)]
QueueHeadroomParam = Annotated[
    int | None,
    Field(
        ge=0,
        le=10_000,
        description="Predictions submitted beyond `concurrency`, queued by WaveSpeed until a slot frees, "
        "so the account never idles while a finished one is downloaded and replaced (each is billed at its "
        "submit like any other). Default: half of `concurrency`, rounded up; 0: never more than "
        "`concurrency`.",
    ),
]
StorageOptionsParam = Annotated[
    dict[str, Any] | None,
    Field(description="fsspec options for the manifest, images and output (endpoint, credentials)."),
]
InputsParam = Annotated[dict[str, Any] | None, Field(description="Extra model inputs applied to every item.")]
WaitTimeoutParam = Annotated[float | None, Field(gt=0)]
ResubmitUnknownParam = Annotated[
    bool,
    Field(description="Submit again items whose earlier submit may have been accepted. May bill twice."),
]
SubmitsPerMinuteParam = Annotated[int | None, Field(ge=1)]


def _comma_separated(value: Any) -> Any:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


# Deliverables (tasks/deliverables, flows/deliver.py); the CLI's flags are in hy3d/options.py.
FormatsParam = Annotated[
    tuple[FormatName, ...],
    BeforeValidator(_comma_separated),
    Field(
        description="Files to deliver per item (a list, or 'glb,web,usdz'): glb (mesh.glb as WaveSpeed made "
        "it, always kept), web (mesh.web.glb: meshopt-compressed, WebP textures), usdz (mesh.usdz for AR "
        "Quick Look), stl (mesh.stl), obj (mesh.obj.zip). Items already done get the ones they lack, "
        "without a WaveSpeed call."
    ),
]
DEFAULT_FORMATS: tuple[FormatName, ...] = ("glb",)
WebTexturePxParam = Annotated[
    int,
    Field(
        ge=16,
        le=16384,
        description=f"Web GLB: textures at most this many pixels on their longer side (default "
        f"{DEFAULT_WEB_TEXTURE_PX}).",
    ),
]
MaxFacesParam = Annotated[
    int | None,
    Field(ge=12, description="Web GLB and USDZ: simplify meshes with more faces to this many. Default: all."),
]
