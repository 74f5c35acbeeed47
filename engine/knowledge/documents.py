"""Help-centre articles read from files: Markdown, plain text, HTML and PDF (pypdf).

A document is named by its path relative to the folder it was given in (``returns.md``,
``policies/warranty.md``), or by its file name when given as a file. Its title is its first
heading (Markdown ``#``, HTML ``<h1>``, or the HTML ``<title>``), the PDF's own title, and
otherwise the file name. Its URL is the front matter's ``url:`` (Markdown), else
``FRONTDESK_KB_URL_BASE`` joined with the source path, else none.

Reading streams: a document is read as a series of ``Heading`` and ``Paragraph`` events, a line
at a time, so a huge file is never in memory whole (a paragraph is cut at ``PARAGRAPH_CAP``
characters). Its hash is taken in a first pass, so an unchanged file is not read again.
"""

from __future__ import annotations

import hashlib
import html.parser
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from frontdesk.errors import FrontdeskError

if TYPE_CHECKING:
    from pypdf import PdfReader

MARKDOWN = (".md", ".markdown")
TEXT = (".txt",)
HTML = (".html", ".htm")
PDF = (".pdf",)
SUFFIXES = (*MARKDOWN, *TEXT, *HTML, *PDF)
PARAGRAPH_CAP = 8_000  # characters: a longer run of text without a blank line is cut here
# Part of every hash: a new way of cutting chunks re-cuts articles that did not change
FORMAT_VERSION = b"frontdesk-kb-1\n"
_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class Unreadable(FrontdeskError):
    """A file that cannot be added (binary, not UTF-8, a PDF without text); says why in one
    line, naming the file."""


@dataclass(frozen=True, slots=True)
class Heading:
    path: tuple[str, ...]  # the heading path below the title, outermost first


@dataclass(frozen=True, slots=True)
class Paragraph:
    text: str


Event = Heading | Paragraph


@dataclass(frozen=True, slots=True)
class Document:
    path: Path
    source: str
    title: str
    url: str | None
    content_hash: str
    n_bytes: int

    def events(self) -> Iterator[Event]:
        """The document's headings and paragraphs, in order, read from the file again."""
        suffix = self.path.suffix.lower()
        if suffix in PDF:
            yield from _pdf_events(self.path)
        elif suffix in HTML:
            yield from _html_events(self.path)
        elif suffix in MARKDOWN:
            yield from _markdown_events(_lines(self.path))
        else:
            yield from _paragraphs(_lines(self.path))


def find_documents(paths: Sequence[Path]) -> list[tuple[Path, str, str | None]]:
    """Each file to add, with its source name and the folder it comes from: a file as itself
    (by its name, from no folder), a folder's files of the known kinds by their path relative
    to it (hidden ones left out). Raises FileNotFoundError naming the first path that does not
    exist, before any is read."""
    missing = [given for given in paths if not given.exists()]
    if missing:
        raise FileNotFoundError(missing[0])
    found: list[tuple[Path, str, str | None]] = []
    for given in paths:
        if given.is_dir():
            origin = str(given.resolve())
            for path in sorted(given.rglob("*")):
                relative = path.relative_to(given)
                hidden = any(part.startswith(".") for part in relative.parts)
                if path.is_file() and not hidden and path.suffix.lower() in SUFFIXES:
                    found.append((path, relative.as_posix(), origin))
        else:
            found.append((given, given.name, None))
    return found


def open_document(path: Path, source: str, url_base: str | None = None) -> Document:
    """The document at ``path``: its hash (a pass over the file), title and URL. Raises
    ``Unreadable``."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise Unreadable(
            f"{source}: not a kind of file the knowledge base reads ({suffix or 'no suffix'})"
        )
    digest = hashlib.sha256(FORMAT_VERSION)
    n_bytes = 0
    try:
        with path.open("rb") as f:
            head = f.read(8192)
            if suffix not in PDF and b"\0" in head:
                raise Unreadable(f"{source}: a binary file, not text")
            block = head
            while block:
                digest.update(block)
                n_bytes += len(block)
                block = f.read(1 << 20)
    except OSError as exc:
        raise Unreadable(f"{source}: cannot be read ({exc.strerror or exc})") from exc
    url = None
    if suffix in PDF:
        title = _pdf_title(path, source)
    elif suffix in HTML:
        title = _html_title(path, source)
    elif suffix in MARKDOWN:
        front = _front_matter(_lines(path, source))
        url = front.get("url") or None
        title = front.get("title") or _markdown_title(_lines(path, source))
    else:
        title = ""
        for _ in _lines(path, source):  # decodes it all: an encoding error is found now
            pass
    title = title or path.stem.replace("-", " ").replace("_", " ").strip() or path.name
    if url is None and url_base:
        url = url_base.rstrip("/") + "/" + source
    return Document(path, source, " ".join(title.split()), url, digest.hexdigest(), n_bytes)


def _lines(path: Path, source: str | None = None) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8", errors="strict", newline=None) as f:
            yield from f
    except UnicodeDecodeError as exc:
        raise Unreadable(
            f"{source or path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc


def _front_matter(lines: Iterator[str]) -> dict[str, str]:
    """The ``key: value`` lines of a leading ``---`` block (YAML front matter, flat)."""
    first = next(lines, "")
    if first.strip() != "---":
        return {}
    found: dict[str, str] = {}
    for line in lines:
        if line.strip() in ("---", "..."):
            return found
        key, sep, value = line.partition(":")
        if sep and key.strip():
            found[key.strip().lower()] = value.strip().strip("'\"")
    return {}  # never closed: not front matter


def _markdown_title(lines: Iterator[str]) -> str:
    """The first level-1 heading outside code fences."""
    fence: str | None = None
    for line in lines:
        marker = _FENCE.match(line)
        if marker:
            fence = None if fence == marker.group(1) else fence or marker.group(1)
            continue
        heading = _ATX.match(line.rstrip("\n"))
        if fence is None and heading and len(heading.group(1)) == 1:
            return heading.group(2).strip()
    return ""


def _markdown_events(lines: Iterator[str]) -> Iterator[Event]:
    """Headings (ATX, outside code fences) and paragraphs, front matter left out. The first
    level-1 heading is the title's: it is not part of any heading path."""
    stack: list[tuple[int, str]] = []
    fence: str | None = None
    buffer: list[str] = []
    size = 0
    title_seen = False
    first = True
    in_front = False
    for raw in lines:
        line = raw.rstrip("\n")
        if first:
            first = False
            if line.strip() == "---":
                in_front = True
                continue
        if in_front:
            in_front = line.strip() not in ("---", "...")
            continue
        marker = _FENCE.match(line)
        if fence is not None:
            buffer.append(line)
            size += len(line)
            if marker and marker.group(1) == fence:
                fence = None
            continue
        if marker:
            fence = marker.group(1)
            buffer.append(line)
            continue
        heading = _ATX.match(line)
        if heading or not line.strip() or size > PARAGRAPH_CAP:
            if buffer:
                yield Paragraph("\n".join(buffer).strip())
                buffer, size = [], 0
            if heading:
                level, text = len(heading.group(1)), heading.group(2).strip()
                if not title_seen and level == 1:  # the title: above every heading path
                    title_seen = True
                    stack = []
                    yield Heading(())
                    continue
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, text))
                yield Heading(tuple(t for _, t in stack))
            if heading or not line.strip():
                continue
        buffer.append(line)
        size += len(line)
    if buffer:
        yield Paragraph("\n".join(buffer).strip())


