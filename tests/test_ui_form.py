"""The on-demand deployment's "Custom run" form, in a real headless Chromium against a real Prefect server.

The server (tests/prefect_server.py) serves Prefect's UI; ``prefect --no-prompt deploy --all`` deploys
``prefect.yaml`` to it. The test opens the UI a person gets at the server's address (Prefect 3.9's
default, the V2 UI under ``/v2/``), goes from the deployment's page through "Run" > "Custom run", reads
the form as rendered, fills it in and submits it, then reads the flow run it made through the API.

``HY3D_WRITE_DOCS_SCREENSHOTS=1`` also writes ``docs/run-form.png`` (the documentation's picture of
the form); a normal run writes only under the test's tmp_path.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from playwright.sync_api import expect
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun

from flows.options import Advanced, Limits, RunOptions
from tests.browser import PageLog, chromium, needs_chromium
from tests.prefect_server import ROOT, Deployed, deployed, on_server, prefect_server, read_deployment

__all__ = ["deployed", "prefect_server"]  # the fixtures (tests/prefect_server.py), used below

ON_DEMAND = "hunyuan3d-meshes/on-demand"
SECTIONS = {"limits": Limits, "advanced": Advanced}
UI_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1560, "height": 900}  # the form itself about 1280 px wide
DOCS_SCREENSHOT = ROOT / "docs" / "run-form.png"
DOCS_SCREENSHOT_MAX_BYTES = 400_000
WRITE_DOCS_SCREENSHOTS = os.environ.get("HY3D_WRITE_DOCS_SCREENSHOTS") == "1"

# The form as a person sees it: each top-level field of the "Parameters" part (a label outside any
# <fieldset>: Prefect puts a field's input, and a section's fields, in its <fieldset>), the text it
# shows (innerText: only what is rendered), and the fields inside it (a section's).
FORM_OUTLINE_JS = """
() => {
    const heading = [...document.querySelectorAll('h1, h2, h3, h4')]
        .find(h => h.textContent.trim() === 'Parameters');
    if (!heading || !heading.nextElementSibling) return null;
    const form = heading.nextElementSibling;
    const named = labels => labels.filter(l => l.textContent.trim() !== '');
    // The largest element around each label that holds no other of the labels: its field.
    const fields = (within, labels) => labels.map(label => {
        let field = label;
        while (field.parentElement !== within
               && labels.filter(other => field.parentElement.contains(other)).length === 1) {
            field = field.parentElement;
        }
        return field;
    });
    const top = named([...form.querySelectorAll('label')].filter(l => !l.closest('fieldset')));
    return fields(form, top).map((field, i) => {
        const inner = named([...field.querySelectorAll('label')].filter(l => l !== top[i]));
        return {
            label: top[i].textContent.trim(),
            text: field.innerText,
            nested: fields(field, inner).map((f, j) => ({
                label: inner[j].textContent.trim(), text: f.innerText,
            })),
        };
    });
}
"""


def title_of(name: str, prop: dict[str, Any], definitions: dict[str, Any]) -> str:
    """What Prefect heads a field with: its schema title, else its model's (a section's), else its name."""
    if "title" in prop:
        return str(prop["title"])
    if "$ref" in prop:
        return str(definitions[prop["$ref"].rsplit("/", 1)[-1]]["title"])
    return name


def field_names(labels: list[str], properties: dict[str, Any], definitions: dict[str, Any]) -> list[str]:
    """The parameter (or grouped option) each form label stands for: Prefect labels a field with its
    title, plus " (Optional)" when it has a default. A label of no field stays as it is."""
    by_title = {title_of(name, prop, definitions): name for name, prop in properties.items()}
    return [by_title.get(label.removesuffix(" (Optional)"), label) for label in labels]


def created_run(api_url: str, name: str) -> list[FlowRun]:
    async def go(client: PrefectClient) -> list[FlowRun]:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))

    return on_server(api_url, go)


def write_docs_screenshot(png: bytes) -> None:
    """The form's picture for the docs: a 256-colour PNG (the UI is flat colours) under the size cap."""
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    assert out.tell() < DOCS_SCREENSHOT_MAX_BYTES, f"{out.tell()} bytes"
    DOCS_SCREENSHOT.write_bytes(out.getvalue())


