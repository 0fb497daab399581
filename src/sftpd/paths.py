"""Pure path handling: decode, normalize and scope client paths.

Every path a backend sees went through :func:`normalize` and :func:`scope`: it is an
absolute POSIX path (``/a/b``), with no ``.``, ``..``, empty or trailing components, that
lies inside the session's root. ``..`` at the top stays at the top, as on POSIX, so no
sequence of components can climb out of the root.
"""

from __future__ import annotations

from .errors import InvalidFilename, PermissionDenied

__all__ = [
    "MAX_PATH_BYTES",
    "basename",
    "decode",
    "is_root",
    "join",
    "normalize",
    "parent",
    "scope",
    "to_key",
    "unscope",
]

MAX_PATH_BYTES = 4096
"""Longest path, in UTF-8 bytes, that a client may send."""


def decode(raw: bytes | str) -> str:
    """Decode a path as sent on the wire.

    Raises:
        InvalidFilename: the bytes are not UTF-8, hold a NUL byte or are too long.
    """
    if isinstance(raw, bytes):
        if len(raw) > MAX_PATH_BYTES:
            raise InvalidFilename("Path too long")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidFilename("Path is not valid UTF-8") from None
    else:
        text = raw
        if len(text.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
            raise InvalidFilename("Path too long")
    if "\x00" in text:
        raise InvalidFilename("Path contains a NUL byte")
    return text


def normalize(path: str, cwd: str = "/") -> str:
    """Return the absolute, normalized form of ``path``.

    Relative paths are taken from ``cwd``. ``.`` and empty components vanish, ``..`` drops
    the previous component and is ignored at the top.

    >>> normalize("a//b/./../c/")
    '/a/c'
    >>> normalize("/../../etc")
    '/etc'
    """
    joined = path if path.startswith("/") else f"{cwd}/{path}"
    parts: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def scope(root: str, path: str) -> str:
    """Place a client path inside a session root.

    Args:
        root: A normalized absolute path, the session's top directory.
        path: A client path, in any form; it is normalized against ``/`` first, so
            nothing in it can leave ``root``.

    Returns:
        The normalized absolute path the backend sees.
    """
    inner = normalize(path)
    if root == "/":
        return inner
    return root if inner == "/" else root + inner


def unscope(root: str, path: str) -> str:
    """Turn a backend path back into what the client sees.

    Raises:
        PermissionDenied: ``path`` is not inside ``root``.
    """
    if root == "/":
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root) :]
    raise PermissionDenied("Path outside the session root")


def is_root(path: str) -> bool:
    """Tell whether a client path names the top directory (``/``, ``""``, ``.``, ``/..``)."""
    return normalize(path) == "/"


def parent(path: str) -> str:
    """Return the parent of a normalized absolute path (the root is its own parent)."""
    head, _, _ = path.rpartition("/")
    return head or "/"


def basename(path: str) -> str:
    """Return the last component of a normalized absolute path (``""`` for the root)."""
    return path.rpartition("/")[2]


def join(directory: str, name: str) -> str:
    """Join a normalized absolute directory and one entry name."""
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


def to_key(path: str) -> str:
    """Return a path without its leading slash, as key-value stores name objects.

    >>> to_key("/folder/file.txt")
    'folder/file.txt'
    >>> to_key("/")
    ''
    """
    return normalize(path).lstrip("/")
