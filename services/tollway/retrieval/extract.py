"""Text out of the files ``tollway ingest`` reads: plain text, Markdown and HTML.

Markdown and plain text are kept as they are (the recursive chunker reads Markdown
headings and code fences). HTML becomes Markdown-like text: headings become ``#`` lines,
``<pre>`` blocks become fenced code, block elements become paragraphs, and scripts, styles
and navigation are dropped, so the chunker sees the page's structure.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from tollway.mesh.frozen import frozen

FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}

_SKIP = {"script", "style", "nav", "head", "noscript", "svg", "template"}
_BLOCKS = {"p", "div", "section", "article", "li", "ul", "ol", "table", "tr", "blockquote", "br", "hr", "main",
           "header", "footer", "dd", "dt", "figcaption"}  # fmt: skip
_HEADING = re.compile(r"^h([1-6])$")


class ExtractError(ValueError):
    """A file that cannot be ingested; the message says why."""


@frozen
class Extracted:
    """A file's text, title and format."""

    text: str
    title: str
    format: str


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _SKIP:
            self.skip += 1
        elif m := _HEADING.match(tag):
            self.out.append("\n\n" + "#" * int(m.group(1)) + " ")
        elif tag == "pre":
            self.pre += 1
            self.out.append("\n\n```\n")
        elif tag in _BLOCKS:
            self.out.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif _HEADING.match(tag) or tag in _BLOCKS:
            self.out.append("\n\n")
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self.out.append("\n```\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self.skip:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> tuple[str, str]:
    """(Markdown-like text, the page's <title>) of an HTML document."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.out)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip(), parser.title.strip()


def extract(path: Path) -> Extracted:
    """Reads one file.

    Raises:
        ExtractError: Unsupported extension, not UTF-8, binary content, or no text at all.
    """
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ExtractError(f"unsupported file type {path.suffix!r} (use {', '.join(sorted(FORMATS))})")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ExtractError("binary content (NUL bytes), not text")
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExtractError(f"not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})") from None
    title = ""
    if kind == "html":
        content, title = html_to_text(content)
    if not content.strip():
        raise ExtractError("no text in the file")
    if not title:
        heading = re.search(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", content, re.MULTILINE)
        title = heading.group(1).strip() if heading else path.stem
    return Extracted(content, title[:1024], kind)
