"""Unit tests of sparse file data (lockfs.filedata): it reads exactly like a bytearray that is
zero-filled up to every offset written, while holding only the bytes written."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lockfs.filedata import BLOCK_SIZE, FileData

#: Offsets around block boundaries, where the bookkeeping can go wrong.
OFFSETS = st.one_of(
    st.integers(min_value=0, max_value=3 * BLOCK_SIZE + 10),
    st.sampled_from([BLOCK_SIZE - 1, BLOCK_SIZE, 2 * BLOCK_SIZE - 2, 5 * BLOCK_SIZE + 3]),
    st.integers(min_value=0, max_value=40),
)
WRITES = st.tuples(st.just("write"), OFFSETS, st.binary(min_size=1, max_size=40))
LONG_WRITES = st.tuples(
    st.just("write"), OFFSETS, st.integers(min_value=BLOCK_SIZE - 5, max_value=2 * BLOCK_SIZE + 7)
)
TRUNCATES = st.tuples(st.just("truncate"), OFFSETS, st.just(b""))
OPERATIONS = st.lists(st.one_of(WRITES, LONG_WRITES, TRUNCATES), max_size=12)


def apply(model: bytearray, data: FileData, operation: tuple[str, int, bytes | int]) -> None:
    kind, offset, arg = operation
    if kind == "write":
        buf = arg if isinstance(arg, bytes) else bytes([offset % 251 + 1]) * arg
        if offset > len(model):
            model.extend(bytes(offset - len(model)))
        model[offset : offset + len(buf)] = buf
        data.write(offset, buf)
    else:
        if offset < len(model):
            del model[offset:]
        else:
            model.extend(bytes(offset - len(model)))
        data.truncate(offset)


@settings(max_examples=300, deadline=None)
@given(OPERATIONS, st.lists(st.tuples(OFFSETS, OFFSETS), min_size=1, max_size=6))
def test_reads_like_a_zero_filled_bytearray(
    operations: list[tuple[str, int, bytes | int]], reads: list[tuple[int, int]]
) -> None:
    """Any sequence of writes and truncates: size, every read, and the whole content agree
    with the bytearray model; the bytes held never exceed the model's."""
    model, data = bytearray(), FileData()
    for operation in operations:
        apply(model, data, operation)
        assert len(data) == data.size == len(model)
        assert data.stored <= len(model)
        assert data.stored == sum(len(block) for block in data._blocks.values())
        assert all(i * BLOCK_SIZE + len(b) <= data.size for i, b in data._blocks.items())
    assert bytes(data) == bytes(model)
    for offset, size in reads:
        assert data.read(offset, size) == bytes(model[offset : offset + size])


def test_sparse_write_holds_only_what_was_written() -> None:
    """One byte at the end of 64 MiB: the size is 64 MiB, one byte is held."""
    data = FileData()
    offset = (64 << 20) - 1
    data.write(offset, b"x")
    assert data.size == 64 << 20
    assert data.stored == 1 + offset % BLOCK_SIZE  # zeros only before it, within its block
    assert len(data._blocks) == 1
    assert data.read(offset - 3, 10) == b"\0\0\0x"
    assert data.read(0, 4) == b"\0\0\0\0"


def test_small_file_holds_its_bytes_not_a_block() -> None:
    data = FileData()
    data.write(0, b"journal")
    assert data.stored == 7


def test_truncate_up_is_a_hole_and_truncate_down_frees() -> None:
    data = FileData()
    data.write(0, b"a" * (BLOCK_SIZE + 10))
    data.truncate(1 << 30)
    assert data.size == 1 << 30 and data.stored == BLOCK_SIZE + 10
    assert data.read(BLOCK_SIZE + 8, 4) == b"aa\0\0"
    data.truncate(5)
    assert data.stored == 5 and data.read(0, 100) == b"aaaaa"
    data.truncate(BLOCK_SIZE * 3)  # what was cut off does not come back
    assert data.read(4, 3) == b"a\0\0"