@needs_chromium
def test_custom_run_form_shows_few_fields_groups_the_rest_and_starts_the_run(
    deployed: Deployed, prefect_server: str, tmp_path: Path
) -> None:
    assert deployed.deploy.returncode == 0, deployed.deploy.stdout + deployed.deploy.stderr
    deployment = read_deployment(prefect_server, ON_DEMAND)
    schema = deployment.parameter_openapi_schema
    assert schema is not None
    ui = prefect_server.removesuffix("/api")
    # The UI is served, and is told to call this server's API (not the default 127.0.0.1:4200).
    settings = httpx.get(f"{ui}/ui-settings", timeout=10).json()
    assert settings["api_url"] == prefect_server

    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(UI_TIMEOUT_MS)
        log = PageLog(page)
        # The UI a person gets at the server's address, then the deployment's page.
        page.goto(f"{ui}/")
        page.wait_for_url(re.compile(r"/v2/"))
        page.goto(f"{ui}/v2/deployments/deployment/{deployment.id}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run").click()
        page.wait_for_url(re.compile(rf"/v2/deployments/deployment/{deployment.id}/run"))
        manifest_label = title_of("manifest", schema["properties"]["manifest"], {})
        page.get_by_label(manifest_label, exact=True).wait_for()

        outline: list[dict[str, Any]] = page.evaluate(FORM_OUTLINE_JS)
        assert outline, "no Parameters part in the form"
        properties = schema["properties"]
        definitions = schema.get("definitions", {})
        names = field_names([field["label"] for field in outline], properties, definitions)

        # At most 8 fields, manifest and output first: exactly the flow's parameters, in their order.
        assert len(names) <= 8, names
        assert names[:2] == ["manifest", "output"]
        assert names == sorted(properties, key=lambda name: properties[name]["position"])
        assert names == list(RunOptions.model_fields)
        fields = dict(zip(names, outline, strict=True))
        for name, field in fields.items():
            description = RunOptions.model_fields[name].description or SECTIONS[name].__doc__
            assert description and description in field["text"], f"{name}: no description shown"

        # The rest in two sections, each with all its options, described; none of them on top.
        assert {name for name, field in fields.items() if field["nested"]} == set(SECTIONS)
        for section, group in SECTIONS.items():
            # Headed as the group ("Limits and retries"), not as the parameter's name.
            assert fields[section]["label"] == f"{group.model_config['title']} (Optional)"
            definition = definitions[properties[section]["$ref"].rsplit("/", 1)[-1]]
            nested = fields[section]["nested"]
            shown = field_names([f["label"] for f in nested], definition["properties"], definitions)
            assert shown == list(group.model_fields), section
            for option, field in zip(group.model_fields, nested, strict=True):
                description = group.model_fields[option].description
                assert description and description in field["text"], f"{section}.{option}: no description"
        assert not {"retry_failed", "queue_headroom", "storage_options"} & set(names)
        labels = [field["label"] for field in outline]
        assert not [label for label in labels if label.startswith(("Retry Failed", "Queue Headroom"))]

        # Fill it in as a person would: the two required fields, a concurrency, a budget, one option of a
        # section; then submit.
        run_name = f"photos-2026-12-{uuid.uuid4().hex[:6]}"
        typed = {"manifest": "s3://photos/2026-12/*.png", "output": "s3://meshes/2026-12"}
        page.get_by_label("Run Name", exact=True).fill(run_name)
        page.get_by_label(manifest_label, exact=True).fill(typed["manifest"])
        label = {name: title_of(name, prop, definitions) for name, prop in properties.items()}
        page.get_by_label(label["output"], exact=True).fill(typed["output"])
        page.get_by_label(f"{label['concurrency']} (Optional)", exact=True).fill("3")
        # An optional number is a "float | None" switch, None picked: pick float, then type.
        budget_label = page.get_by_text(f"{label['max_cost']} (Optional)", exact=True)
        budget = page.locator("div.group").filter(has=budget_label)
        budget.get_by_role("tab", name="float").click()
        budget.get_by_role("spinbutton").fill("1.5")
        retry = page.get_by_role("switch", name=re.compile(r"^Retry Failed"))
        retry.click()
        expect(retry).to_have_attribute("aria-checked", "true")

        page.evaluate("window.scrollTo(0, 0)")  # the sticky side bar where it belongs, at the top
        screenshot = tmp_path / "run-form.png"
        page.screenshot(path=screenshot, full_page=True)
        form_box = page.locator("form").bounding_box()
        assert form_box is not None
        with Image.open(screenshot) as shot:
            assert shot.width == VIEWPORT["width"]
            assert shot.height >= form_box["y"] + form_box["height"] - 1  # the whole form, not a viewport
        if WRITE_DOCS_SCREENSHOTS:
            # The breadcrumb and the form, without the side bar: about 1280 px wide.
            clip = {
                "x": form_box["x"] - 16,
                "y": 0,
                "width": form_box["width"] + 32,
                "height": form_box["y"] + form_box["height"] + 16,
            }
            write_docs_screenshot(page.screenshot(full_page=True, clip=clip))

        page.get_by_role("button", name="Submit", exact=True).click()
        # Prefect leaves the form for the deployment's page once the run is created.
        page.wait_for_url(lambda url: not url.split("?")[0].endswith("/run"))
        assert [error for error in log.errors if error.startswith("pageerror")] == []

    (flow_run,) = created_run(prefect_server, run_name)
    assert flow_run.deployment_id == deployment.id
    parameters = flow_run.parameters
    assert (parameters["manifest"], parameters["output"]) == (typed["manifest"], typed["output"])
    assert parameters["concurrency"] == 3
    assert parameters["max_cost"] == 1.5
    assert parameters["limits"]["retry_failed"] is True
    assert parameters["limits"]["resubmit_unknown"] is False
    # Valid for the flow as entered (the deployment enforces its schema), waiting for a worker.
    assert RunOptions.model_validate(parameters).limits.retry_failed
    assert flow_run.state is not None and flow_run.state.name in {"Scheduled", "Pending"}
