"""Read a manifest of images into a list of items to turn into meshes.

A manifest is named by an fsspec URL or a local path and is one of:

* ``*.csv``: a header row with an ``image`` column, an optional ``id`` column and any other columns
  (per-row inputs, kept in :attr:`ManifestItem.fields`);
* ``*.jsonl`` / ``*.ndjson``: one JSON object per line with an ``image`` key, an optional ``id``;
* ``*.txt``: one image per line;
* a directory: every image file directly inside it;
* a glob such as ``s3://bucket/photos/*.png``: every matching image file.

Everything is checked here, before anything is uploaded or paid for. A problem with one row never
stops the others: it becomes a :class:`RowProblem` in :attr:`Manifest.errors` naming the row (the line
number an editor shows) and the field. Only problems with the manifest as a whole (unreadable, not
UTF-8, empty, no ``image`` column...) raise :class:`ManifestError`. Nothing here raises anything else:
storage errors are turned into one of the two.

Images are either ``http(s)`` URLs, passed through untouched for the API to fetch, or files on
storage, resolved to absolute paths (relative paths against the manifest's folder) and, by default,
checked to exist. Image contents are not opened here.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import io
import json
import posixpath
import re
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote, urlsplit

import fsspec.core

from tasks.errors import ManifestError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_ID_LENGTH",
    "RESERVED_IDS",
    "Manifest",
    "ManifestFormat",
    "ManifestItem",
    "RowProblem",
    "load_manifest",
    "validate_item_id",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp"})
"""File extensions (lower case) accepted as images."""

MAX_ID_LENGTH = 200
"""Longest accepted item id, in characters."""

RESERVED_IDS: frozenset[str] = frozenset({"runs"})
"""Ids that would collide with the output folder's own entries (``DEST/runs/``); compared case-folded."""

ManifestFormat: TypeAlias = Literal["csv", "jsonl", "txt", "directory", "glob"]