def _paragraphs(lines: Iterator[str]) -> Iterator[Event]:
    buffer: list[str] = []
    size = 0
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip() or size > PARAGRAPH_CAP:
            if buffer:
                yield Paragraph("\n".join(buffer).strip())
                buffer, size = [], 0
            if not line.strip():
                continue
        buffer.append(line)
        size += len(line)
    if buffer:
        yield Paragraph("\n".join(buffer).strip())


class _HtmlReader(html.parser.HTMLParser):
    """Collects an HTML page's title, headings and text blocks, fed a piece at a time."""

    BLOCKS = frozenset(
        [
            "p",
            "li",
            "td",
            "th",
            "pre",
            "blockquote",
            "dd",
            "dt",
            "div",
            "section",
            "article",
            "br",
            "tr",
        ]
    )
    SKIP = frozenset(("script", "style", "noscript", "template", "head"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.first_h1 = ""
        self.events: list[Event] = []
        self._text: list[str] = []
        self._in_title = False
        self._heading: int | None = None
        self._skip = 0
        self._stack: list[tuple[int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skip += 1
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._flush()
            self._heading = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif self._heading is not None and tag == f"h{self._heading}":
            text = " ".join("".join(self._text).split())
            self._text = []
            level, self._heading = self._heading, None
            if not text:
                return
            if level == 1 and not self.first_h1:
                self.first_h1 = text
                self._stack = []
                self.events.append(Heading(()))
                return
            while self._stack and self._stack[-1][0] >= level:
                self._stack.pop()
            self._stack.append((level, text))
            self.events.append(Heading(tuple(t for _, t in self._stack)))
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self._text.append(data)
            if self._heading is None and sum(map(len, self._text)) > PARAGRAPH_CAP:
                self._flush()

    def _flush(self) -> None:
        if self._heading is not None:
            return
        text = " ".join("".join(self._text).split())
        self._text = []
        if text:
            self.events.append(Paragraph(text))

    def drain(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def _html_events(path: Path) -> Iterator[Event]:
    reader = _HtmlReader()
    for line in _lines(path):
        reader.feed(line)
        yield from reader.drain()
    reader.close()
    reader._flush()
    yield from reader.drain()


def _html_title(path: Path, source: str) -> str:
    reader = _HtmlReader()
    for line in _lines(path, source):
        reader.feed(line)
        reader.drain()
        if reader.first_h1:
            break
    return " ".join(reader.title.split()) or reader.first_h1


def _pdf_reader(path: Path, source: str) -> PdfReader:
    # imported here: pypdf takes a tenth of a second to import, which every frontdesk command
    # (the gateway, the worker, the admin CLI) would pay at its start, to read no PDF
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        return PdfReader(path)
    except (PyPdfError, OSError, ValueError) as exc:
        raise Unreadable(f"{source}: not a readable PDF ({exc})") from exc


def _pdf_title(path: Path, source: str) -> str:
    reader = _pdf_reader(path, source)
    if not any((page.extract_text() or "").strip() for page in reader.pages):
        raise Unreadable(f"{source}: a PDF without text (scanned pages need OCR first)")
    meta = reader.metadata
    return str(meta.title or "") if meta is not None else ""


def _pdf_events(path: Path) -> Iterator[Event]:
    reader = _pdf_reader(path, path.name)
    for page in reader.pages:
        yield from _paragraphs(iter((page.extract_text() or "").splitlines()))
