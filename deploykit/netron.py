"""Show an ``.onnx`` or ``.tflite`` model in Netron inside the notebook.

Netron runs as a small web server on this machine's loopback interface. How the browser reaches
it depends on where JupyterLab runs:

* ``proxy`` (default when jupyter-server-proxy is installed, as in this course): through the
  Jupyter server itself, at ``<base_url>proxy/<port>/``. Works in local JupyterLab and on remote
  servers (Binder, JupyterHub), where the browser cannot reach the server's loopback.
* ``direct``: ``http://127.0.0.1:<port>/``; only when browser and kernel share a machine.
* ``colab`` (default on Google Colab): Colab's own kernel-port iframe.

Every view also draws the graph with matplotlib (the static fallback), so a saved or exported
notebook, or a viewer without JavaScript, still shows the graph.

What is served is Netron's own web UI from the pinned ``netron`` package, rewritten so that it runs
offline and sends nothing off this machine: no geo-IP lookup, no cookie notice, no Google Analytics,
and a ``Content-Security-Policy`` (``connect-src 'self'``) on every response (see ``_serve_privately``).
"""
from __future__ import annotations

import html
import logging
import os
import re
import sys
from pathlib import Path

from .graphs import SUPPORTED_SUFFIXES, draw_graph, load_graph

_servers: dict[str, tuple[str, int]] = {}
MODES = ("auto", "proxy", "direct", "colab", "static")


def _has_server_proxy() -> bool:
    try:
        import jupyter_server_proxy  # noqa: F401
    except ImportError:
        return False
    return True


def base_url() -> str:
    """The Jupyter server's base URL as the browser sees it (``/user/<name>/`` on a hub)."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or os.environ.get("DEPLOYKIT_JUPYTER_BASE_URL") or "/"
    return prefix if prefix.endswith("/") else prefix + "/"


_BUILD_DATE = re.compile(rb'<meta name="date" content="[^"]*">\s*')

# What Netron's page would send off this machine, and what the course serves instead.
# Netron's web UI (netron 9.3.3, browser.js, browser.Host.view) runs, at start-up:
#   consent():   a geo-IP lookup, fetch("https://ipinfo.io/json"), then (in Europe, or when that
#                lookup fails, as offline) the notice "This app uses cookies to report errors and
#                anonymous usage information" with an Accept button;
#   telemetry(): then (after Accept, or at once where no notice is shown) Google Analytics 4
#                (base.js, base.Telemetry.send: navigator.sendBeacon(
#                "https://analytics.google.com/g/collect?...")): the page's URL,
#                its referrer (the notebook's URL in JupyterLab, with the notebook's file name), title,
#                language, screen size, a client id kept in the cookies _ga / _ga<id>, then events:
#                model_open (format, producer), graph_view (node count), errors with their messages.
# The served JavaScript skips both calls (so no notice, no lookup, no analytics session: every
# Telemetry.send is then a no-op), tracking endpoints are replaced wherever they appear, and every
# response carries a Content-Security-Policy that lets the page connect to its own origin only.
_JS_CALLS_REMOVED = (b"await consent();", b"await telemetry();")  # in browser.js
TRACKING_HOSTS = ("analytics.google.com", "google-analytics.com", "googletagmanager.com", "doubleclick.net",
                  "ipinfo.io")
# A URL on one of those hosts, up to a quote, a space, a ${...} or a ")" (the code stays valid).
_TRACKING_URL = re.compile(
    rb"https?://(?:[\w-]+\.)*(?:" + b"|".join(re.escape(h.encode()) for h in TRACKING_HOSTS) + rb")[^'\"`\s$)]*")
# 'self' is the page's own origin: Netron's server (direct mode), the Jupyter server that proxies it
# (proxy mode) or Colab's kernel-port proxy. fetch, XMLHttpRequest, sendBeacon and WebSocket obey
# connect-src; scripts, workers, styles, images and fonts come from the page's origin too.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; script-src 'self'; worker-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",  # a clicked link (Netron's GitHub logo) does not carry the page's URL
}


def _rewrite(content_type: str, content: bytes) -> bytes:
    """What deploykit serves in place of Netron's own page and scripts (see the comment above)."""
    if content_type == "text/html":
        content = _BUILD_DATE.sub(b"", content)
    if content_type in ("text/html", "text/javascript"):
        for call in _JS_CALLS_REMOVED:
            content = content.replace(call, b"/* " + call[len(b"await "):-1] + b": removed by deploykit */")
        content = _TRACKING_URL.sub(b"about:blank", content)
    return content


