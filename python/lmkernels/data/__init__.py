"""Default English text for tours, reference pipelines, benchmarks and tests.

The corpus is the docstrings of a fixed list of pure-Python standard-library modules,
so it needs no download: every Python installation ships these sources. The files are
parsed with :mod:`ast` rather than imported, so collecting has no side effects and does
not depend on import order, ``PYTHONHASHSEED``, installed packages or the working
directory. A given Python version therefore always yields the same text; different
versions document their standard library differently, so the text differs between them.
Collecting takes under a second of CPU time, once per process (the result is cached).

Example::

    from lmkernels import data

    train = data.text()                    # about 0.8 MB of prose, one docstring per paragraph
    heldout = data.documents("heldout")    # about 10% of the documents, chosen by name

Joining documents with end-of-text tokens is left to the tokenizer code.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPLITS", "Document", "documents", "multilingual_text", "paragraphs", "text"]

SPLITS = ("train", "heldout", "all")

# The standard library's sources (those of the base installation inside a virtual environment).
_STDLIB = Path(sysconfig.get_path("stdlib"))

# Shorter docstrings are mostly one-line summaries ("Return the size.") that add little prose.
_MIN_CHARS = 150

# A document is held out when the CRC-32 of its name is divisible by this (about 10%).
# CRC-32 is stable across processes, unlike the salted built-in hash().
_HELDOUT_MODULUS = 10

# Pure-Python modules present in CPython 3.10-3.13 whose import has no side effects (no
# tests, GUI, easter-egg or platform-specific modules), and of those only the ones whose
# source is at least 12% corpus text (measured on 3.11): parsing dominates the cost, and
# the other modules would nearly double it for 10% more text. The corpus follows this order.
_MODULES = tuple(
    """
    _py_abc _pydecimal _pyio _threading_local abc asyncio.events asyncio.futures
    asyncio.locks asyncio.protocols asyncio.queues asyncio.runners asyncio.staggered
    asyncio.streams asyncio.tasks asyncio.threads asyncio.transports base64 bdb bisect
    bz2 cmd code codecs codeop collections colorsys compileall concurrent.futures._base
    concurrent.futures.process configparser contextlib copy dbm difflib doctest
    email._encoded_words email._header_value_parser email._policybase email.base64mime
    email.charset email.generator email.header email.headerregistry email.message
    email.mime email.mime.application email.mime.audio email.mime.base email.mime.image
    email.mime.message email.mime.multipart email.mime.text email.parser email.policy
    email.quoprimime email.utils filecmp fileinput fnmatch fractions ftplib getopt
    getpass graphlib gzip hmac http http.client http.cookiejar http.cookies http.server
    imaplib importlib._abc importlib.abc importlib.metadata
    importlib.metadata._collections importlib.metadata._functools
    importlib.metadata._itertools importlib.metadata._text importlib.util inspect io
    ipaddress json json.decoder json.encoder keyword logging logging.handlers lzma
    mimetypes numbers operator optparse os pdb pkgutil platform poplib py_compile pyclbr
    queue random re runpy sched secrets selectors shelve shutil smtplib socket
    socketserver sqlite3 ssl statistics tempfile textwrap threading timeit tokenize
    traceback typing unittest unittest.case unittest.mock urllib urllib.error
    urllib.parse uuid wave wsgiref wsgiref.handlers wsgiref.headers wsgiref.util
    wsgiref.validate xml xml.dom xml.dom.domreg xml.etree.ElementTree xml.parsers
    xml.sax xml.sax._exceptions xml.sax.handler xml.sax.xmlreader xmlrpc.server zipapp
""".split()
)


@dataclass(frozen=True)
class Document:
    """One docstring; ``name`` is its origin, e.g. ``"json.decoder.JSONDecoder.raw_decode"``.

    Names are nearly unique: a function defined in both branches of an ``if`` has two documents.
    """

    name: str
    text: str


def documents(split: str = "train") -> list[Document]:
    """Return the documents of ``split`` ("train", "heldout" or "all") in corpus order.

    Train and held-out documents are disjoint and together make up "all"; which split a
    document belongs to depends only on its name.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    corpus = _corpus()
    if split == "all":
        return list(corpus)
    want_heldout = split == "heldout"
    return [doc for doc in corpus if _is_heldout(doc.name) == want_heldout]


def text(split: str = "train", separator: str = "\n\n") -> str:
    """Return the texts of ``documents(split)`` joined by ``separator``."""
    return separator.join(doc.text for doc in documents(split))


def paragraphs(text: str, one_line: bool = False) -> list[str]:
    """The paragraphs of ``text`` (separated by blank lines), stripped, empty ones dropped; with
    ``one_line``, every run of whitespace inside a paragraph (wrapping, indentation) becomes one space."""
    pieces = (" ".join(p.split()) if one_line else p.strip() for p in text.split("\n\n"))
    return [p for p in pieces if p]


def multilingual_text() -> str:
    """Thirteen short paragraphs about tokenisation, written for this package in German, French,
    Spanish, Russian, Greek, Vietnamese, Arabic, Japanese, Chinese, Korean, Hindi, Polish and
    Turkish (5.5 kB of UTF-8), separated by blank lines: non-English text for the tokenizer
    benchmarks and tests."""
    return (Path(__file__).with_name("multilingual.txt")).read_text(encoding="utf-8").strip()


def _is_heldout(name: str) -> bool:
    return zlib.crc32(name.encode()) % _HELDOUT_MODULUS == 0


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[Document, ...]:
    """Collect the docstrings of all ``_MODULES``, once per process.

    Exact duplicates (e.g. a docstring copied onto an override) are kept only once.
    Modules missing from a stripped-down installation are skipped rather than fatal.
    """
    seen: set[str] = set()
    corpus = []
    for module in _MODULES:
        source = _source(module)
        if source is None:
            continue
        for name, doc in _docstrings(ast.parse(source.read_bytes()), module):
            if len(doc) >= _MIN_CHARS and doc not in seen:
                seen.add(doc)
                corpus.append(Document(name, doc))
    return tuple(corpus)


def _source(module: str) -> Path | None:
    """Return the source file of the standard-library ``module``, or None if it is missing."""
    path = _STDLIB.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# The fields that hold statements (if/try/with/match blocks), where definitions can occur.
_BLOCKS = ("body", "handlers", "orelse", "finalbody", "cases")


def _docstrings(node: ast.AST, name: str) -> Iterator[tuple[str, str]]:
    """Yield ``(qualified name, cleaned docstring)`` of ``node`` and its definitions, in order."""
    if isinstance(node, (ast.Module, *_DEFINITIONS)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield name, doc.strip()
    for field in _BLOCKS:
        for child in getattr(node, field, ()):
            if isinstance(child, _DEFINITIONS):
                yield from _docstrings(child, f"{name}.{child.name}")
            else:
                yield from _docstrings(child, name)
