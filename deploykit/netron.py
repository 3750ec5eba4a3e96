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


def _serve_without_build_date() -> None:
    """Netron's page compares its build date with the browser's clock and, 180 days after the
    build, shows "Please update to the newest version" forever instead of the graph (it assumes it
    can fetch a newer Netron). The course pins netron and runs offline, so the page is served
    without its build date; Netron then treats the build as current. Idempotent."""
    from netron import server

    handler = server._HTTPRequestHandler
    if getattr(handler, "_deploykit_undated", False):
        return
    write = handler._write

    def _write(self, status_code, content_type, content):
        if content_type == "text/html" and content:
            content = _BUILD_DATE.sub(b"", content)
        return write(self, status_code, content_type, content)

    handler._write = _write
    handler._deploykit_undated = True


def serve(path) -> int:
    """Start (or reuse) a Netron server for ``path`` on 127.0.0.1 and return its port."""
    import netron

    _serve_without_build_date()
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
