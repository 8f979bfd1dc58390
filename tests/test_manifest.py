"""Tests for flows.manifest: reading manifests into items, with row-level problems reported, not raised."""

from __future__ import annotations

import io
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import fsspec.core
import pytest
from PIL import Image

from flows.manifest import (
    IMAGE_EXTENSIONS,
    Manifest,
    ManifestItem,
    RowProblem,
    load_manifest,
    validate_item_id,
)
from tasks.errors import ManifestError

# --------------------------------------------------------------------------------------------------
# Helpers


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def touch(path: Path, data: bytes = b"not really an image") -> Path:
    """A file whose name says image; existence/extension checks never open it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def only_error(manifest: Manifest) -> RowProblem:
    assert len(manifest.errors) == 1, manifest.errors
    return manifest.errors[0]


def one_problem(source: Path, row: int, field: str) -> RowProblem:
    """The only problem loading ``source`` finds, which must be at ``row`` in ``field``."""
    problem = only_error(load_manifest(source))
    assert (problem.row, problem.field) == (row, field)
    return problem


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """tmp_path with a.png (a real PNG), b.jpg and sub/c.webp."""
    touch(tmp_path / "a.png", png_bytes())
    touch(tmp_path / "b.jpg")
    touch(tmp_path / "sub" / "c.webp")
    return tmp_path


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A private folder on the process-wide memory:// filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/manifest-test-{uuid.uuid4().hex}"
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------------------------------
# Happy paths, one per format


def test_csv_happy_path(images: Path) -> None:
    source = write(images / "manifest.csv", "id,image,seed\nred,a.png,7\nblue,b.jpg,\n")

    manifest = load_manifest(source, known_fields={"seed"})

    assert manifest.source == source
    assert manifest.format == "csv"
    assert manifest.errors == [] and manifest.warnings == []
    assert manifest.items == [
        ManifestItem(row=2, id="red", image=str(images / "a.png"), is_url=False, fields={"seed": "7"}),
        ManifestItem(row=3, id="blue", image=str(images / "b.jpg"), is_url=False, fields={}),
    ]


def test_csv_without_id_column_uses_file_stems(images: Path) -> None:
    source = write(images / "m.csv", "image\na.png\nsub/c.webp\n")

    manifest = load_manifest(source)

    assert [(item.row, item.id) for item in manifest.items] == [(2, "a"), (3, "c")]


def test_csv_blank_id_cell_falls_back_to_stem(images: Path) -> None:
    source = write(images / "m.csv", "image,id\na.png,\nb.jpg,bee\n")

    assert [item.id for item in load_manifest(source).items] == ["a", "bee"]


def test_a_rejected_row_is_named_by_its_id(images: Path) -> None:
    """The summary lists a rejected row under its own id when it has a usable one, not `row-N`."""
    source = write(images / "m.csv", "image,id\na.png,first\nmissing.png,mug\n,cup\nb.jpg,first\n")

    errors = load_manifest(source).errors

    assert [(problem.row, problem.field, problem.id) for problem in errors] == [
        (3, "image", "mug"),
        (4, "image", "cup"),
        (5, "id", None),  # a duplicate: the id belongs to row 2
    ]


def test_jsonl_happy_path(images: Path) -> None:
    source = write(
        images / "manifest.jsonl",
        '{"image": "a.png", "id": "red", "seed": 7, "texture": true, "note": null, "opts": {"k": 1}}\n'
        '{"image": "b.jpg", "id": 42}\n'
        '{"image": "sub/c.webp"}\n',
    )

    manifest = load_manifest(source, known_fields={"seed", "texture", "note", "opts"})

    assert manifest.format == "jsonl"
    assert manifest.errors == [] and manifest.warnings == []
    assert manifest.items == [
        ManifestItem(
            row=1,
            id="red",
            image=str(images / "a.png"),
            is_url=False,
            fields={"seed": "7", "texture": "true", "opts": '{"k": 1}'},
        ),
        ManifestItem(row=2, id="42", image=str(images / "b.jpg"), is_url=False, fields={}),
        ManifestItem(row=3, id="c", image=str(images / "sub" / "c.webp"), is_url=False, fields={}),
    ]


def test_ndjson_extension_reads_as_jsonl(images: Path) -> None:
    source = write(images / "list.NDJSON", '{"image": "a.png"}\n')

    manifest = load_manifest(source)

    assert manifest.format == "jsonl"
    assert [item.id for item in manifest.items] == ["a"]


def test_txt_happy_path(images: Path) -> None:
    source = write(images / "images.txt", "a.png\nsub/c.webp\nhttps://cdn.example.com/x/d.png\n")

    manifest = load_manifest(source)

    assert manifest.format == "txt"
    assert [(i.row, i.id, i.image, i.is_url) for i in manifest.items] == [
        (1, "a", str(images / "a.png"), False),
        (2, "c", str(images / "sub" / "c.webp"), False),
        (3, "d", "https://cdn.example.com/x/d.png", True),
    ]


def test_directory_lists_images_sorted_and_skips_the_rest(tmp_path: Path) -> None:
    for name in ["b.JPG", "a.png", "c.webp", "notes.txt", ".hidden.png", "sub/d.png"]:
        touch(tmp_path / name)

    manifest = load_manifest(str(tmp_path))

    assert manifest.format == "directory"
    assert manifest.label == f"{tmp_path.name}/"
    assert manifest.errors == []
    assert [(i.row, i.id, i.image) for i in manifest.items] == [
        (1, "a", str(tmp_path / "a.png")),
        (2, "b", str(tmp_path / "b.JPG")),
        (3, "c", str(tmp_path / "c.webp")),
    ]


def test_glob_matches_image_files(tmp_path: Path) -> None:
    for name in ["x/b.png", "x/a.png", "x/c.jpg", "x/d.txt"]:
        touch(tmp_path / name)

    manifest = load_manifest(str(tmp_path / "x" / "*.png"))

    assert manifest.format == "glob"
    assert manifest.label == "x/*.png"
    assert [(i.row, i.id, i.image) for i in manifest.items] == [
        (1, "a", str(tmp_path / "x" / "a.png")),
        (2, "b", str(tmp_path / "x" / "b.png")),
    ]


def test_memory_manifest_with_relative_paths(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_root}/batch/a.png", png_bytes())
    fs.pipe(f"{memory_root}/batch/img/b.jpg", b"jpg")
    fs.pipe(f"{memory_root}/batch/m.csv", b"image,id\na.png,first\nimg/b.jpg,second\n")

    manifest = load_manifest(f"memory:/{memory_root}/batch/m.csv")

    assert manifest.errors == []
    assert [(i.row, i.id, i.image, i.is_url) for i in manifest.items] == [
        (2, "first", f"memory://{memory_root}/batch/a.png", False),
        (3, "second", f"memory://{memory_root}/batch/img/b.jpg", False),
    ]
    with fsspec.open(manifest.items[1].image, "rb") as handle:  # the URL opens the same file
        assert handle.read() == b"jpg"


def test_memory_glob_keeps_protocol(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_root}/p/a.png", b"1")
    fs.pipe(f"{memory_root}/p/b.txt", b"1")

    manifest = load_manifest(f"memory:/{memory_root}/p/*")

    assert manifest.format == "glob"
    assert [i.image for i in manifest.items] == [f"memory://{memory_root}/p/a.png"]


def test_file_url_source_gives_file_urls(images: Path) -> None:
    write(images / "m.txt", "a.png\n")

    manifest = load_manifest(f"file://{images}/m.txt")

    assert [i.image for i in manifest.items] == [f"file://{images}/a.png"]


def test_storage_options_are_passed_to_the_filesystem(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(images / "m.txt", "a.png\n")
    seen: list[dict[str, Any]] = []
    real_url_to_fs = fsspec.core.url_to_fs

    def spy(url: str, **options: Any) -> Any:
        seen.append(options)
        return real_url_to_fs(url, **options)

    monkeypatch.setattr(fsspec.core, "url_to_fs", spy)

    manifest = load_manifest(str(images / "m.txt"), {"auto_mkdir": False})

    assert seen == [{"auto_mkdir": False}]
    assert len(manifest.items) == 1


def test_unknown_storage_protocol_is_refused() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest("nosuchproto://bucket/m.csv")

    assert str(caught.value).startswith("manifest 'nosuchproto://bucket/m.csv': cannot open its storage: ")


# --------------------------------------------------------------------------------------------------
# Image values


def test_http_url_passes_through_with_id_from_url_stem(tmp_path: Path) -> None:
    url = "https://cdn.example.com/photos/red%20ball.png?sig=abc&x=1"
    source = write(tmp_path / "m.csv", f"image\n{url}\nHTTP://Example.com/b.webp\n")

    manifest = load_manifest(source)  # check_exists never fetches URLs

    assert manifest.errors == []
    assert [(i.id, i.image, i.is_url) for i in manifest.items] == [
        ("red ball", url, True),
        ("b", "HTTP://Example.com/b.webp", True),
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https:///a.png", "URL has no host"),
        ("http://", "URL has no host"),
        ("https://example.com:99999/a.png", "is not a valid URL"),
    ],
)
def test_http_url_without_valid_host_is_rejected(tmp_path: Path, url: str, expected: str) -> None:
    source = write(tmp_path / "m.csv", f"image\n{url}\n")

    problem = one_problem(source, 2, "image")

    assert expected in problem.message
    assert url in problem.message


def test_url_with_spaces_is_rejected(tmp_path: Path) -> None:
    source = write(tmp_path / "m.jsonl", '{"image": "https://example.com/my photo.png"}\n')

    problem = one_problem(source, 1, "image")

    assert "percent-encode" in problem.message


def test_url_without_file_name_needs_an_explicit_id(tmp_path: Path) -> None:
    source = write(tmp_path / "m.csv", "image,id\nhttps://example.com/,\nhttps://example.com/,home\n")

    manifest = load_manifest(source)

    problem = only_error(manifest)
    assert (problem.row, problem.field) == (2, "id")
    assert "cannot take an id" in problem.message and "add an 'id' column" in problem.message
    assert [i.id for i in manifest.items] == ["home"]


def test_relative_paths_resolve_against_the_manifest_folder(images: Path) -> None:
    source = write(images / "m.txt", "./a.png\nsub/../b.jpg\nsub//c.webp\n")

    manifest = load_manifest(source)

    assert [i.image for i in manifest.items] == [
        str(images / "a.png"),
        str(images / "b.jpg"),
        str(images / "sub" / "c.webp"),
    ]


def test_absolute_path_is_allowed_anywhere(tmp_path: Path) -> None:
    elsewhere = touch(tmp_path / "elsewhere" / "x.png")
    source = write(tmp_path / "batch" / "m.txt", f"{elsewhere}\n")

    manifest = load_manifest(source)

    assert [(i.id, i.image) for i in manifest.items] == [("x", str(elsewhere))]


def test_file_url_inside_the_manifest_folder_is_allowed(images: Path) -> None:
    source = write(images / "m.txt", f"file://{images}/sub/c.webp\nfile://localhost{images}/a.png\n")

    manifest = load_manifest(source)

    assert manifest.errors == []
    assert [i.image for i in manifest.items] == [str(images / "sub" / "c.webp"), str(images / "a.png")]


def test_file_url_outside_the_manifest_folder_is_rejected(tmp_path: Path) -> None:
    outside = touch(tmp_path / "secret.png")
    source = write(
        tmp_path / "batch" / "m.csv", f"image\nfile://{outside}\nfile://{tmp_path}/batch/../secret.png\n"
    )

    manifest = load_manifest(source)

    assert [(p.row, p.field) for p in manifest.errors] == [(2, "image"), (3, "image")]
    assert all("outside the manifest's folder" in p.message for p in manifest.errors)
    assert manifest.items == []


@pytest.mark.parametrize("value", ["../a.png", "sub/../../a.png", "../../../../etc/passwd.png"])
def test_relative_path_escaping_the_manifest_folder_is_rejected(tmp_path: Path, value: str) -> None:
    touch(tmp_path / "a.png")
    source = write(tmp_path / "batch" / "m.csv", f"image\n{value}\n")

    problem = one_problem(source, 2, "image")

    assert problem.message == f"relative path {value!r} leads outside the manifest's folder"


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("ftp://example.com/a.png", "ftp"),
        ("javascript:alert(1)", "javascript"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("mailto:someone@example.com", "mailto"),
        ("s3://bucket/a.png", "s3"),
    ],
)
def test_unsupported_schemes_are_rejected(tmp_path: Path, value: str, scheme: str) -> None:
    source = write(tmp_path / "m.jsonl", f'{{"image": "{value}", "id": "x"}}\n')

    problem = one_problem(source, 1, "image")

    assert problem.message.startswith(f"unsupported scheme '{scheme}:' in ")


def test_file_name_with_colon_gets_a_hint(tmp_path: Path) -> None:
    touch(tmp_path / "shot:1.png")
    source = write(tmp_path / "m.txt", "shot:1.png\n./shot:1.png\n")

    manifest = load_manifest(source)

    assert "write a file name containing ':' as './shot:1.png'" in only_error(manifest).message
    assert [i.image for i in manifest.items] == [str(tmp_path / "shot:1.png")]


def test_windows_drive_path_is_rejected(tmp_path: Path) -> None:
    source = write(tmp_path / "m.txt", "C:\\photos\\a.png\n")

    problem = one_problem(source, 1, "image")

    assert "Windows drive paths are not supported" in problem.message


def test_same_storage_url_is_allowed_inside_the_manifest_folder_only(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_root}/in/a.png", b"1")
    fs.pipe(f"{memory_root}/out.png", b"1")
    fs.pipe(
        f"{memory_root}/in/m.txt", f"memory:/{memory_root}/in/a.png\nmemory:/{memory_root}/out.png\n".encode()
    )

    manifest = load_manifest(f"memory:/{memory_root}/in/m.txt")

    assert [i.image for i in manifest.items] == [f"memory://{memory_root}/in/a.png"]
    problem = only_error(manifest)
    assert (problem.row, problem.field) == (2, "image")
    assert "points outside the manifest's folder" in problem.message


def test_missing_file_is_a_row_error(images: Path) -> None:
    source = write(images / "manifest.csv", "image\na.png\nmissing.png\nb.jpg\n")

    manifest = load_manifest(source)

    problem = only_error(manifest)
    assert (problem.row, problem.field) == (3, "image")
    assert problem.message == f"file does not exist: {images / 'missing.png'}"
    assert [i.id for i in manifest.items] == ["a", "b"]  # one bad row does not stop the others


def test_directory_instead_of_file_is_a_row_error(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    source = write(tmp_path / "m.txt", "folder.png\n")

    problem = one_problem(source, 1, "image")

    assert problem.message.startswith("is a directory, not an image file")


def test_check_exists_false_skips_the_existence_check(tmp_path: Path) -> None:
    source = write(tmp_path / "m.txt", "later.png\nlater.gif\n")

    manifest = load_manifest(source, check_exists=False)

    assert [(i.id, i.image) for i in manifest.items] == [("later", str(tmp_path / "later.png"))]
    assert "extension '.gif'" in only_error(manifest).message  # extensions are still checked


@pytest.mark.parametrize(("name", "what"), [("a.gif", "extension '.gif'"), ("README", "no file extension")])
def test_non_image_extension_is_a_row_error(tmp_path: Path, name: str, what: str) -> None:
    touch(tmp_path / name)
    source = write(tmp_path / "m.csv", f"image\n{name}\n")

    problem = one_problem(source, 2, "image")

    assert problem.message == (
        f"{tmp_path / name} has {what}; allowed image extensions: .jpeg, .jpg, .png, .webp"
    )


def test_image_extension_check_ignores_case(tmp_path: Path) -> None:
    touch(tmp_path / "A.PNG")
    source = write(tmp_path / "m.txt", "A.PNG\n")

    assert [i.id for i in load_manifest(source).items] == ["A"]
    assert frozenset({".png", ".jpg", ".jpeg", ".webp"}) == IMAGE_EXTENSIONS


def test_empty_image_value_is_a_row_error(images: Path) -> None:
    source = write(images / "m.csv", "id,image\nred,a.png\nblue,   \n")

    manifest = load_manifest(source)

    problem = only_error(manifest)
    assert (problem.row, problem.field) == (3, "image")
    assert problem.message == "is empty; give an image path or URL"


def test_control_characters_in_image_are_rejected(tmp_path: Path) -> None:
    source = write(tmp_path / "m.jsonl", '{"image": "a\\u0000.png"}\n')

    problem = one_problem(source, 1, "image")

    assert "control characters" in problem.message


# --------------------------------------------------------------------------------------------------
# Ids


@pytest.mark.parametrize("item_id", ["red-ball", "Red_Ball.v2", "42", "photo 1", "é" * 200])
def test_validate_item_id_accepts(item_id: str) -> None:
    assert validate_item_id(item_id) is None


@pytest.mark.parametrize(
    ("item_id", "reason"),
    [
        ("", "must not be empty"),
        ("x" * 201, "must be at most 200 characters (it has 201)"),
        ("a/b", "must not contain '/' or '\\' (each id becomes a folder name)"),
        ("a\\b", "must not contain '/' or '\\' (each id becomes a folder name)"),
        ("a\x00b", "must not contain control characters (found U+0000)"),
        ("a\tb", "must not contain control characters (found U+0009)"),
        (".", "must not start with '.'"),
        ("..", "must not contain '..'"),
        ("a..b", "must not contain '..'"),
        (".hidden", "must not start with '.'"),
        ("runs", "'runs' is reserved (the destination keeps its run records in runs/)"),
        ("RUNS", "'RUNS' is reserved (the destination keeps its run records in runs/)"),
        ("a*", "must not contain the wildcard characters * ? [ ] (storage tools would expand them)"),
        (" a", "must not start or end with whitespace"),
    ],
)
def test_validate_item_id_rejects(item_id: str, reason: str) -> None:
    assert validate_item_id(item_id) == reason


def test_invalid_explicit_id_is_a_row_error(images: Path) -> None:
    source = write(images / "m.csv", "id,image\nok,a.png\nbad/id,b.jpg\n")

    manifest = load_manifest(source)

    problem = only_error(manifest)
    assert (problem.row, problem.field) == (3, "id")
    assert (
        problem.message == "invalid id 'bad/id': must not contain '/' or '\\' (each id becomes a folder name)"
    )
    assert [i.id for i in manifest.items] == ["ok"]


def test_invalid_derived_id_says_where_it_came_from(tmp_path: Path) -> None:
    touch(tmp_path / "runs.png")
    source = write(tmp_path / "m.txt", "runs.png\n")

    problem = one_problem(source, 1, "id")

    assert problem.message.startswith("invalid id 'runs': 'runs' is reserved")
    assert "the id comes from the file name" in problem.message


def test_jsonl_id_of_wrong_type_is_a_row_error(images: Path) -> None:
    source = write(images / "m.jsonl", '{"image": "a.png", "id": [1]}\n{"image": "b.jpg", "id": true}\n')

    manifest = load_manifest(source)

    assert [(p.row, p.field, p.message) for p in manifest.errors] == [
        (1, "id", "must be a string or an integer, not a list"),
        (2, "id", "must be a string or an integer, not a boolean"),
    ]


def test_duplicate_ids_first_wins_and_later_rows_name_it(images: Path) -> None:
    source = write(images / "m.csv", "id,image\nsame,a.png\nother,b.jpg\nsame,b.jpg\nsame,sub/c.webp\n")

    manifest = load_manifest(source)

    assert [(i.row, i.id) for i in manifest.items] == [(2, "same"), (3, "other")]
    assert [(p.row, p.field, p.message) for p in manifest.errors] == [
        (4, "id", "duplicate id 'same': row 2 already uses it"),
        (5, "id", "duplicate id 'same': row 2 already uses it"),
    ]


def test_duplicate_derived_ids_in_a_directory(tmp_path: Path) -> None:
    touch(tmp_path / "a.png")
    touch(tmp_path / "a.jpg")

    manifest = load_manifest(str(tmp_path))

    assert [(i.row, i.image) for i in manifest.items] == [(1, str(tmp_path / "a.jpg"))]
    problem = only_error(manifest)
    assert (problem.row, problem.field) == (2, "id")
    assert problem.message.startswith("duplicate id 'a': row 1 already uses it")


def test_id_of_a_rejected_row_is_still_claimed(images: Path) -> None:
    source = write(images / "m.csv", "id,image\nx,missing.png\nx,a.png\n")

    manifest = load_manifest(source)

    assert manifest.items == []
    assert [(p.row, p.field) for p in manifest.errors] == [(2, "image"), (3, "id")]


def test_ids_differing_only_in_case_get_a_warning(images: Path) -> None:
    source = write(images / "m.csv", "id,image\nCat,a.png\ncat,b.jpg\n")

    manifest = load_manifest(source)

    assert [i.id for i in manifest.items] == ["Cat", "cat"]
    assert len(manifest.warnings) == 1
    warning = manifest.warnings[0]
    assert (warning.row, warning.field) == (3, "id")
    assert "differs only in letter case from 'Cat' (row 2)" in warning.message


# --------------------------------------------------------------------------------------------------
# Text handling and row numbers


def test_utf8_bom_is_stripped(images: Path) -> None:
    (images / "m.csv").write_bytes("\ufeffid,image\nred,a.png\n".encode())

    manifest = load_manifest(str(images / "m.csv"))

    assert manifest.warnings == []  # the header is "id", not "\ufeffid"
    assert [(i.row, i.id) for i in manifest.items] == [(2, "red")]


def test_non_utf8_manifest_names_the_line(images: Path) -> None:
    (images / "m.csv").write_bytes(b"id,image\nred,a.png\ncaf\xe9,b.jpg\n")

    with pytest.raises(ManifestError) as caught:
        load_manifest(str(images / "m.csv"))

    assert caught.value.row == 3
    assert str(caught.value) == (
        f"manifest {str(images / 'm.csv')!r} line 3: "
        "is not valid UTF-8 (byte 0xe9 at column 4); save it as UTF-8"
    )


def test_utf16_manifest_is_refused_with_a_hint(images: Path) -> None:
    (images / "m.txt").write_bytes("a.png\n".encode("utf-16"))

    with pytest.raises(ManifestError, match="is UTF-16 encoded; save it as UTF-8"):
        load_manifest(str(images / "m.txt"))


def test_csv_comments_and_blank_lines_keep_editor_line_numbers(images: Path) -> None:
    text = "# made by hand\n\nid,image\n\n# the red one\nred,a.png\n  \n,,\nnope,missing.png\n"
    source = write(images / "m.csv", text)

    manifest = load_manifest(source)

    assert [(i.row, i.id) for i in manifest.items] == [(6, "red")]
    assert [(p.row, p.field) for p in manifest.errors] == [(9, "image")]


def test_jsonl_and_txt_comments_and_blank_lines_keep_line_numbers(images: Path) -> None:
    jsonl = write(
        images / "m.jsonl", '# header comment\n\n{"image": "a.png"}\r\n\n{"image": "missing.png"}\n'
    )
    txt = write(images / "m.txt", "\n# comment\n  a.png  \n\nmissing.png\n")

    for source in (jsonl, txt):
        manifest = load_manifest(source)
        assert [(i.row, i.id) for i in manifest.items] == [(3, "a")], source
        assert [(p.row, p.field) for p in manifest.errors] == [(5, "image")], source


def test_csv_quoted_value_spanning_lines_reports_its_first_line(images: Path) -> None:
    source = write(images / "m.csv", 'image,note\na.png,"two\nlines"\nmissing.png,x\n')

    manifest = load_manifest(source, known_fields={"note"})

    assert [(i.row, i.fields) for i in manifest.items] == [(2, {"note": "two\nlines"})]
    assert [(p.row, p.field) for p in manifest.errors] == [(4, "image")]


def test_whitespace_around_values_and_headers_is_trimmed(images: Path) -> None:
    source = write(images / "m.csv", " id , image , seed \n  red  ,  a.png  , 3 \n")

    manifest = load_manifest(source, known_fields={"seed"})

    assert manifest.items == [
        ManifestItem(row=2, id="red", image=str(images / "a.png"), is_url=False, fields={"seed": "3"})
    ]


def test_csv_row_with_too_many_values_is_a_row_error(images: Path) -> None:
    source = write(images / "m.csv", "image,id\na.png,one,extra\nb.jpg,two\n")

    manifest = load_manifest(source)

    problem = only_error(manifest)
    assert (problem.row, problem.field) == (2, "")
    assert problem.message.startswith("has 3 values but the header has 2 columns")
    assert [i.id for i in manifest.items] == ["two"]


def test_jsonl_line_that_is_not_an_object_is_a_row_error(images: Path) -> None:
    source = write(images / "m.jsonl", '["a.png"]\n{"image": "a.png"}\n{"image": "b.jpg",\n"c.png"\n')

    manifest = load_manifest(source)

    assert [i.id for i in manifest.items] == ["a"]
    assert [(p.row, p.field) for p in manifest.errors] == [(1, ""), (3, ""), (4, "")]
    assert manifest.errors[0].message == 'must be a JSON object such as {"image": "a.png"}, not a list'
    assert manifest.errors[1].message.startswith("is not valid JSON (")
    assert manifest.errors[2].message.endswith("not a string")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x"}', 'is missing; every line needs an "image" key'),
        ('{"image": 5}', "must be a string, not a number"),
        ('{"image": "  "}', "is empty; give an image path or URL"),
    ],
)
def test_jsonl_bad_image_key_is_a_row_error(tmp_path: Path, line: str, message: str) -> None:
    touch(tmp_path / "a.png")
    source = write(tmp_path / "m.jsonl", f'{{"image": "a.png"}}\n{line}\n')

    problem = only_error(load_manifest(source))

    assert (problem.row, problem.field, problem.message) == (2, "image", message)


# --------------------------------------------------------------------------------------------------
# Warnings


def test_unknown_csv_columns_warn_once_each(images: Path) -> None:
    source = write(images / "m.csv", "id,image,seed,colour,notes\nred,a.png,1,red,hi\nblue,b.jpg,2,,\n")

    manifest = load_manifest(source, known_fields={"seed", "color"})

    assert manifest.errors == []
    assert [(w.row, w.field) for w in manifest.warnings] == [(1, "colour"), (1, "notes")]
    assert manifest.warnings[0].message == (
        "unknown column 'colour' (expected: image, id, color, seed); did you mean 'color'?"
    )
    # Unknown columns are still handed on; blank cells are left out.
    assert [dict(i.fields) for i in manifest.items] == [
        {"seed": "1", "colour": "red", "notes": "hi"},
        {"seed": "2"},
    ]


def test_unknown_jsonl_keys_warn_once_each(images: Path) -> None:
    source = write(images / "m.jsonl", '{"image": "a.png", "sed": 1}\n{"image": "b.jpg", "sed": 2}\n')

    manifest = load_manifest(source, known_fields={"seed"})

    assert [(w.row, w.field) for w in manifest.warnings] == [(1, "sed")]
    assert "did you mean 'seed'?" in manifest.warnings[0].message
    assert len(manifest.items) == 2


def test_unnamed_csv_column_with_values_warns(images: Path) -> None:
    source = write(images / "m.csv", "image,\na.png,\nb.jpg,stray\n")

    manifest = load_manifest(source)

    assert [i.id for i in manifest.items] == ["a", "b"]
    assert [(w.row, w.field, w.message) for w in manifest.warnings] == [
        (3, "", "column 2 has no name in the header; its values are ignored")
    ]


# --------------------------------------------------------------------------------------------------
# Manifest-level errors


def test_csv_without_image_column_names_the_columns_found(images: Path) -> None:
    source = write(images / "m.csv", "id,path,seed\nred,a.png,1\n")

    with pytest.raises(ManifestError) as caught:
        load_manifest(source)

    assert str(caught.value) == (
        f"manifest {source!r} line 1: has no 'image' column (found columns: 'id', 'path', 'seed')"
    )


@pytest.mark.parametrize(
    ("header", "hint"),
    [
        ("Image,id", "column names are case-sensitive"),
        ("image;id", "columns must be separated by commas"),
        ("a.png,red", "the first line looks like data"),
    ],
)
def test_csv_without_image_column_gives_a_hint(images: Path, header: str, hint: str) -> None:
    source = write(images / "m.csv", f"{header}\nb.jpg,blue\n")

    with pytest.raises(ManifestError, match="has no 'image' column") as caught:
        load_manifest(source)

    assert hint in str(caught.value)


def test_csv_duplicate_header_column_is_refused(images: Path) -> None:
    source = write(images / "m.csv", "image,id,image\na.png,x,b.jpg\n")

    with pytest.raises(ManifestError, match="column 'image' appears more than once in the header"):
        load_manifest(source)


@pytest.mark.parametrize(
    ("name", "text", "detail"),
    [
        ("m.csv", "", "it is empty"),
        ("m.csv", "id,image\n\n# nothing yet\n", "only a header"),
        ("m.jsonl", "\n# later\n", "only blank or comment lines"),
        ("m.txt", "   \n\n#a.png\n", "only blank or comment lines"),
    ],
)
def test_empty_manifest_file_is_refused(tmp_path: Path, name: str, text: str, detail: str) -> None:
    source = write(tmp_path / name, text)

    with pytest.raises(ManifestError) as caught:
        load_manifest(source)

    assert str(caught.value) == f"manifest {source!r}: contains no images ({detail})"


def test_directory_without_images_is_refused(tmp_path: Path) -> None:
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.png")

    with pytest.raises(ManifestError, match="contains no images: none of the 2 file") as caught:
        load_manifest(str(tmp_path))
    assert caught.value.source == str(tmp_path)


def test_glob_without_matches_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"contains no images: no file matches"):
        load_manifest(str(tmp_path / "*.png"))


def test_unsupported_manifest_type_lists_the_formats(tmp_path: Path) -> None:
    touch(tmp_path / "m.xlsx")

    with pytest.raises(ManifestError) as caught:
        load_manifest(str(tmp_path / "m.xlsx"))

    message = str(caught.value)
    assert message.startswith(f"manifest {str(tmp_path / 'm.xlsx')!r}: unsupported manifest type ('.xlsx')")
    for supported in (".csv", ".jsonl/.ndjson", ".txt", "a directory of images", "a glob"):
        assert supported in message


@pytest.mark.parametrize("name", ["missing.csv", "missing"])
def test_missing_manifest_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(str(tmp_path / name))


def test_manifest_error_is_a_value_error_and_pickles() -> None:
    error = ManifestError("manifest 'x.csv' line 3: bad", "x.csv", 3, "image")

    copy = pickle.loads(pickle.dumps(error))

    assert isinstance(copy, ManifestError) and isinstance(copy, ValueError)
    assert (str(copy), copy.source, copy.row, copy.field) == (
        "manifest 'x.csv' line 3: bad",
        "x.csv",
        3,
        "image",
    )


# --------------------------------------------------------------------------------------------------
# Messages


def test_row_problem_message_names_manifest_row_and_field(images: Path) -> None:
    source = write(images / "manifest.csv", "image\na.png\nb.jpg\nx.png\n")

    problem = only_error(load_manifest(source))

    assert str(problem) == f"manifest.csv row 4, field 'image': file does not exist: {images / 'x.png'}"
    assert problem.manifest == "manifest.csv"
    assert str(RowProblem(2, "", "whole row")) == "row 2: whole row"


def test_very_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    value = "data:image/png;base64," + "A" * 10_000
    source = write(tmp_path / "m.txt", value + "\n")

    problem = only_error(load_manifest(source))

    assert "(10022 characters)" in problem.message
    assert len(problem.message) < 300
