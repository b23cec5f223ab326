"""Read R's serialization format (XDR, version 2 or 3) and lazy-load databases
(``NAME.rdx`` index + ``NAME.rdb`` data), enough to get character vectors out of an R
data package without R. Used for Jane Austen's novels (Debian ``r-cran-janeaustenr``).

Only the types such packages use are handled: NULL, symbols, pairlists, character,
logical, integer, double and generic vectors, attributes and references. Anything else is
a clear ``ValueError``.
"""
from __future__ import annotations

import gzip
import struct
import zlib

_NILVALUE, _EMPTYENV, _GLOBALENV, _REF = 254, 242, 253, 255
_SYM, _LIST, _CHAR, _LGL, _INT, _REAL, _STR, _VEC = 1, 2, 9, 10, 13, 14, 16, 19


class _Reader:
    def __init__(self, data: bytes):
        self.d, self.p, self.refs = data, 0, []

    def int(self) -> int:
        v = struct.unpack_from(">i", self.d, self.p)[0]
        self.p += 4
        return v

    def top(self):
        if self.d[:2] != b"X\n":
            raise ValueError("not R XDR serialization data")
        self.p = 2
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            n = self.int()  # native encoding name
            self.p += n
        elif version != 2:
            raise ValueError(f"R serialization version {version} not supported")
        return self.item()

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t in (_NILVALUE, _EMPTYENV, _GLOBALENV):
            return None
        if t == _REF:
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if t == _SYM:
            name = self.item()
            self.refs.append(name)
            return name
        if t == _CHAR:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            s = self.d[self.p:self.p + n]
            self.p += n
            return s.decode("latin-1" if flags & (1 << 12) else "utf-8", errors="replace")
        if t == _LIST:  # pairlist: a list of (tag, value)
            out = []
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out.append((tag, self.item()))
                flags = self.int()
                if flags & 0xFF != _LIST:
                    if flags & 0xFF != _NILVALUE:
                        raise ValueError("unexpected pairlist tail")
                    return out
                has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t in (_STR, _VEC):
            n = self.int()
            value = [self.item() for _ in range(n)]
        elif t in (_LGL, _INT):
            n = self.int()
            value = list(struct.unpack_from(f">{n}i", self.d, self.p))
            self.p += 4 * n
        elif t == _REAL:
            n = self.int()
            value = list(struct.unpack_from(f">{n}d", self.d, self.p))
            self.p += 8 * n
        else:
            raise ValueError(f"R object type {t} not supported")
        if has_attr:
            attrs = dict(self.item())
            if "names" in attrs and t == _VEC:
                return dict(zip(attrs["names"], value))
        return value


def unserialize(data: bytes):
    """An R object from serialized bytes: lists of str/int/float, dicts for named lists."""
    return _Reader(data).top()


def read_lazyload(rdx: bytes, rdb: bytes) -> dict:
    """{variable name: value} from a lazy-load database (the .rdx index, gzipped, and
    the .rdb data: per object a 4-byte length and a zlib stream)."""
    index = unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:]))
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[offset:offset + length]
        out[name] = unserialize(zlib.decompress(chunk[4:]))
    return out
