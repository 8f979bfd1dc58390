"""The CLI's flags, made from the flows' option models (:mod:`flows.options`).

Every option becomes ``--its-name`` (a trailing ``_s`` dropped: ``--wait-timeout``) with the model's
type, description and default; a dict option is a repeatable ``--singular KEY=VALUE``
(``--storage-option``, ``--input``); a list a comma-separated value. Flags left out are absent from
the parsed namespace, so the model's own defaults apply, and the model checks every bound: an
option is declared once. Importing this does not import Prefect.
"""

from __future__ import annotations

import argparse
import json
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from flows.options import FlowOptions, Options, from_flat

SHORT_FLAGS = {"output": "-o"}


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


class _KeyValues(argparse.Action):
    """A repeatable ``--flag KEY=VALUE`` collected into one dict."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: Any = None) -> None:
        key, item = value
        setattr(namespace, self.dest, {**getattr(namespace, self.dest, {}), key: item})


def flag_name(name: str, info: FieldInfo) -> str:
    """``wait_timeout_s`` -> ``--wait-timeout``; ``storage_options`` (a dict) -> ``--storage-option``."""
    stem = name.removesuffix("_s")
    if _origin(info.annotation) is dict:
        stem = stem.removesuffix("s")
    return "--" + stem.replace("_", "-")


def option_fields(options: type[FlowOptions]) -> Iterator[tuple[str, FieldInfo]]:
    """Every option of a flow, its groups' fields in place of the groups, in the form's order."""
    for name, info in options.model_fields.items():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            yield from group.model_fields.items()
        else:
            yield name, info


def add_option_flags(
    parser: argparse.ArgumentParser, options: type[FlowOptions], *, all_optional: bool = False
) -> None:
    """One flag per option of ``options`` (``manifest`` a positional argument). With
    ``all_optional``, no flag is required (``hy3d estimate`` takes the flags of ``hy3d run``)."""
    for name, info in option_fields(options):
        if name == "manifest":
            parser.add_argument("manifest", help=info.description)
            continue
        flags = [flag_name(name, info), *([SHORT_FLAGS[name]] if name in SHORT_FLAGS else [])]
        kind = _kind(info)
        if "action" not in kind and "choices" not in kind:
            kind.setdefault("metavar", flags[0].removeprefix("--").replace("-", "_").upper())
        if all_optional:
            kind.pop("required", None)
        parser.add_argument(*flags, dest=name, help=_help(info), **kind)


def options_from_args(options: type[Options], args: argparse.Namespace, **fallbacks: Any) -> Options:
    """The options the flags give (the rest: ``fallbacks``, then the model's defaults). Raises
    ValueError in one line naming the flag, for a value the model refuses."""
    fields = dict(option_fields(options))
    given = {**fallbacks, **{name: value for name, value in vars(args).items() if name in fields}}
    try:
        return from_flat(options, given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = next(str(part) for part in reversed(error["loc"]) if isinstance(part, str))  # not a list index
        flag = flag_name(name, fields[name]) if name in fields else name
        raise ValueError(f"{flag}: {error['msg']}") from exc


def _unwrapped(annotation: Any) -> Any:
    """``int | None`` -> ``int``."""
    if get_origin(annotation) in (Union, types.UnionType):
        return next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def _origin(annotation: Any) -> Any:
    """What an option holds, ``None`` taken out: ``int | None`` -> ``int``, ``dict[str, Any]`` -> ``dict``."""
    unwrapped = _unwrapped(annotation)
    return get_origin(unwrapped) or unwrapped


def _kind(info: FieldInfo) -> dict[str, Any]:
    """argparse's keywords for an option: how its value is read, its choices, whether required."""
    origin = _origin(info.annotation)
    kind: dict[str, Any] = {"default": argparse.SUPPRESS}
    if info.is_required():
        kind["required"] = True
    if origin is bool:
        kind["action"] = "store_true"
    elif origin is dict:
        kind.update(action=_KeyValues, type=key_value, metavar="KEY=VALUE")
    elif origin is Literal:
        kind["choices"] = list(get_args(info.annotation))
    elif origin in (int, float):
        kind["type"] = origin
    elif origin in (list, tuple):  # comma-separated, split by the model
        item = get_args(_unwrapped(info.annotation))[0]
        kind["metavar"] = ",".join(get_args(item)) if get_origin(item) is Literal else "A,B,..."
    return kind


def _help(info: FieldInfo) -> str:
    text = info.description or ""
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if default not in (None, False, (), [], {}):
        shown = ",".join(default) if isinstance(default, tuple) else default
        text += f" (default {shown})"
    return text.replace("%", "%%")
