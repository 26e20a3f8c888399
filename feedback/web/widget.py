"""The feedback widget's script and stylesheet, served for other sites to include.

The script holds no secret: the page that includes it passes its public widget
key in a ``data-key`` attribute, and the API checks the page's origin against
the key's allowed origins.
"""

from __future__ import annotations

from pathlib import Path

from flask import Response, send_from_directory

from feedback.web.pages import page_blueprint

STATIC = Path(__file__).parent / "static"
bp = page_blueprint("web_assets", __name__, static_folder="static", static_url_path="/assets")


def _asset(name: str, mimetype: str) -> Response:
    response = send_from_directory(STATIC, name, mimetype=mimetype, max_age=300)
    # Other sites include these: allow it explicitly (for pages that set COEP).
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


@bp.get("/widget.js")
def widget_js():
    """The widget: ``<script src=".../widget.js" data-key="WIDGET_KEY" defer></script>``."""
    return _asset("widget.js", "text/javascript")


@bp.get("/widget.css")
def widget_css():
    """The widget's default look; the script adds it to the page unless already there."""
    return _asset("widget.css", "text/css")
