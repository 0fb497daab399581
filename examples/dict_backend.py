"""The complete backend of docs/custom-backends.md: files in a dict, directories in a set.

The guide shows this file as it is, and tests/backends/test_conformance.py runs the whole
conformance suite on it. Plain ``def`` methods run in sftpd's thread pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import sftpd
from sftpd import paths


class DictBackend:
    """Files in a dict; directories in a set."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/"}
        self.lock = threading.Lock()  # methods run in threads: a rename moves many keys

    def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        if path in self.dirs:
            return sftpd.directory_info(0)
        if path in self.files:
            return sftpd.file_info(len(self.files[path]), time.time())
        raise sftpd.NoSuchFile()

    def list_dir(self, path: str, session: sftpd.Session) -> Iterator[sftpd.DirEntry]:
        if path not in self.dirs:
            raise sftpd.NoSuchFile()
        for d in sorted(self.dirs - {"/"}):
            if paths.parent(d) == path:
                yield sftpd.DirEntry(paths.basename(d), sftpd.directory_info(0))
        for f, data in sorted(self.files.items()):
            if paths.parent(f) == path:
                yield sftpd.DirEntry(paths.basename(f), sftpd.file_info(len(data), 0))

    def _below(self, path: str) -> list[str]:
        return [p for p in (*self.dirs, *self.files) if p.startswith(path + "/")]

    def make_dir(self, path: str, session: sftpd.Session) -> None:
        if path in self.dirs or path in self.files:
            raise sftpd.FileAlreadyExists()
        if paths.parent(path) not in self.dirs:
            raise sftpd.NoSuchFile()
        self.dirs.add(path)

    def remove_dir(self, path: str, session: sftpd.Session) -> None:
        if path not in self.dirs:
            raise sftpd.NoSuchFile()
        if self._below(path):
            raise sftpd.DirectoryNotEmpty()
        self.dirs.discard(path)

    def remove_file(self, path: str, session: sftpd.Session) -> None:
        if self.files.pop(path, None) is None:
            raise sftpd.NoSuchFile()

    def rename(self, src: str, dst: str, session: sftpd.Session, *, overwrite: bool) -> None:
        with self.lock:
            if src not in self.files and src not in self.dirs:
                raise sftpd.NoSuchFile()
            if (dst in self.files or dst in self.dirs) and not overwrite:
                raise sftpd.FileAlreadyExists()
            for old in [src, *self._below(src)]:  # a directory moves with what it holds
                new = dst + old[len(src) :]
                if old in self.files:
                    self.files[new] = self.files.pop(old)
                else:
                    self.dirs.discard(old)
                    self.dirs.add(new)

    def read_file(self, path: str, session: sftpd.Session) -> bytes:
        try:
            return self.files[path]
        except KeyError:
            raise sftpd.NoSuchFile() from None

    def write_file(self, path: str, data: bytes, session: sftpd.Session) -> None:
        if paths.parent(path) not in self.dirs:
            raise sftpd.NoSuchFile()
        self.files[path] = data
