"""Every Hunyuan3D model: a happy path end to end, and validation that names row and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator import EmulatorServer
from tests.conftest import run_flow
from tests.test_flow import assert_landed

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINGLE_IMAGE = [
    "wavespeed-ai/hunyuan3d/v2-mini",
    "wavespeed-ai/hunyuan3d/v2-base",
    "wavespeed-ai/hunyuan3d/v2.1",
    "wavespeed-ai/hunyuan-3d-v3.1/image-to-3d-rapid",
    "wavespeed-ai/hunyuan3d-v3/image-to-3d",
]


@pytest.mark.parametrize("model", SINGLE_IMAGE)
def test_single_image_models(model: str, emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    manifest = samples / "m.csv"
    manifest.write_text("id,image\nball,red-ball.png\n")

    state, _ = run_flow(manifest=str(manifest), output=str(tmp_path / "out"), model=model)

    assert state.is_completed(), state.message
    metadata = assert_landed(tmp_path / "out", "ball")
    assert metadata["model"] == model
    assert emulator.stats.submits_by_model[model] == 1
    if "hunyuan3d-v3/" in model or "v3.1" in model:
        # v3 models also return a preview image: stored next to the mesh and listed.
        extras = metadata["output"]["other_files"]
        assert [extra["path"] for extra in extras] == ["output-1.png"]
        assert (tmp_path / "out" / "ball" / "output-1.png").stat().st_size == extras[0]["bytes"]


def test_multi_view_manifest_uploads_every_view(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest = samples / "views.csv"
    manifest.write_text(
        "id,image,back_image_url,left_image_url,num_inference_steps,textured_mesh\n"
        "mug,blue-mug.png,red-ball.png,gold-star.png,30,true\n"
    )
    output = tmp_path / "out"

    state, _ = run_flow(
        manifest=str(manifest),
        output=str(output),
        model="wavespeed-ai/hunyuan3d-v2-multi-view",
        inputs={"guidance_scale": 5},
    )

    assert state.is_completed(), state.message
    metadata = assert_landed(output, "mug")
    sent = metadata["inputs"]
    assert {"front_image_url", "back_image_url", "left_image_url"} <= set(sent)
    assert sent["num_inference_steps"] == 30 and sent["textured_mesh"] is True  # typed from CSV text
    assert sent["guidance_scale"] == 5  # the flow-level default, not overridden by the row
    assert set(metadata["other_images"]) == {"back_image_url", "left_image_url"}
    assert emulator.stats.total_uploads == 3


def test_row_values_override_flow_inputs(emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    manifest = samples / "m.csv"
    manifest.write_text("id,image,face_count\nlow,red-ball.png,40000\ndefault,blue-mug.png,\n")

    state, _ = run_flow(
        manifest=str(manifest),
        output=str(tmp_path / "out"),
        model="wavespeed-ai/hunyuan3d-v3/image-to-3d",
        inputs={"face_count": 100000, "generate_type": "LowPoly"},
    )

    assert state.is_completed(), state.message
    low = json.loads((tmp_path / "out" / "low" / "metadata.json").read_text())["inputs"]
    default = json.loads((tmp_path / "out" / "default" / "metadata.json").read_text())["inputs"]
    assert (low["face_count"], low["generate_type"]) == (40000, "LowPoly")
    assert (default["face_count"], default["generate_type"]) == (100000, "LowPoly")


def test_rapid_text_to_3d_refuses_a_long_prompt_by_row_and_field_before_paying(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """v3.1 text-to-3d-rapid takes at most 200 characters of prompt: a longer one is refused here,
    before anything is paid; the rest of the batch lands."""
    manifest = tmp_path / "prompts.jsonl"
    manifest.write_text(
        json.dumps({"id": "chair", "prompt": "A wooden chair"})
        + "\n"
        + json.dumps({"id": "essay", "prompt": "a very detailed teapot " * 10})
        + "\n"
    )
    output = tmp_path / "out"

    _, summary = run_flow(
        manifest=str(manifest), output=str(output), model="wavespeed-ai/hunyuan-3d-v3.1/text-to-3d-rapid"
    )

    assert summary.counts == {"completed": 1, "invalid": 1}
    rejected = next(item for item in summary.items if item.status == "invalid")
    assert rejected.id == "essay"
    assert "row 2" in rejected.error and "'prompt'" in rejected.error and "200" in rejected.error
    assert_landed(output, "chair")
    assert emulator.stats.submits_accepted == 1


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_text_to_3d_prompt_manifest(kind: str, emulator: EmulatorServer, tmp_path: Path) -> None:
    if kind == "txt":
        manifest = tmp_path / "prompts.txt"
        manifest.write_text("# one prompt per line\nA red ceramic teapot\nA wooden chair\n")
    else:
        manifest = tmp_path / "prompts.jsonl"
        manifest.write_text(
            json.dumps({"id": "red-ceramic-teapot", "prompt": "A red ceramic teapot", "enable_pbr": True})
            + "\n"
            + json.dumps({"prompt": "A wooden chair"})
            + "\n"
        )
    output = tmp_path / "out"

    state, summary = run_flow(
        manifest=str(manifest), output=str(output), model="wavespeed-ai/hunyuan3d-v3/text-to-3d"
    )

    assert state.is_completed(), state.message
    assert summary.landed == 2
    # Ids: explicit, or a slug of the prompt.
    teapot = assert_landed(output, "red-ceramic-teapot" if kind == "jsonl" else "a-red-ceramic-teapot")
    assert teapot["inputs"]["prompt"] == "A red ceramic teapot"
    assert teapot["image"] is None
    assert_landed(output, "a-wooden-chair")
    assert emulator.stats.submits_for_prompt("A wooden chair") == 1
    assert emulator.stats.total_uploads == 0


def test_sketch_to_3d_needs_a_prompt_per_row(emulator: EmulatorServer, samples: Path, tmp_path: Path) -> None:
    manifest = samples / "sketches.csv"
    manifest.write_text(
        "id,image,prompt\nstar,gold-star.png,a golden star ornament\nnoprompt,blue-mug.png,\n"
    )

    state, summary = run_flow(
        manifest=str(manifest), output=str(tmp_path / "out"), model="wavespeed-ai/hunyuan3d-v3/sketch-to-3d"
    )

    assert state.is_failed()
    assert summary.landed == 1
    assert_landed(tmp_path / "out", "star")
    bad = next(item for item in summary.items if item.id == "noprompt")
    assert bad.status == "invalid"
    assert "row 3" in bad.error and "'prompt'" in bad.error and "required" in bad.error
    assert emulator.stats.submits_accepted == 1


@pytest.mark.parametrize(
    ("model", "header", "row", "field", "expected"),
    [
        ("wavespeed-ai/hunyuan3d-v3/image-to-3d", "face_count", "10", "face_count", "greater than or equal"),
        ("wavespeed-ai/hunyuan3d-v3/image-to-3d", "polygon_type", "hexagon", "polygon_type", "triangle"),
        (
            "wavespeed-ai/hunyuan3d-v2-multi-view",
            "back_image_url",
            "red-ball.png",
            "left_image_url",
            "required",
        ),
        (
            "wavespeed-ai/hunyuan3d-v2-multi-view",
            "num_inference_steps",
            "many",
            "num_inference_steps",
            "integer",
        ),
        (
            "wavespeed-ai/hunyuan3d-v3/image-to-3d",
            "back_image",
            "nothere.png",
            "back_image",
            "does not exist",
        ),
    ],
)
def test_invalid_inputs_are_rejected_before_paying(
    model: str,
    header: str,
    row: str,
    field: str,
    expected: str,
    emulator: EmulatorServer,
    samples: Path,
    tmp_path: Path,
) -> None:
    manifest = samples / "m.csv"
    manifest.write_text(f"id,image,{header}\nbad,red-ball.png,{row}\n")

    state, summary = run_flow(manifest=str(manifest), output=str(tmp_path / "out"), model=model)

    assert state.is_failed()
    (item,) = summary.items
    assert item.status == "invalid"
    assert "row 2" in item.error and f"'{field}'" in item.error and expected in item.error, item.error
    assert emulator.stats.submits_received == 0 and emulator.stats.total_uploads == 0


def test_unknown_flow_input_is_a_configuration_error(
    emulator: EmulatorServer, samples: Path, tmp_path: Path
) -> None:
    manifest = samples / "m.csv"
    manifest.write_text("id,image\nball,red-ball.png\n")
    state, error = run_flow(
        manifest=str(manifest), output=str(tmp_path / "out"), inputs={"face_count": 50000}
    )
    assert state.is_failed()
    assert "face_count" in str(error) and "v2-mini" in str(error)
    assert sum(emulator.stats.requests.values()) == 0
