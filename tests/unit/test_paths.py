"""Unit: path decoding, normalization and scoping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sftpd import paths
from sftpd.errors import InvalidFilename, PermissionDenied


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "/"),
        (".", "/"),
        ("/", "/"),
        ("//", "/"),
        ("a", "/a"),
        ("a/", "/a"),
        ("/a//b/./c/", "/a/b/c"),
        ("a/../b", "/b"),
        ("../../..", "/"),
        ("/../etc/passwd", "/etc/passwd"),
        ("a/b/../../..", "/"),
        ("...", "/..."),
        ("a/..b", "/a/..b"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    """Dots, doubled and trailing slashes collapse; .. never climbs above /."""
    assert paths.normalize(raw) == expected


def test_normalize_relative_to_cwd() -> None:
    """Relative paths are taken from the given working directory."""
    assert paths.normalize("x/../y", cwd="/home/u") == "/home/u/y"


def test_decode_rejects_bad_bytes() -> None:
    """Non-UTF-8 bytes, NUL bytes and over-long paths are invalid filenames."""
    with pytest.raises(InvalidFilename):
        paths.decode(b"\xff")
    with pytest.raises(InvalidFilename):
        paths.decode(b"a\x00b")
    with pytest.raises(InvalidFilename):
        paths.decode(b"a" * (paths.MAX_PATH_BYTES + 1))
    assert paths.decode("caf\u00e9".encode()) == "caf\u00e9"


def test_scope_and_unscope() -> None:
    """A client path lands inside the root and maps back unchanged."""
    assert paths.scope("/tenants/a", "/../../b/x") == "/tenants/a/b/x"
    assert paths.scope("/tenants/a", "/") == "/tenants/a"
    assert paths.unscope("/tenants/a", "/tenants/a/b") == "/b"
    assert paths.unscope("/tenants/a", "/tenants/a") == "/"
    with pytest.raises(PermissionDenied):
        paths.unscope("/tenants/a", "/tenants/ab")


def test_helpers() -> None:
    """parent, basename, join, is_root and to_key behave like their POSIX namesakes."""
    assert paths.parent("/a/b") == "/a"
    assert paths.parent("/a") == "/"
    assert paths.parent("/") == "/"
    assert paths.basename("/a/b") == "b"
    assert paths.basename("/") == ""
    assert paths.join("/", "x") == "/x"
    assert paths.join("/a", "x") == "/a/x"
    assert paths.is_root("/..")
    assert not paths.is_root("/a")
    assert paths.to_key("/folder/file.txt") == "folder/file.txt"
    assert paths.to_key("/") == ""


segments = st.sampled_from(["..", ".", "", "a", "b", "..%2f", "\\..", "...", "x y", "\u00e9"])
client_paths = st.lists(segments, max_size=12).map("/".join) | st.text(max_size=60).filter(
    lambda s: "\x00" not in s
)
roots = st.lists(st.sampled_from(["t", "tenant-1", "a b", "\u00e9"]), min_size=0, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)


@given(roots, client_paths)
def test_scoped_path_never_leaves_root(root: str, client: str) -> None:
    """Property: whatever the client sends, the scoped path is the root or below it."""
    root = paths.normalize(root)
    scoped = paths.scope(root, client)
    assert scoped == root or scoped.startswith(root.rstrip("/") + "/")
    assert paths.normalize(scoped) == scoped
    assert paths.unscope(root, scoped) == paths.normalize(client)


@given(client_paths)
def test_normalize_is_idempotent_and_clean(client: str) -> None:
    """Property: normalized paths are absolute, have no . or .. or empty parts, and are stable."""
    norm = paths.normalize(client)
    assert norm.startswith("/")
    assert paths.normalize(norm) == norm
    if norm != "/":
        assert all(part not in ("", ".", "..") for part in norm[1:].split("/"))