_FILE_FORMATS: dict[str, ManifestFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
}
_SUPPORTED = (
    "supported manifests are a .csv file (with an 'image' column), a .jsonl/.ndjson file "
    '(one JSON object with an "image" key per line), a .txt file (one image per line), '
    "a directory of images, or a glob such as s3://bucket/photos/*.png"
)
_GLOB_CHARS = frozenset("*?[")
_ID_WILDCARDS = frozenset("*?[]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_ALLOWED_EXTENSIONS = ", ".join(sorted(IMAGE_EXTENSIONS))
_SHOW_LIMIT = 120


@dataclass(frozen=True)
class ManifestItem:
    """One image to process."""

    row: int
    """1-based: the line number for CSV (header = line 1), JSONL and TXT; the position in the sorted
    listing of image files for a directory or glob."""
    id: str
    """The explicit ``id`` column/key, else the stem of the image's file name (or URL path)."""
    image: str
    """An http(s) URL exactly as given, or the absolute fsspec URL/path of the image file."""
    is_url: bool
    """True for an http(s) URL to pass through; False for a file on storage to upload."""
    fields: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The row's other columns/keys (not ``image``/``id``), as strings; blank values are left out.
    In a prompt manifest (text-to-3d) the prompt is ``fields["prompt"]`` and ``image`` is empty."""
    images: Mapping[str, tuple[str, bool]] = field(default_factory=dict, hash=False)
    """Further image columns (other views), resolved like ``image``: column -> (image, is_url)."""


@dataclass(frozen=True)
class RowProblem:
    """Something wrong (an error) or suspicious (a warning) with one row of a manifest."""

    row: int
    field: str
    """``"image"``, ``"id"``, a column name, or ``""`` when it is about the whole row."""
    message: str
    manifest: str = ""
    """Short name of the manifest (its file name) shown in front of the row number."""
    id: str | None = None
    """The row's id when it has a usable one (the summary names a rejected row by it)."""

    def __str__(self) -> str:
        where = f"{self.manifest} row {self.row}" if self.manifest else f"row {self.row}"
        if self.field:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Manifest:
    """A manifest read and checked by :func:`load_manifest`."""

    source: str
    format: ManifestFormat
    items: list[ManifestItem]
    """The valid rows, in manifest order."""
    errors: list[RowProblem]
    """Problems of the rows that were rejected (a row can have several)."""
    warnings: list[RowProblem]
    """Things that were accepted but look wrong, e.g. unknown extra columns."""
    label: str = ""
    """Short name shown in messages (the file name, ``photos/`` or ``photos/*.png``); pass it as
    ``RowProblem(..., manifest=label)`` for problems found later about an item."""


def validate_item_id(item_id: str) -> str | None:
    """Return ``None`` when ``item_id`` can be used as an item id, else the reason it cannot.

    Ids become folder names under the destination, so they must be safe as one path segment on any
    fsspec storage. The reason reads well after ``f"invalid id {item_id!r}: "``.
    """
    if not item_id:
        return "must not be empty"
    if len(item_id) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters (it has {len(item_id)})"
    for char in item_id:
        if char in "/\\":
            return "must not contain '/' or '\\' (each id becomes a folder name)"
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"must not contain control characters (found U+{ord(char):04X})"
        if char in _ID_WILDCARDS:
            return "must not contain the wildcard characters * ? [ ] (storage tools would expand them)"
    if item_id != item_id.strip():
        return "must not start or end with whitespace"
    if ".." in item_id:
        return "must not contain '..'"
    if item_id.startswith("."):
        return "must not start with '.'"
    if item_id.casefold() in RESERVED_IDS:
        return f"{item_id!r} is reserved (the destination keeps its run records in runs/)"
    return None


def load_manifest(
    source: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    check_exists: bool = True,
    known_fields: Collection[str] = (),
    primary: str = "image",
    image_columns: Collection[str] = (),
) -> Manifest:
    """Read and check the manifest at ``source`` (an fsspec URL or a local path).

    ``storage_options`` go to the filesystem (``fsspec.core.url_to_fs``). With ``check_exists`` every
    image file is checked to exist (one metadata call each); URLs are never fetched. ``known_fields``
    are the extra columns the caller understands; any other column gets a warning. ``primary`` is the
    required main column: ``"image"``, or ``"prompt"`` for a manifest of text prompts (each TXT line
    is then a prompt). ``image_columns`` are further columns holding images (other views of the
    object), resolved and checked like ``image``.

    Raises :class:`ManifestError` for problems with the manifest as a whole; row problems are
    returned in :attr:`Manifest.errors`.
    """
    try:
        fs, path = fsspec.core.url_to_fs(source, **dict(storage_options or {}))
    except Exception as exc:
        raise ManifestError(
            f"manifest {source!r}: cannot open its storage: {_describe(exc)}", source
        ) from exc
    fmt = _detect_format(source, fs, path)
    if primary != "image" and fmt in ("directory", "glob"):
        raise ManifestError(
            f"manifest {source!r}: a folder or glob lists images, but this model takes a {primary!r} "
            "per item: use a CSV, JSONL or TXT manifest",
            source,
        )
    loader = _Loader(
        source,
        fs,
        path,
        fmt,
        check_exists=check_exists,
        known_fields=known_fields,
        primary=primary,
        image_columns=image_columns,
    )
    return loader.load()


# --------------------------------------------------------------------------------------------------
# Internals


@dataclass
class _RawRow:
    """One row as parsed from the manifest, before its image and id are checked."""

    row: int
    image: str | None  # None when the row has no usable image value (a problem is already recorded)
    id: str | None  # the explicit id, None when absent or blank
    fields: dict[str, str]
    problems: list[RowProblem]


@dataclass(frozen=True)
class _Resolved:
    image: str
    is_url: bool
    stem: str  # file name without extension, for a derived id ("" when there is none)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _slug(text: str, limit: int = 60) -> str:
    """A readable id from free text: lowercase words joined by dashes."""
    words = re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKD", text).lower())
    return "-".join(words)[:limit].strip("-")


def _detect_format(source: str, fs: Any, path: str) -> ManifestFormat:
    if _GLOB_CHARS.intersection(path) and not _safe(fs.exists, path):
        return "glob"
    suffix = posixpath.splitext(path.rstrip("/"))[1].lower()
    if suffix in _FILE_FORMATS:
        return _FILE_FORMATS[suffix]
    if _safe(fs.isdir, path):
        return "directory"
    if _safe(fs.exists, path):
        shown = f"'{suffix}'" if suffix else "without an extension"
        raise ManifestError(f"manifest {source!r}: unsupported manifest type ({shown}); {_SUPPORTED}", source)
    raise ManifestError(f"manifest {source!r}: does not exist; {_SUPPORTED}", source)


def _safe(check: Any, path: str) -> bool:
    """Run an existence-style check, treating storage errors as 'no'."""
    try:
        return bool(check(path))
    except Exception:
        return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _show(value: str) -> str:
    """Quote a user value for a message, shortened when very long (a data: URL, say)."""
    if len(value) <= _SHOW_LIMIT:
        return repr(value)
    return f"{value[:_SHOW_LIMIT]!r}... ({len(value)} characters)"


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending), splitting like an editor does (\\n, \\r\\n, \\r)."""
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        yield number, line.rstrip("\r\n")


def _within(path: str, base: str) -> bool:
    """Whether normalised ``path`` is ``base`` or inside it."""
    if base in ("", "."):
        return not (path == ".." or path.startswith(("../", "/")))
    if base == "/":
        return path.startswith("/")
    base = base.rstrip("/")
    return path == base or path.startswith(base + "/")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


class _Loader:
    def __init__(
        self,
        source: str,
        fs: Any,
        path: str,
        fmt: ManifestFormat,
        *,
        check_exists: bool,
        known_fields: Collection[str],
        primary: str = "image",
        image_columns: Collection[str] = (),
    ) -> None:
        self.primary = primary
        self.image_columns = tuple(image_columns)
        self.source = source
        self.fs = fs
        self.path = path
        self.format: ManifestFormat = fmt
        self.check_exists = check_exists
        self.known = {primary, "id", *known_fields, *self.image_columns}
        protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
        self.protocols = {str(p).lower() for p in protocols}
        self.is_local = "file" in self.protocols
        # Build image paths the way the manifest was named: URLs with the protocol, plain paths without.
        self.keep_protocol = fsspec.core.split_protocol(source)[0] is not None
        if fmt in ("csv", "jsonl", "txt"):
            self.base = posixpath.dirname(path)
            self.label = posixpath.basename(path)
        elif fmt == "directory":
            self.base = path.rstrip("/") or "/"
            self.label = (posixpath.basename(self.base) or self.base) + "/"
        else:
            self.base = posixpath.dirname(path)
            self.label = posixpath.join(posixpath.basename(self.base), posixpath.basename(path))
        self.items: list[ManifestItem] = []
        self.errors: list[RowProblem] = []
        self.warnings: list[RowProblem] = []
        self.id_rows: dict[str, int] = {}
        self.folded_ids: dict[str, tuple[str, int]] = {}

    # -- entry point ---------------------------------------------------------------------------------

    def load(self) -> Manifest:
        rows: Iterable[_RawRow]
        if self.format == "csv":
            rows = self._parse_csv(self._read_text())
        elif self.format == "jsonl":
            rows = self._parse_jsonl(self._read_text())
        elif self.format == "txt":
            rows = self._parse_txt(self._read_text())
        else:
            rows = self._list_images()
        for raw in rows:
            self._add(raw)
        if not self.items and not self.errors:
            what = "only a header" if self.format == "csv" else "only blank or comment lines"
            raise self._fail(f"contains no images ({what})")
        return Manifest(self.source, self.format, self.items, self.errors, self.warnings, self.label)

    def _fail(self, what: str, line: int | None = None, field: str | None = None) -> ManifestError:
        where = f"manifest {self.source!r}"
        if line is not None:
            where += f" line {line}"
        if field:
            where += f", field {field!r}"
        return ManifestError(f"{where}: {what}", self.source, line, field)

    def _problem(self, row: int, field: str, message: str) -> RowProblem:
        return RowProblem(row, field, message, self.label)

    # -- reading -------------------------------------------------------------------------------------

    def _read_text(self) -> str:
        try:
            with self.fs.open(self.path, "rb") as handle:
                data: bytes = handle.read()
        except FileNotFoundError as exc:
            raise self._fail("does not exist") from exc
        except IsADirectoryError as exc:
            raise self._fail("is a directory, not a file") from exc
        except Exception as exc:
            raise self._fail(f"cannot be read: {_describe(exc)}") from exc
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise self._fail("is UTF-16 encoded; save it as UTF-8", line=1)
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line_start = data.rfind(b"\n", 0, exc.start) + 1
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - line_start + 1
            raise self._fail(
                f"is not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); save it as UTF-8",
                line=line,
            ) from exc

    def _parse_csv(self, text: str) -> Iterator[_RawRow]:
        reader = csv.reader(io.StringIO(text, newline=""))
        header: list[str] | None = None
        warned_unnamed: set[int] = set()
        previous_end = 0
        try:
            for cells in reader:
                line = previous_end + 1  # a quoted value can span lines: report where the row starts
                previous_end = reader.line_num
                values = [cell.strip() for cell in cells]
                if not any(values) or values[0].startswith("#"):
                    continue
                if header is None:
                    header = self._check_header(values, line)
                    continue
                problems: list[RowProblem] = []
                if len(values) > len(header) and any(values[len(header) :]):
                    problems.append(
                        self._problem(
                            line,
                            "",
                            f"has {len(values)} values but the header has {len(header)} columns "
                            "(a value containing a comma must be in double quotes)",
                        )
                    )
                    yield _RawRow(line, None, None, {}, problems)
                    continue
                row: dict[str, str] = {}
                for index, name in enumerate(header):
                    value = values[index] if index < len(values) else ""
                    if name:
                        row[name] = value
                    elif value and index not in warned_unnamed:
                        warned_unnamed.add(index)
                        self.warnings.append(
                            self._problem(
                                line,
                                "",
                                f"column {index + 1} has no name in the header; its values are ignored",
                            )
                        )
                image = row.get(self.primary, "")
                if not image:
                    problems.append(self._problem(line, self.primary, f"is empty; {self._give()}"))
                fields = {k: v for k, v in row.items() if k not in (self.primary, "id") and v}
                yield _RawRow(line, image or None, row.get("id") or None, fields, problems)
        except csv.Error as exc:
            raise self._fail(f"is not valid CSV: {exc}", line=reader.line_num) from exc
        if header is None:
            raise self._fail("contains no images (it is empty)")

    def _check_header(self, names: list[str], line: int) -> list[str]:
        seen: set[str] = set()
        for name in names:
            if name and name in seen:
                raise self._fail(f"column {name!r} appears more than once in the header", line=line)
            seen.add(name)
        if self.primary not in seen:
            found = ", ".join(repr(name) for name in names if name) or "none"
            hint = ""
            if any(name.lower() == self.primary for name in names):
                hint = f"; column names are case-sensitive: name it {self.primary!r}"
            elif len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
                hint = "; columns must be separated by commas"
            elif posixpath.splitext(names[0])[1].lower() in IMAGE_EXTENSIONS or "://" in names[0]:
                hint = f"; the first line looks like data: add a header line such as '{self.primary},id'"
            raise self._fail(f"has no {self.primary!r} column (found columns: {found}){hint}", line=line)
        for name in names:
            if name and name not in self.known:
                self.warnings.append(self._problem(line, name, self._unknown("column", name)))
        return names

    def _unknown(self, kind: str, name: str) -> str:
        expected = [self.primary, "id", *sorted(self.known - {self.primary, "id"})]
        message = f"unknown {kind} {name!r} (expected: {', '.join(expected)})"
        close = difflib.get_close_matches(name, expected, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        return message

    def _parse_jsonl(self, text: str) -> Iterator[_RawRow]:
        warned: set[str] = set()
        for line, content in _lines(text):
            content = content.strip()
            if not content or content.startswith("#"):
                continue
            try:
                obj = json.loads(content)
            except json.JSONDecodeError as exc:
                message = f"is not valid JSON ({exc.msg} at column {exc.colno})"
                yield _RawRow(line, None, None, {}, [self._problem(line, "", message)])
                continue
            if not isinstance(obj, dict):
                message = f'must be a JSON object such as {{"image": "a.png"}}, not {_json_type(obj)}'
                yield _RawRow(line, None, None, {}, [self._problem(line, "", message)])
                continue
            problems: list[RowProblem] = []
            image: str | None = None
            raw_image = obj.get(self.primary)
            if self.primary not in obj:
                problems.append(
                    self._problem(
                        line,
                        self.primary,
                        f'is missing; every line needs {_article(self.primary)} "{self.primary}" key',
                    )
                )
            elif not isinstance(raw_image, str):
                problems.append(
                    self._problem(line, self.primary, f"must be a string, not {_json_type(raw_image)}")
                )
            elif not raw_image.strip():
                problems.append(self._problem(line, self.primary, f"is empty; {self._give()}"))
            else:
                image = raw_image.strip()
            item_id: str | None = None
            raw_id = obj.get("id")
            if isinstance(raw_id, str):
                item_id = raw_id.strip() or None
            elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
                item_id = str(raw_id)
            elif raw_id is not None:
                problems.append(
                    self._problem(line, "id", f"must be a string or an integer, not {_json_type(raw_id)}")
                )
            fields: dict[str, str] = {}
            for key, value in obj.items():
                if key in (self.primary, "id"):
                    continue
                if key not in self.known and key not in warned:
                    warned.add(key)
                    self.warnings.append(self._problem(line, key, self._unknown("key", key)))
                text_value = (
                    value.strip() if isinstance(value, str) else "" if value is None else json.dumps(value)
                )
                if text_value:
                    fields[key] = text_value
            yield _RawRow(line, image, item_id, fields, problems)

    def _parse_txt(self, text: str) -> Iterator[_RawRow]:
        for line, content in _lines(text):
            content = content.strip()
            if not content or content.startswith("#"):
                continue
            yield _RawRow(line, content, None, {}, [])

    def _list_images(self) -> list[_RawRow]:
        try:
            if self.format == "directory":
                entries: list[dict[str, Any]] = list(self.fs.ls(self.path, detail=True))
            else:
                entries = list(self.fs.glob(self.path, detail=True).values())
        except Exception as exc:
            raise self._fail(f"cannot be listed: {_describe(exc)}") from exc
        files = sorted(str(entry["name"]) for entry in entries if entry.get("type") == "file")
        images = [
            name
            for name in files
            if posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            and not posixpath.basename(name).startswith(".")  # hidden files, e.g. macOS "._a.png"
        ]
        if not images:
            if not files:
                what = "the directory has no files" if self.format == "directory" else "no file matches"
            else:
                what = (
                    f"none of the {len(files)} file(s) found is an image "
                    f"(extensions {_ALLOWED_EXTENSIONS}; hidden files are skipped)"
                )
            raise self._fail(f"contains no images: {what}")
        # The files exist (they were just listed): pass their paths straight through.
        return [_RawRow(position, name, None, {}, []) for position, name in enumerate(images, start=1)]

    # -- checking one row ----------------------------------------------------------------------------

    def _give(self) -> str:
        return "give an image path or URL" if self.primary == "image" else f"give a {self.primary}"

    def _add(self, raw: _RawRow) -> None:
        problems = list(raw.problems)
        resolved: _Resolved | None = None
        fields = dict(raw.fields)
        extra_images: dict[str, tuple[str, bool]] = {}
        for column in self.image_columns:
            value = fields.pop(column, None)
            if value:
                extra = self._resolve(raw.row, value, column)
                if isinstance(extra, RowProblem):
                    problems.append(extra)
                else:
                    extra_images[column] = (extra.image, extra.is_url)
        if raw.image is not None and self.primary != "image":
            # A prompt (text-to-3d): nothing to resolve; ids default to a slug of the text.
            fields[self.primary] = raw.image
            resolved = _Resolved("", False, _slug(raw.image))
        elif raw.image is not None:
            if self.format in ("directory", "glob"):
                resolved = _Resolved(self._url(raw.image), False, self._stem(raw.image))
            else:
                outcome = self._resolve(raw.row, raw.image)
                if isinstance(outcome, RowProblem):
                    problems.append(outcome)
                else:
                    resolved = outcome
        item_id = self._check_id(raw, resolved, problems)
        if problems or resolved is None or item_id is None:
            self.errors.extend(dataclasses.replace(problem, id=item_id) for problem in problems)
            return
        self.items.append(
            ManifestItem(raw.row, item_id, resolved.image, resolved.is_url, fields, extra_images)
        )

    def _check_id(self, raw: _RawRow, resolved: _Resolved | None, problems: list[RowProblem]) -> str | None:
        """Return the row's id, or None (with a problem recorded when there is something to say)."""
        if self.format in ("csv", "jsonl"):
            fix = "add an 'id' column" if self.format == "csv" else 'add an "id" key'
        else:
            fix = "rename the file, or use a CSV manifest with an 'id' column"
        explicit = raw.id is not None
        if raw.id is not None:
            item_id = raw.id
        elif any(problem.field == "id" for problem in problems):
            # The id given is unusable (e.g. not a string): do not fall back to the file name, whose
            # claim would reject a later row that really uses that id as a duplicate.
            return None
        elif resolved is None:
            return None  # the image is already reported; there is no id to check
        elif not resolved.stem:
            message = f"cannot take an id from {_show(resolved.image)} (it has no file name); {fix}"
            problems.append(self._problem(raw.row, "id", message))
            return None
        else:
            item_id = resolved.stem

        def refuse(message: str, implicit_origin: str) -> None:
            """Record the id's problem; an id taken from a file name also says how to give one."""
            if not explicit:
                message += f" ({implicit_origin}; {fix})"
            problems.append(self._problem(raw.row, "id", message))

        reason = validate_item_id(item_id)
        if reason is not None:
            refuse(f"invalid id {_show(item_id)}: {reason}", "the id comes from the file name")
            return None
        first = self.id_rows.get(item_id)
        if first is not None:
            refuse(f"duplicate id {_show(item_id)}: row {first} already uses it", "ids come from file names")
            return None
        # Claimed even when the row has other problems, so fixing those cannot reveal a duplicate later.
        self.id_rows[item_id] = raw.row
        other = self.folded_ids.get(item_id.casefold())
        if other is not None:
            self.warnings.append(
                self._problem(
                    raw.row,
                    "id",
                    f"id {_show(item_id)} differs only in letter case from {_show(other[0])} "
                    f"(row {other[1]}); they collide on case-insensitive storage (macOS or Windows disks)",
                )
            )
        else:
            self.folded_ids[item_id.casefold()] = (item_id, raw.row)
        return item_id

    def _resolve(self, row: int, value: str, field: str = "image") -> _Resolved | RowProblem:
        """Classify one image value: a URL to pass through or a storage path to check."""
        if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
            return self._problem(row, field, f"contains control characters: {_show(value)}")
        match = _SCHEME.match(value)
        if match is None:
            if value.startswith("/"):
                return self._storage_path(row, posixpath.normpath(self.fs._strip_protocol(value)), field)
            path = (
                posixpath.normpath(posixpath.join(self.base, value))
                if self.base
                else posixpath.normpath(value)
            )
            if not _within(path, self.base):
                return self._problem(
                    row, field, f"relative path {_show(value)} leads outside the manifest's folder"
                )
            return self._storage_path(row, path, field)
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            return self._http_url(row, value, field)
        if scheme == "file":
            return self._file_url(row, value, field)
        if scheme in self.protocols and value[match.end() : match.end() + 2] == "//":
            path = posixpath.normpath(self.fs._strip_protocol(value))
            if not _within(path, self.base):
                return self._problem(
                    row,
                    field,
                    f"{_show(value)} points outside the manifest's folder {self._url(self.base)}",
                )
            return self._storage_path(row, path, field)
        if len(scheme) == 1:
            return self._problem(
                row,
                field,
                f"Windows drive paths are not supported: {_show(value)}; use a path relative "
                "to the manifest, with '/' between folders",
            )
        message = f"unsupported scheme '{scheme}:' in {_show(value)}; use an http(s) URL or a file path"
        if "://" not in value and posixpath.splitext(value)[1].lower() in IMAGE_EXTENSIONS:
            message += f" (write a file name containing ':' as './{value}')"
        return self._problem(row, field, message)

    def _http_url(self, row: int, value: str, field: str) -> _Resolved | RowProblem:
        if any(char.isspace() for char in value):
            return self._problem(
                row, field, f"URL contains spaces: {_show(value)}; percent-encode them (%20)"
            )
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as exc:
            return self._problem(row, field, f"is not a valid URL ({exc}): {_show(value)}")
        if not parts.hostname:
            return self._problem(row, field, f"URL has no host: {_show(value)}")
        last = unquote(parts.path.rsplit("/", 1)[-1])
        return _Resolved(value, True, posixpath.splitext(last)[0])

    def _file_url(self, row: int, value: str, field: str) -> _Resolved | RowProblem:
        if not self.is_local:
            return self._problem(
                row, field, f"file: URLs are only allowed in a manifest on the local disk: {_show(value)}"
            )
        parts = urlsplit(value)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            return self._problem(
                row, field, f"is not a local absolute file: URL (use file:///path/to/x.png): {_show(value)}"
            )
        path = posixpath.normpath(path)
        if not _within(path, self.base):
            return self._problem(
                row, field, f"file: URL points outside the manifest's folder {self.base}: {_show(value)}"
            )
        return self._storage_path(row, path, field)

    def _storage_path(self, row: int, path: str, field: str) -> _Resolved | RowProblem:
        shown = self._url(path)
        extension = posixpath.splitext(path)[1].lower()
        if extension not in IMAGE_EXTENSIONS:
            what = f"extension {extension!r}" if extension else "no file extension"
            return self._problem(
                row, field, f"{shown} has {what}; allowed image extensions: {_ALLOWED_EXTENSIONS}"
            )
        if self.check_exists:
            try:
                if not self.fs.isfile(path):
                    if _safe(self.fs.isdir, path):
                        return self._problem(row, field, f"is a directory, not an image file: {shown}")
                    return self._problem(row, field, f"file does not exist: {shown}")
            except Exception as exc:
                return self._problem(row, field, f"cannot check that {shown} exists: {_describe(exc)}")
        return _Resolved(shown, False, self._stem(path))

    def _url(self, path: str) -> str:
        return str(self.fs.unstrip_protocol(path)) if self.keep_protocol else path

    @staticmethod
    def _stem(path: str) -> str:
        return posixpath.splitext(posixpath.basename(path))[0]
