"""Command-line options shared by ``hy3d run``, ``hy3d run-sharded`` and ``hy3d estimate``.

Each helper adds options that stand together in every command that has them, so each command's
``--help`` keeps its own order; where a command words an option's help its own way (per chunk, per
run), the text is an argument, ``hy3d run``'s being the default. Importing this does not import Prefect.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

MANIFEST_HELP = "CSV, JSONL or TXT manifest, a folder, or a glob (any fsspec URL)."
STORAGE_OPTION_HELP = (
    "fsspec option for manifest, images and output, e.g. endpoint_url=http://... (repeatable; "
    "VALUE is parsed as JSON when it can be)."
)
RETRY_FAILED_HELP = (
    "Submit again predictions that failed with a transient code (5000/5003/5004). Billed again."
)
RESUBMIT_UNKNOWN_HELP = (
    "Submit again items whose earlier submit may have been accepted (timeout, 502/504). May bill twice."
)


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, VALUE parsed as JSON when it can be."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def add_key_value_option(
    parser: argparse.ArgumentParser, flag: str, *, dest: str, help: str | None = None
) -> None:
    """A repeatable ``FLAG KEY=VALUE`` collected as a list of pairs in ``dest`` (``dict()`` it)."""
    parser.add_argument(
        flag, dest=dest, action="append", type=key_value, default=[], metavar="KEY=VALUE", help=help
    )


def add_manifest_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help=MANIFEST_HELP)


def add_model_option(parser: argparse.ArgumentParser) -> None:
    from tasks.settings import DEFAULT_MODEL

    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"WaveSpeed model id (default {DEFAULT_MODEL})."
    )


def add_concurrency_options(parser: argparse.ArgumentParser, *, per: str = "") -> None:
    """``--concurrency`` (the account's slots to keep busy) and ``--queue-headroom``."""
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help=f"Predictions WaveSpeed processes at once{per}: your account's concurrent task limit "
        "(Bronze 2, Silver 300, Gold 3000; default 2).",
    )
    parser.add_argument(
        "--queue-headroom",
        type=int,
        default=None,
        metavar="N",
        help=f"Predictions submitted beyond --concurrency{per}, queued by WaveSpeed until a slot frees, so "
        "the account never idles between items (default: half of --concurrency, rounded up; 0: none).",
    )


def add_item_options(
    parser: argparse.ArgumentParser, *, storage_option_help: str = STORAGE_OPTION_HELP
) -> None:
    """``--storage-option``, ``--input`` and ``--wait-timeout``: how every item is read and run."""
    add_key_value_option(parser, "--storage-option", dest="storage_options", help=storage_option_help)
    add_key_value_option(
        parser, "--input", dest="inputs", help="Extra model input applied to every item (repeatable)."
    )
    parser.add_argument("--wait-timeout", type=float, default=None, help="Deadline per prediction, seconds.")


def add_resubmit_options(
    parser: argparse.ArgumentParser,
    *,
    retry_failed_help: str = RETRY_FAILED_HELP,
    resubmit_unknown_help: str = RESUBMIT_UNKNOWN_HELP,
) -> None:
    """``--retry-failed`` and ``--resubmit-unknown``: the two ways to pay again, both off by default."""
    parser.add_argument("--retry-failed", action="store_true", help=retry_failed_help)
    parser.add_argument("--resubmit-unknown", action="store_true", help=resubmit_unknown_help)


def _formats(text: str) -> tuple[str, ...]:
    from tasks.deliverables import parse_formats
    from tasks.errors import UnknownFormatError

    try:
        return ("glb", *parse_formats(text))
    except UnknownFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_formats_options(parser: argparse.ArgumentParser) -> None:
    """``--formats``, ``--web-texture-px`` and ``--max-faces``: the files delivered per item."""
    parser.add_argument(
        "--formats",
        type=_formats,
        default=("glb",),
        metavar="glb,web,usdz,stl,obj",
        help="Files per item (default glb: mesh.glb, always kept as WaveSpeed made it): web = mesh.web.glb "
        "(meshopt, WebP, for web pages), usdz = mesh.usdz (AR Quick Look), stl = mesh.stl, obj = "
        "mesh.obj.zip. Items already done get the ones they lack, paying nothing. usdz needs the extra "
        "prefect-hunyuan3d[formats]; web needs gltfpack (python3 tools/formats_npm.py).",
    )
    parser.add_argument(
        "--web-texture-px",
        type=int,
        default=1024,
        metavar="PX",
        help="Web GLB: textures at most PX on their longer side (default 1024).",
    )
    parser.add_argument(
        "--max-faces",
        type=int,
        default=None,
        metavar="N",
        help="Web GLB and USDZ: simplify meshes with more faces to N (default: keep all).",
    )
