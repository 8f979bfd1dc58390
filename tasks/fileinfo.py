"""Reading what fsspec's ``info()`` says about a file, whichever store answered."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

# Where the stores put the last-modified time: local and memory ("mtime", "created"), s3fs
# ("LastModified"), adlfs ("last_modified"), gcsfs ("updated").
_MODIFIED_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "created")


def modified_at(info: Mapping[str, Any]) -> float | None:
    """When the file was last written (epoch seconds), or None when ``info`` does not say."""
    for name in _MODIFIED_FIELDS:
        value = info.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None
