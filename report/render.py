"""HTML from the report's ``.qmd`` pages: Quarto when installed, else pandoc, else markdown-it-py.

The pages are written in the markdown subset all three read alike: headings, paragraphs, pipe tables,
fenced code, ``::: {#id .class}`` divs, ``[text]{.class}`` spans, and raw HTML blocks (figures with their
unit links). Figures and tables carry their own numbers in their captions, so no renderer's cross-reference
counter is involved. Without Quarto, each page gets the navigation bar (before its title) and a table of
contents, which ``_quarto.yml`` gives Quarto's website.
"""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.anchors import anchors_plugin
from mdit_py_plugins.attrs import attrs_plugin
from mdit_py_plugins.container import container_plugin

SITE = "_site"
TOC_LEVELS = (2, 3)


def renderer() -> str:
    return "quarto" if shutil.which("quarto") else "pandoc" if shutil.which("pandoc") else "python"


# ---------------------------------------------------------------- the navigation every page shares

def navigation(pages: Sequence[tuple[str, str]]) -> str:
    """One line of links to every page, (file stem, title) pairs, and to the channel browser, as raw HTML."""
    links = " · ".join([*(f'<a href="{stem}.html">{html.escape(title)}</a>' for stem, title in pages),
                        '<a href="units/index.html">Channels</a>'])
    return f'<nav class="report-nav">{links}</nav>\n'


def plain_markdown(text: str) -> str:
    """A ``.qmd`` page as plain markdown: ``.qmd`` links as ``.html``."""
    return re.sub(r"\]\(([\w-]+)\.qmd(#[\w.:-]+)?\)", r"](\1.html\2)", text)


def front_matter_title(text: str) -> tuple[str, str]:
    """(title, the rest) of a page with YAML front matter holding ``title: "..."``."""
    if not text.startswith("---\n"):
        return "", text
    end = text.index("\n---\n", 4)
    found = re.search(r'^title:\s*"?(.*?)"?\s*$', text[4:end], re.M)
    return (found.group(1) if found else ""), text[end + 5:]


# ---------------------------------------------------------------- the built-in renderer (markdown-it-py)

def _div_attributes(params: str) -> str:
    """``{#id .class .other}`` → ' id="id" class="class other"'."""
    ids = re.findall(r"#([\w.:-]+)", params)
    classes = re.findall(r"(?<![\w#])\.([\w-]+)", params)
    return (f' id="{html.escape(ids[0])}"' if ids else "") + (f' class="{" ".join(classes)}"' if classes else "")


def _render_div(self, tokens: list[Token], index: int, options, env) -> str:
    token = tokens[index]
    if token.nesting == 1:
        return f"<div{_div_attributes(token.info)}>\n"
    return "</div>\n"


def markdown_parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": True}).enable("table")
    attrs_plugin(parser, spans=True)
    container_plugin(parser, name="div", marker=":", validate=lambda params, *rest: True, render=_render_div)
    anchors_plugin(parser, min_level=TOC_LEVELS[0], max_level=TOC_LEVELS[-1])
    return parser


def table_of_contents(tokens: list[Token]) -> str:
    """A nested list of the page's level-2 and level-3 headings, linked by the ids the anchors plugin gave."""
    items, index = [], 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == "heading_open" and int(token.tag[1]) in TOC_LEVELS:
            text = html.escape(tokens[index + 1].content)
            items.append((int(token.tag[1]), f'<a href="#{token.attrs.get("id", "")}">{text}</a>'))
        index += 1
    if not items:
        return ""
    parts, depth = ['<nav id="TOC" role="doc-toc"><h2 class="toc-title">Contents</h2><ul>'], TOC_LEVELS[0]
    for level, link in items:
        while depth < level:
            parts.append("<ul>")
            depth += 1
        while depth > level:
            parts.append("</ul>")
            depth -= 1
        parts.append(f"<li>{link}</li>")
    parts += ["</ul>"] * (depth - TOC_LEVELS[0] + 1) + ["</nav>"]
    return "".join(parts)


def html_page(title: str, nav: str, toc: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
            f'<link rel="stylesheet" href="report.css">\n</head>\n<body>\n{nav}<header><h1 class="title">'
            f"{html.escape(title)}</h1></header>\n{toc}\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def markdown_to_html(text: str, nav: str = "", parser: MarkdownIt | None = None) -> str:
    """A whole HTML page from plain markdown with front matter: navigation, title, contents, body."""
    parser = parser or markdown_parser()
    title, text = front_matter_title(text)
    tokens = parser.parse(text)
    return html_page(title, nav, table_of_contents(tokens), parser.renderer.render(tokens, parser.options, {}))


# ---------------------------------------------------------------- rendering a site

def _sync(source: Path, target: Path) -> None:
    """Copy files that are new or changed (the fallback's stand-in for Quarto's resource copying)."""
    for path in source.rglob("*") if source.is_dir() else [source]:
        if path.is_dir():
            continue
        destination = target / path.relative_to(source) if source.is_dir() else target
        if not destination.exists() or destination.stat().st_mtime < path.stat().st_mtime:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def _pandoc(text: str, nav_file: Path, target: Path) -> None:
    # implicit_figures off: figures are raw HTML blocks that carry their own captions; the navigation goes
    # before the title (-B), as Quarto's navbar does.
    subprocess.run(["pandoc", "-f", "markdown-implicit_figures", "-t", "html5", "-s", "--toc",
                    f"--toc-depth={TOC_LEVELS[-1]}", "--css", "report.css", "-B", str(nav_file), "-o", str(target)],
                   input=text, text=True, check=True, capture_output=True, timeout=120)


def render_fallback(out_dir: Path, pages: Sequence[tuple[str, str]], use_pandoc: bool) -> Path:
    """HTML for every (stem, title) page without Quarto: pandoc when asked, else markdown-it-py."""
    site = out_dir / SITE
    site.mkdir(exist_ok=True)
    for name in ("figures", "tables", "report.css"):
        _sync(out_dir / name, site / name)
    nav = navigation(pages)
    nav_file = out_dir / "_navigation.html"
    nav_file.write_text(nav)
    parser = None if use_pandoc else markdown_parser()
    for stem, _ in pages:
        text = plain_markdown((out_dir / f"{stem}.qmd").read_text())
        if use_pandoc:
            _pandoc(text, nav_file, site / f"{stem}.html")
        else:
            (site / f"{stem}.html").write_text(markdown_to_html(text, nav, parser))
    return site / "index.html"


def render(out_dir: Path, pages: Sequence[tuple[str, str]], how: str) -> Path:
    if how == "quarto":
        completed = subprocess.run(["quarto", "render", str(out_dir)], capture_output=True, text=True)
        if completed.returncode == 0:
            return out_dir / SITE / "index.html"
        print(f"report: quarto render failed, using pandoc or the built-in renderer:\n{completed.stderr[-2000:]}",
              file=sys.stderr)
        how = "pandoc" if shutil.which("pandoc") else "python"
    return render_fallback(out_dir, pages, use_pandoc=how == "pandoc")
