"""Default English text for tours, reference pipelines, benchmarks and tests.

The corpus is the docstrings of a fixed list of pure-Python standard-library modules,
so it needs no download: every Python installation ships these sources. The files are
parsed with :mod:`ast` instead of imported, which is fast, has no side effects and does
not depend on import order, ``PYTHONHASHSEED``, installed packages or the working
directory. A given Python version therefore always yields the same text; different
versions document their standard library differently, so the text differs between them.

Example::

    from lmkernels import data

    train = data.text()                    # about 1 MB of prose, one docstring per paragraph
    heldout = data.documents("heldout")    # about 10% of the documents, chosen by name

Joining documents with end-of-text tokens is left to the tokenizer code.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["SPLITS", "Document", "documents", "text"]

SPLITS = ("train", "heldout", "all")

# Shorter docstrings are mostly one-line summaries ("Return the size.") that add little prose.
_MIN_CHARS = 200

# A document is held out when the CRC-32 of its name is divisible by this (about 10%).
# CRC-32 is stable across processes, unlike the salted built-in hash().
_HELDOUT_MODULUS = 10

# Pure-Python modules present in CPython 3.10-3.13 whose import has no side effects,
# excluding test packages, GUI and easter-egg modules and platform-specific modules.
# Sorted, so that the corpus order is fixed.
_MODULES = tuple(
    """
    _collections_abc _compat_pickle _compression _markupbase _py_abc _pydecimal
    _pyio _strptime _threading_local _weakrefset abc argparse ast asyncio
    asyncio.base_events asyncio.base_futures asyncio.base_subprocess
    asyncio.base_tasks asyncio.constants asyncio.coroutines asyncio.events
    asyncio.exceptions asyncio.format_helpers asyncio.futures asyncio.locks
    asyncio.log asyncio.mixins asyncio.proactor_events asyncio.protocols
    asyncio.queues asyncio.runners asyncio.selector_events asyncio.sslproto
    asyncio.staggered asyncio.streams asyncio.subprocess asyncio.tasks
    asyncio.threads asyncio.transports asyncio.trsock base64 bdb bisect bz2 cProfile
    calendar cmd code codecs codeop collections collections.abc colorsys compileall
    concurrent concurrent.futures concurrent.futures._base
    concurrent.futures.process concurrent.futures.thread configparser contextlib
    contextvars copy copyreg csv ctypes ctypes._endian ctypes.util dataclasses
    datetime dbm dbm.dumb decimal difflib dis doctest email email._encoded_words
    email._header_value_parser email._parseaddr email._policybase email.base64mime
    email.charset email.contentmanager email.encoders email.errors email.feedparser
    email.generator email.header email.headerregistry email.iterators email.message
    email.mime email.mime.application email.mime.audio email.mime.base
    email.mime.image email.mime.message email.mime.multipart email.mime.nonmultipart
    email.mime.text email.parser email.policy email.quoprimime email.utils enum
    filecmp fileinput fnmatch fractions ftplib functools genericpath getopt getpass
    gettext glob graphlib gzip hashlib heapq hmac html html.entities html.parser
    http http.client http.cookiejar http.cookies http.server imaplib importlib
    importlib._abc importlib._bootstrap importlib._bootstrap_external importlib.abc
    importlib.machinery importlib.metadata importlib.metadata._adapters
    importlib.metadata._collections importlib.metadata._functools
    importlib.metadata._itertools importlib.metadata._meta importlib.metadata._text
    importlib.readers importlib.resources importlib.util inspect io ipaddress json
    json.decoder json.encoder json.scanner json.tool keyword linecache locale
    logging logging.config logging.handlers lzma mailbox mimetypes modulefinder
    multiprocessing multiprocessing.connection multiprocessing.context
    multiprocessing.dummy multiprocessing.dummy.connection multiprocessing.heap
    multiprocessing.managers multiprocessing.pool multiprocessing.process
    multiprocessing.queues multiprocessing.reduction multiprocessing.resource_sharer
    multiprocessing.resource_tracker multiprocessing.shared_memory
    multiprocessing.sharedctypes multiprocessing.spawn multiprocessing.synchronize
    multiprocessing.util netrc numbers opcode operator optparse os pathlib pdb
    pickle pickletools pkgutil platform plistlib poplib pprint profile pstats
    py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter runpy sched
    secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3
    sqlite3.dbapi2 sqlite3.dump ssl stat statistics string stringprep struct
    subprocess symtable sysconfig tabnanny tarfile tempfile textwrap threading
    timeit token tokenize trace traceback tracemalloc types typing unittest
    unittest._log unittest.async_case unittest.case unittest.loader unittest.main
    unittest.mock unittest.result unittest.runner unittest.signals unittest.suite
    unittest.util urllib urllib.error urllib.parse urllib.request urllib.response
    urllib.robotparser uuid warnings wave weakref webbrowser wsgiref
    wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util
    wsgiref.validate xml xml.dom xml.dom.NodeFilter xml.dom.domreg
    xml.dom.expatbuilder xml.dom.minicompat xml.dom.minidom xml.dom.pulldom
    xml.dom.xmlbuilder xml.etree xml.etree.ElementInclude xml.etree.ElementPath
    xml.etree.ElementTree xml.parsers xml.sax xml.sax._exceptions
    xml.sax.expatreader xml.sax.handler xml.sax.saxutils xml.sax.xmlreader xmlrpc
    xmlrpc.client xmlrpc.server zipapp zipfile zipimport zoneinfo zoneinfo._common
    zoneinfo._tzpath zoneinfo._zoneinfo
""".split()
)


@dataclass(frozen=True)
class Document:
    """One docstring: ``name`` is where it comes from, e.g. ``"json.decoder.JSONDecoder.decode"``."""

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


def _is_heldout(name: str) -> bool:
    return zlib.crc32(name.encode()) % _HELDOUT_MODULUS == 0


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[Document, ...]:
    """Collect the docstrings of all ``_MODULES``, once per process.

    Exact duplicates (e.g. a docstring copied onto an override) are kept only once.
    Modules missing from a stripped-down installation are skipped.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    corpus = []
    for module in _MODULES:
        path = stdlib.joinpath(*module.split("."))
        source = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        if not source.is_file():
            continue
        for name, doc in _docstrings(ast.parse(source.read_bytes()), module):
            if len(doc) >= _MIN_CHARS and doc not in seen:
                seen.add(doc)
                corpus.append(Document(name, doc))
    return tuple(corpus)


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(node: ast.AST, name: str) -> Iterator[tuple[str, str]]:
    """Yield ``(qualified name, cleaned docstring)`` for ``node`` and everything defined in it, in source order."""
    if isinstance(node, (ast.Module, *_DEFINITIONS)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield name, doc.strip()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFINITIONS):
            yield from _docstrings(child, f"{name}.{child.name}")
        elif not isinstance(child, ast.expr):  # definitions only occur in statements
            yield from _docstrings(child, name)