def _serve_privately() -> None:
    """Patch Netron's request handler (once per process) so that what it serves runs offline and
    sends nothing off this machine:

    * the page without its build date: Netron compares it with the browser's clock and, 180 days
      after the build, shows "Please update to the newest version" forever instead of the graph (it
      assumes it can fetch a newer Netron); the course pins netron, so the build is treated as current;
    * no geo-IP lookup, no cookie notice, no Google Analytics (:func:`_rewrite`);
    * a ``Content-Security-Policy`` header (``connect-src 'self'``) on every response, the second
      line: the browser refuses any request to another host that Netron's code might still make.
    """
    from netron import server

    handler = server._HTTPRequestHandler
    if getattr(handler, "_deploykit_private", False):
        return
    write, end_headers = handler._write, handler.end_headers

    def _write(self, status_code, content_type, content):
        if content:
            content = _rewrite(content_type, content)
        return write(self, status_code, content_type, content)

    def _end_headers(self):
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        return end_headers(self)

    handler._write = _write
    handler.end_headers = _end_headers
    handler._deploykit_private = True


def serve(path) -> int:
    """Start (or reuse) a Netron server for ``path`` on 127.0.0.1 and return its port."""
    import netron

    _serve_privately()
    key = str(Path(path).resolve())
    if key not in _servers:
        # netron.serve calls logging.basicConfig(level=INFO) when the root logger has no handler,
        # which would print every library's INFO log for the rest of the session: undo that.
        root = logging.getLogger()
        level, handlers = root.level, root.handlers[:]
        try:
            _servers[key] = netron.serve(key, address=("127.0.0.1", 0), browse=False)
        finally:
            root.setLevel(level)
            root.handlers[:] = handlers
    return int(_servers[key][1])


def netron_url(path, mode: str = "auto") -> str:
    port = serve(path)
    if mode == "auto":
        mode = "proxy" if _has_server_proxy() else "direct"
    if mode == "proxy":
        return f"{base_url()}proxy/{port}/"
    return f"http://127.0.0.1:{port}/"


def show_netron(path, height: int = 520, mode: str = "auto", static: bool = True):
    """Display Netron for ``path`` in an iframe, plus a static drawing of the graph.

    ``mode``: ``"auto"``, ``"proxy"``, ``"direct"``, ``"colab"`` (see module docs) or ``"static"`` (drawing only,
    no server). Returns the :class:`deploykit.graphs.Graph` that was drawn.
    """
    from IPython.display import HTML, display

    path = Path(path)
    if mode not in MODES:
        raise ValueError(f"mode expected one of {MODES}, got {mode!r}")
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"show_netron expected a model file ending in {' or '.join(SUPPORTED_SUFFIXES)}, got {str(path)!r}")
    graph = load_graph(path)  # also raises FileNotFoundError with a hint
    if mode == "auto" and "google.colab" in sys.modules:
        mode = "colab"
    if mode == "colab":
        from google.colab import output  # only importable on Colab

        output.serve_kernel_port_as_iframe(serve(path), height=int(height))
    elif mode != "static":
        url = netron_url(path, mode)
        display(HTML(
            f'<iframe class="deploykit-netron" src="{html.escape(url)}" width="100%" height="{int(height)}" '
            f'style="border:1px solid #ccc"></iframe>'
            f'<div><a href="{html.escape(url)}" target="_blank">Open {html.escape(path.name)} in Netron in a new tab</a></div>'
        ))
    if static:
        import matplotlib.pyplot as plt

        fig = draw_graph(graph, title=f"{path.name}: {len(graph.nodes)} operators, depth {graph.depth()} (static view)")
        display(fig)
        plt.close(fig)
    return graph
