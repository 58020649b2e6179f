"""The bytes of one regular file, stored sparsely: memory follows the bytes written, not the
offsets they were written at.

A file is cut into blocks of :data:`BLOCK_SIZE` bytes. Only a block that a write touched
exists, and it holds its bytes only up to the last one written into it (a 10-byte file costs
10 bytes, not a block); everything else below ``size`` — holes between blocks, the rest of a
short block, the space a truncate added — reads as zeros. So one-byte writes at the end of 32
files of 64 MiB hold 32 blocks (128 KiB), not 2 GiB.

Invariant: no block holds a byte at or past ``size``, so growing the file (truncate up) only
sets ``size``, and what it adds reads as zeros.
"""

from __future__ import annotations

#: Bytes per block: a page, as tmpfs allocates. A write zero-fills at most the part of one
#: block before it, so a file holds at most this much more than the bytes written to it.
BLOCK_SIZE = 4096


class FileData:
    """A file's size and its written blocks (block index → bytes from the block's start)."""

    __slots__ = ("_blocks", "_stored", "size")

    def __init__(self) -> None:
        self.size = 0
        self._blocks: dict[int, bytearray] = {}
        #: Bytes held in blocks (kept up to date, so ``stored`` is O(1)).
        self._stored = 0

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.read(0, self.size)

    def __repr__(self) -> str:
        return f"FileData(size={self.size}, stored={self._stored}, blocks={len(self._blocks)})"

    @property
    def stored(self) -> int:
        """Bytes of memory the data holds (what ``st_blocks`` reports)."""
        return self._stored

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; fewer at the end of the file."""
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        if not self._blocks:
            return bytes(end - offset)
        out = bytearray(end - offset)
        for index in range(offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1):
            block = self._blocks.get(index)
            if not block:
                continue
            base = index * BLOCK_SIZE
            start = max(offset, base)
            stop = min(end, base + len(block))
            if start < stop:
                out[start - offset : stop - offset] = block[start - base : stop - base]
        return bytes(out)

    def write(self, offset: int, buf: bytes) -> None:
        """Store ``buf`` at ``offset``, allocating only the blocks it touches."""
        end = offset + len(buf)
        position = offset
        while position < end:
            index, within = divmod(position, BLOCK_SIZE)
            stop = min(end, (index + 1) * BLOCK_SIZE)
            block = self._blocks.get(index)
            if block is None:
                block = self._blocks[index] = bytearray()
            before = len(block)
            if within > before:
                block.extend(bytes(within - before))
            block[within : within + stop - position] = buf[position - offset : stop - offset]
            self._stored += len(block) - before
            position = stop
        if end > self.size:
            self.size = end

    def truncate(self, size: int) -> None:
        """Set the size: shrinking drops the bytes past it, growing adds zeros (a hole)."""
        if size < self.size:
            last = size // BLOCK_SIZE
            for index in [i for i in self._blocks if i >= last]:
                block = self._blocks[index]
                keep = size - index * BLOCK_SIZE
                if keep <= 0:
                    self._stored -= len(block)
                    del self._blocks[index]
                elif keep < len(block):
                    self._stored -= len(block) - keep
                    del block[keep:]
        self.size = size
