"""Unit: the memory backend's block store."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sftpd.backends.memory import BLOCK_SIZE, Blob

writes = st.lists(
    st.tuples(st.integers(0, 3 * BLOCK_SIZE), st.binary(min_size=0, max_size=3000)), max_size=12
)


@settings(max_examples=60, deadline=None)
@given(writes, st.integers(0, 4 * BLOCK_SIZE))
def test_blob_matches_a_bytearray_model(ops: list[tuple[int, bytes]], cut: int) -> None:
    """Property: writes at any offset, then a truncate, read like a plain bytearray."""
    blob, model = Blob(), bytearray()
    for offset, data in ops:
        blob.write(offset, data)
        if offset + len(data) > len(model):
            model.extend(bytes(offset + len(data) - len(model)))
        model[offset : offset + len(data)] = data
    assert blob.size == len(model)
    assert blob.to_bytes() == bytes(model)
    blob.truncate(cut)
    if cut < len(model):
        del model[cut:]
    else:
        model.extend(bytes(cut - len(model)))
    assert blob.to_bytes() == bytes(model)


def test_copy_is_copy_on_write() -> None:
    """Writing to a copy leaves the original untouched, and vice versa."""
    original = Blob(b"a" * (BLOCK_SIZE + 10))
    copy = original.copy()
    copy.write(5, b"XX")
    original.write(BLOCK_SIZE + 1, b"YY")
    assert original.read(5, 2) == b"aa"
    assert copy.read(5, 2) == b"XX"
    assert copy.read(BLOCK_SIZE + 1, 2) == b"aa"
