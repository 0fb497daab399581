"""What a session may do, where: checked by the request layer before any backend call.

A session's :class:`Permissions` says which operations it may perform (:data:`OPERATIONS`)
and may narrow or widen them per path with :class:`PathRule` s: the most specific rule
that matches a path decides (a deeper directory beats a shallower one, a glob beats the
plain directory it sits in), the session-wide flags apply where no rule does. Paths are
the client's, normalized (``..``, ``//`` and ``.`` resolved) before they are matched, so a
rule cannot be walked around. Names can be refused (``denied_names``: no upload, mkdir,
rename or link may create them) or hidden (``hidden_names``: never listed, and missing
to every request).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = ["OPERATIONS", "PathRule", "Permissions"]

#: The operations permissions name, and the SFTP requests each covers:
#:
#: - ``list``: OPENDIR/READDIR; STAT of a file (a directory's always answers)
#: - ``download``: OPEN for reading, check-file (hashing reads the content)
#: - ``upload``: OPEN that creates a new file (and its writes, times and mode)
#: - ``overwrite``: OPEN for writing an existing file (truncate, append, resume), and
#:   SETSTAT/FSETSTAT of its size
#: - ``delete``: REMOVE
#: - ``rename``: RENAME and posix-rename, at the source and at the target
#: - ``mkdir``: MKDIR
#: - ``rmdir``: RMDIR
#: - ``setstat``: SETSTAT/FSETSTAT of times and modes (lsetstat too)
#: - ``symlink``: SYMLINK
#: - ``link``: hardlink@openssh.com
OPERATIONS = ("list", "download", "upload", "overwrite", "delete", "rename", "mkdir",
              "rmdir", "setstat", "symlink", "link")  # fmt: skip

_GLOB = set("*?[")
#: The session-wide flags of :class:`Permissions`.
FLAGS = ("read", "write", "list", "delete", "rename", "mkdir")


def _normalize_rule_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"a permission rule's path must be absolute, got {path!r}")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise ConfigError(f"a permission rule's path may not contain '..': {path!r}")
    return "/" + "/".join(parts)


@dataclass(frozen=True, slots=True)
class PathRule:
    """The operations allowed at a path: a directory and everything below it
    (``"/inbox"``), or paths matching a glob (``"/inbox/*.csv"``, ``"/*/private"``).

    Attributes:
        path: Absolute, as the client sees it.
        allow: The operations allowed there (any of :data:`OPERATIONS`); all others are
            refused, whatever the session-wide flags say.
    """

    path: str
    allow: frozenset[str]
    _glob: bool = field(init=False, repr=False, compare=False)
    _depth: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _normalize_rule_path(self.path))
        allow = frozenset(self.allow)
        unknown = allow - set(OPERATIONS)
        if unknown:
            raise ConfigError(f"permission rule {self.path}: unknown operation(s) "
                              f"{sorted(unknown)}; known: {', '.join(OPERATIONS)}")  # fmt: skip
        object.__setattr__(self, "allow", allow)
        parts = [p for p in self.path.split("/") if p]
        glob = any(_GLOB & set(p) for p in parts)
        object.__setattr__(self, "_glob", glob)
        object.__setattr__(self, "_depth", len(parts) + (0.5 if glob else 0.0))

    def matches(self, path: str) -> bool:
        """True if the rule covers ``path`` (normalized, absolute)."""
        if self._glob:
            depth = self.path.count("/")
            # A glob covers the paths it matches and everything below them.
            head = "/".join(path.split("/")[: depth + 1]) if path != "/" else "/"
            return fnmatch.fnmatchcase(head, self.path)
        return self.path == "/" or path == self.path or path.startswith(self.path + "/")


def _names(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"{what} must be a list of name patterns such as ['*.exe']")
    names = tuple(value)
    if not all(isinstance(n, str) and n and "/" not in n for n in names):
        raise ConfigError(f"{what} must be name patterns without '/', got {list(names)!r}")
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class Permissions:
    """Allowed operations of a session; each refusal answers SFTP "permission denied".

    The six flags are the session-wide permissions (where no rule applies):

    Attributes:
        read: ``download``.
        write: ``upload``, ``overwrite``, ``setstat``, ``symlink`` and ``link``.
        list: ``list``.
        delete: ``delete`` and ``rmdir``.
        rename: ``rename``.
        mkdir: ``mkdir``.
        rules: Per-path rules (:class:`PathRule`); the most specific matching one decides.
        denied_names: Name patterns (``*.exe``) no upload, mkdir, rename, or link may create.
        hidden_names: Name patterns (``.*``) never listed and missing to every request.
        own_files_only: A drop box: of existing files, only those this session uploaded
            can be seen (stat, listings); every other file is missing to it.

    Presets (see :meth:`parse`): ``"full"``, ``"read-only"`` (download, list),
    ``"upload-only"`` (upload, overwrite, mkdir; no list, no download), ``"no-delete"``
    (everything but delete and rename), ``"drop-box"`` (upload new files and nothing
    else: no listing, no download, no overwrite, no stat of others' files) and
    ``"drop-box-list-own"`` (the same, and listings show the files this session uploaded).
    """

    read: bool = True
    write: bool = True
    list: bool = True
    delete: bool = True
    rename: bool = True
    mkdir: bool = True
    rules: tuple[PathRule, ...] = ()
    denied_names: tuple[str, ...] = ()
    hidden_names: tuple[str, ...] = ()
    own_files_only: bool = False
    _base: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = set()
        if self.read:
            base.add("download")
        if self.write:
            base |= {"upload", "overwrite", "setstat", "symlink", "link"}
        if self.list:
            base.add("list")
        if self.delete:
            base |= {"delete", "rmdir"}
        if self.rename:
            base.add("rename")
        if self.mkdir:
            base.add("mkdir")
        object.__setattr__(self, "_base", frozenset(base))
        rules = tuple(sorted(self.rules, key=lambda r: -r._depth))
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "denied_names", _names(self.denied_names, "denied_names"))
        object.__setattr__(self, "hidden_names", _names(self.hidden_names, "hidden_names"))

    def allows_everywhere(self) -> frozenset[str]:
        """The operations the session-wide flags allow (where no rule applies)."""
        return self._base

    def rule_for(self, path: str) -> PathRule | None:
        """The rule that decides at ``path`` (normalized, absolute), or None."""
        return next((rule for rule in self.rules if rule.matches(path)), None)

    def allows(self, operation: str, path: str) -> tuple[bool, str]:
        """Whether ``operation`` is allowed at ``path``, and what decided: the rule's path,
        or ``"session"`` for the session-wide flags.
        """
        rule = self.rule_for(path)
        if rule is None:
            return operation in self._base, "session"
        return operation in rule.allow, rule.path

    def denies_name(self, name: str) -> str | None:
        """The denied-name pattern ``name`` matches, if any."""
        return next((p for p in self.denied_names if fnmatch.fnmatchcase(name, p)), None)

    def hides(self, path: str) -> bool:
        """True if any component of ``path`` is a hidden name."""
        if not self.hidden_names:
            return False
        return any(fnmatch.fnmatchcase(part, pattern) for part in path.split("/") if part
                   for pattern in self.hidden_names)  # fmt: skip

    @classmethod
    def full(cls) -> Permissions:
        """Everything allowed."""
        return cls()

    @classmethod
    def parse(
        cls,
        value: Any,
        *,
        denied_names: Sequence[str] | None = None,
        hidden_names: Sequence[str] | None = None,
    ) -> Permissions:
        """Read permissions from a preset name, a collection of allowed flags, a mapping of
        flags, or a mapping of paths to operations (``{"/": "read-only", "/inbox":
        ["upload", "list"]}``: ``"/"`` sets the session-wide ones).

        Raises:
            ConfigError: the value names an unknown preset, flag, operation or path.
        """
        parsed = cls._parse(value)
        if denied_names is None and hidden_names is None:
            return parsed
        return _replace(parsed, denied_names=tuple(denied_names or parsed.denied_names),
                        hidden_names=tuple(hidden_names or parsed.hidden_names))  # fmt: skip

    @classmethod
    def _parse(cls, value: Any) -> Permissions:
        if value is None:
            return cls()
        if isinstance(value, Permissions):
            return value
        if isinstance(value, str):
            try:
                return _PRESETS[value]
            except KeyError:
                known = ", ".join(sorted(_PRESETS))
                raise ConfigError(
                    f"unknown permissions preset {value!r}; use one of {known}"
                ) from None
        names = set(FLAGS)
        if isinstance(value, Mapping) and value and all(str(k).startswith("/") for k in value):
            return cls._from_paths(value)
        if isinstance(value, Mapping):
            unknown = set(value) - names
            if unknown:
                raise ConfigError(
                    f"unknown permission(s) {sorted(unknown)}; known: {sorted(names)}, or "
                    "paths such as '/inbox' mapped to operations"
                )
            flags: dict[str, Any] = {k: bool(v) for k, v in value.items()}
            return cls(**flags)
        if isinstance(value, Iterable):
            allowed = set(value)
            unknown = allowed - names
            if unknown:
                raise ConfigError(
                    f"unknown permission(s) {sorted(unknown)}; known: {sorted(names)}"
                )
            chosen: dict[str, Any] = {name: name in allowed for name in names}
            return cls(**chosen)
        raise ConfigError(f"permissions must be a preset name, a list or a mapping, got {value!r}")

    @classmethod
    def _from_paths(cls, value: Mapping[str, Any]) -> Permissions:
        base = cls()
        rules = []
        for path, allowed in value.items():
            if isinstance(allowed, str):  # a preset's operations at that path
                preset = cls._parse(allowed)
                operations = preset._base
                if _normalize_rule_path(path) == "/":
                    base = preset
                    continue
            elif isinstance(allowed, Iterable):
                operations = frozenset(allowed)
            else:
                raise ConfigError(f"permissions for {path!r} must be a list of operations "
                                  f"or a preset, got {allowed!r}")  # fmt: skip
            rules.append(PathRule(path, operations))
        return _replace(base, rules=tuple(base.rules) + tuple(rules))


def _replace(permissions: Permissions, **changes: Any) -> Permissions:
    values = {f.name: getattr(permissions, f.name) for f in fields(permissions) if f.init}
    values.update(changes)
    return Permissions(**values)


_PRESETS = {
    "full": Permissions(),
    "read-only": Permissions(write=False, delete=False, rename=False, mkdir=False),
    "upload-only": Permissions(read=False, list=False, delete=False, rename=False),
    "no-delete": Permissions(delete=False, rename=False),
    "drop-box": Permissions(rules=(PathRule("/", frozenset({"upload"})),), own_files_only=True),
    "drop-box-list-own": Permissions(
        rules=(PathRule("/", frozenset({"upload", "list"})),), own_files_only=True
    ),
}
