"""Output links: publishing a prediction's files on the CDN, and their expiry (`download_403_rate`).

A prediction drawn for the fault has the links handed out until its first download expire at that
download: every such name answers 403 from then on, and the prediction gets fresh names (further
names of the same files) that later answers hand out.
"""

from __future__ import annotations

import base64

from emulator.render import OutputFile
from emulator.state import EmulatorState
from emulator.store import Blob, Prediction, PublishedFile, new_output_name

MESH_SERVED_TYPE = "application/octet-stream"
"""The realistic profile serves meshes without their type, as objects stored without one are."""


def publish(state: EmulatorState, prediction: Prediction, files: list[OutputFile]) -> list[PublishedFile]:
    """Store the files on the CDN (or inline them as base64) under fresh names."""
    published = []
    for f in files:
        extension = "" if prediction.realistic else f.extension
        entry = PublishedFile("", extension, f.content_type, f.format, len(f.data), f.is_mesh)
        if prediction.base64_output:
            entry.inline = base64.b64encode(f.data).decode("ascii")
        else:
            entry.name = new_output_name(extension)
            served = MESH_SERVED_TYPE if prediction.realistic and f.is_mesh else f.content_type
            state.store.outputs[entry.name] = Blob(f.data, served, owner=prediction.id)
        published.append(entry)
    return published


def _renew(state: EmulatorState, prediction: Prediction) -> None:
    store = state.store
    for entry in prediction.files:
        if entry.inline is not None:
            continue
        fresh = new_output_name(entry.extension)
        store.outputs[fresh] = store.outputs[entry.name]
        store.expired_outputs.add(entry.name)
        entry.name = fresh
    state.stats.record_output_links(prediction.id, [f.name for f in prediction.files])


def link_expired(state: EmulatorState, name: str, blob: Blob) -> bool:
    """Whether the link `name` answers 403 "Request has expired" (renewing its prediction's links
    when this is the first download of a prediction drawn for `download_403_rate`)."""
    if name in state.store.expired_outputs:
        return True
    prediction = state.store.predictions.get(blob.owner)
    if prediction is None or not prediction.links_expire:
        return False
    prediction.links_expire = False
    _renew(state, prediction)
    state.stats.record_fault("download_403")
    return True
