"""What a WebAssembly module imports, read from its binary without instantiating it.

The server decides from a plugin's imports whether its calls may wait on the network (and so must
never run on the event loop). Compilers drop imports a module never calls, so the list is precise.
"""

from __future__ import annotations

from typing import Final

from extproc.errors import ExtprocError

WASM_MAGIC: Final = b"\x00asm"
_IMPORT_SECTION: Final = 2
# Import kinds: function, table, memory, global, tag (exception handling).
_FUNC, _TABLE, _MEMORY, _GLOBAL, _TAG = range(5)


class WasmFormatError(ExtprocError, ValueError):
    """The bytes are not a well-formed module; `offset` is where reading failed."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"malformed WebAssembly module at byte {offset}: {reason}")
        self.offset = offset


class _Reader:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmFormatError(self.pos, "unexpected end of section")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u32(self) -> int:
        """An unsigned LEB128 number of at most 5 bytes."""
        result = shift = 0
        for _ in range(5):
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
        raise WasmFormatError(self.pos, "LEB128 number longer than 5 bytes")

    def name(self) -> str:
        length = self.u32()
        start, self.pos = self.pos, self.pos + length
        if self.pos > self.end:
            raise WasmFormatError(start, "name runs past the end of its section")
        try:
            return self.data[start : self.pos].decode()
        except UnicodeDecodeError:
            raise WasmFormatError(start, "name is not UTF-8") from None

    def limits(self) -> None:
        flags = self.byte()
        self.u64()
        if flags & 0x01:
            self.u64()

    def u64(self) -> None:
        """Skip an unsigned LEB128 number of up to 10 bytes (memory64 limits)."""
        for _ in range(10):
            if not self.byte() & 0x80:
                return
        raise WasmFormatError(self.pos, "LEB128 number longer than 10 bytes")


def imports(wasm: bytes) -> frozenset[tuple[str, str]]:
    """(module, name) of every import of the module `wasm`."""
    if not wasm.startswith(WASM_MAGIC) or len(wasm) < 8:
        raise WasmFormatError(0, "missing the \\0asm header")
    pos = 8
    while pos < len(wasm):
        header = _Reader(wasm, pos, len(wasm))
        section = header.byte()
        size = header.u32()
        start, end = header.pos, header.pos + size
        if end > len(wasm):
            raise WasmFormatError(start, f"section {section} runs past the end of the module")
        if section == _IMPORT_SECTION:
            return _import_section(_Reader(wasm, start, end))
        pos = end
    return frozenset()


def _import_section(reader: _Reader) -> frozenset[tuple[str, str]]:
    found = set()
    for _ in range(reader.u32()):
        module = reader.name()
        name = reader.name()
        kind = reader.byte()
        if kind in (_FUNC, _TAG):
            if kind == _TAG:
                reader.byte()  # attribute
            reader.u32()  # type index
        elif kind == _TABLE:
            reader.byte()  # element type
            reader.limits()
        elif kind == _MEMORY:
            reader.limits()
        elif kind == _GLOBAL:
            reader.byte()  # value type
            reader.byte()  # mutability
        else:
            raise WasmFormatError(reader.pos - 1, f"unknown import kind {kind}")
        found.add((module, name))
    return frozenset(found)
