"""The search playground at ``/ui``: one page rendered from a template in the package, plus a small script
that calls the public JSON API with the page's API key (see docs/ui.md).

The page holds no data, so ``/ui`` and its two static files need no key (a browser cannot send a Bearer
header when it navigates); everything the page shows comes from key-checked routes. ``--reports DIR``
adds the reports of ``pplx-embed eval --output DIR`` (``DIR/report.md`` and ``DIR/*/report.md``) as
server-rendered HTML, their plots served from ``/ui/reports/files/`` (the page fetches them with the key).
"""

from __future__ import annotations

import hashlib
import html
from importlib import resources
from pathlib import Path
from urllib.parse import quote, urlsplit

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from pplx_embed.errors import InputError
from pplx_embed.serve.errors import APIError

STATIC = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
TABS = (("search", "Search"), ("compare", "Compare"), ("embed", "Embed"), ("reports", "Reports"))
SAMPLE_TEXTS = ("Why are kids so curious?\nChildren learn through curious exploration.\n"
                "Scientists explore the universe driven by curiosity.\nBinary vectors are 32x smaller than float32.")
# no inline script or style, nothing from another origin; images may be blobs (report plots fetched with the key)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
REPORT_FILES = {".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json",
                ".md": "text/markdown; charset=utf-8", ".csv": "text/csv; charset=utf-8"}


def is_open(path: str) -> bool:
    """Whether ``path`` is the page or one of its static files (no key needed: they hold no data)."""
    return path == "/ui" or path.startswith("/ui/static/")


def check_reports(directory: str | Path | None) -> Path | None:
    """The ``--reports`` directory, which must exist (else a one-line ``InputError``)."""
    if directory is None:
        return None
    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"--reports {directory}: not a directory (write one with pplx-embed eval --output DIR)")
    return path.resolve()


def _asset(name: str) -> str:
    return resources.files("pplx_embed.serve").joinpath("assets", name).read_text(encoding="utf-8")


def _report_file(root: Path, target: Path) -> Path | None:
    """``target`` when it is a servable file inside ``root`` (no way out by ``..`` or links), else ``None``."""
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError):
        return None
    inside = resolved == root or root in resolved.parents
    return resolved if inside and resolved.is_file() and resolved.suffix.lower() in REPORT_FILES else None


def render_reports(root: Path) -> str:
    """Every report under ``root`` as HTML (Markdown without raw HTML; images point at the files route)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    paths = ([root / "report.md"] if (root / "report.md").is_file() else []) + sorted(root.glob("*/report.md"))
    if not paths:
        return (f"<p>No <code>report.md</code> in {html.escape(root.name)} or its folders: write one with "
                "<code>pplx-embed eval --output DIR</code>.</p>")
    parts = []
    for path in paths:
        tokens = md.parse(path.read_text(encoding="utf-8"))
        for token in tokens:
            for child in token.children or []:
                if child.type == "image":
                    src = str(child.attrs.get("src", ""))
                    local = not urlsplit(src).scheme and not src.startswith("/")
                    found = _report_file(root, path.parent / src) if local and src else None
                    url = "/ui/reports/files/" + quote(found.relative_to(root).as_posix()) if found else None
                    child.attrs = {"data-src": url} if url else {}
        where = path.parent.relative_to(root).as_posix()
        parts.append(f'<article class="report-doc" data-report="{html.escape(where)}">'
                     f"{md.renderer.render(tokens, md.options, {})}</article>")
    return "\n".join(parts)


def router(auth: bool, reports: Path | None) -> APIRouter:
    """The page (``auth``: whether it must ask for a key), its static files and the reports routes."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pplx_embed.serve", "assets"),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    static = {name: _asset(name).encode("utf-8") for name in STATIC}
    version = hashlib.sha256(b"".join(static.values())).hexdigest()[:12]
    page = env.get_template("ui.html").render(auth=auth, reports=reports is not None, version=version, tabs=TABS,
                                              sample_texts=SAMPLE_TEXTS)
    api = APIRouter(include_in_schema=False)

    @api.get("/ui")
    def ui_page() -> Response:
        """The playground (holds no data: it asks the key-checked API for everything it shows)."""
        return HTMLResponse(page, headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})

    @api.get("/ui/static/{name}")
    def ui_static(name: str) -> Response:
        if name not in static:
            raise APIError(404, f"no static file {name!r}", code="not_found")
        return Response(static[name], media_type=STATIC[name],
                        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})

    def reports_dir() -> Path:
        if reports is None:
            raise APIError(404, "no reports are served: start the server with --reports DIR", code="not_found")
        return reports

    @api.get("/ui/reports")
    def ui_reports() -> Response:
        """The ``--reports`` reports as an HTML fragment for the page."""
        return HTMLResponse(render_reports(reports_dir()), headers=PAGE_HEADERS)

    @api.get("/ui/reports/files/{path:path}")
    def ui_report_file(path: str) -> Response:
        """A plot or table file of a report (PNG, SVG, JSON, Markdown, CSV inside the ``--reports`` directory)."""
        root = reports_dir()
        found = _report_file(root, root / path)
        if found is None:
            raise APIError(404, f"no report file {path[:200]!r}", code="not_found")
        return Response(found.read_bytes(), media_type=REPORT_FILES[found.suffix.lower()],
                        headers={**PAGE_HEADERS, "Content-Security-Policy": "default-src 'none'"})

    return api
