"""The course in a real browser: `make lab`, headless Chromium, Run All Cells, look at the result.

What a learner does, automated: start JupyterLab through the course's own route (`make lab`, on a
free loopback port, with a random token and no browser of its own), open a lecture in Debian's
Chromium (driven by Playwright; no browser is ever downloaded), run every cell from the Run menu,
then check what a person would see:

* no error output anywhere (cells tagged ``raises-exception`` may show one: they teach it);
* an ipywidgets control renders, and moving it changes the text it prints (Chinese terms in it
  need a CJK font, Debian's fonts-noto-cjk, or the screenshots show boxes: checked with fc-list);
* a matplotlib figure is shown as an image;
* the Netron view (``dk.show_netron``: an iframe served through jupyter-server-proxy at
  ``/proxy/<port>/``) draws the model's graph (after accepting its cookie notice, if it shows one),
  with deploykit's Content-Security-Policy (``connect-src 'self'``) on the page;
* nothing leaves the machine: every request to another host is blocked (and listed in
  ``blocked-requests.txt``), and any one, from the notebook's page, from Netron's frame or from no
  known frame (a beacon sent on the way out), fails the test, as does one a Content-Security-Policy
  refused. Netron's own page would ask a geo-IP service and, once its cookie notice is accepted,
  send Google Analytics hits; the notebooks' launch links are text, not badge images from Google's
  and mybinder.org's servers.

Which notebooks: lectures 04 (Netron) and 01 (widget, figures) when, together, they show all
three; otherwise the fixture ``tests/e2e/widget_plot_netron.ipynb`` (a widget, a plot and Netron
on a tiny exported model) joins them. ``COURSE_E2E_NOTEBOOKS=a.ipynb,b.ipynb`` picks others. What
a notebook must show is what its committed outputs show (for a notebook without outputs, what its
code calls for).

Nothing tracked changes: what runs is a copy with its outputs cleared
(``notebooks/.e2e-<name>-<pid>-<random>.ipynb``, deleted afterwards, autosave off); the test saves
that copy once, from the File menu, to read the outputs the browser holds. Screenshots and the
server log go to ``test-artifacts/browser/`` (git-ignored). Everything started here (``make lab``
in its own process group, its kernels, Chromium) is stopped at the end, also on failure.

Skipped, with the reason in the summary under ``pytest -rs``, when ``/usr/bin/chromium`` or the
Playwright package is missing.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urljoin

import nbformat
import pytest

from browser_support import CHROMIUM, CHROMIUM_FLAGS, CJK, OFF_MACHINE, cjk_fonts

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
STAMP = ROOT / ".venv" / ".course-installed"
FIXTURE = "tests/e2e/widget_plot_netron.ipynb"
# The real lectures with these features (Netron: 04; widgets and figures: 01).
LECTURES = ("notebooks/04_onnx_export_netron.ipynb", "notebooks/01_deployment_pipeline.ipynb")
FEATURES = ("widget", "figure", "netron")
# JupyterLab user settings for the test profile: never write the notebook, no news pop-up.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
SERVER_START_S = 120
RUN_ALL_S = 90  # a normal Run All takes 10-20 s here
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
LAUNCH_ENV = dict(os.environ)  # snapshot at import: tests/test_browser_e2e.py is collected first

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(f"browser test: {CHROMIUM} not found; install Debian's chromium to run it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test: the playwright package is not installed")


def expected_features(nb) -> set[str]:
    """What the notebook must show: what its committed outputs show or, if it has none (the fixture,
    or a lecture being re-executed), what its code asks for."""
    found = set()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.get("outputs", [])]
    for output in outputs:
        data = output.get("data", {})
        if WIDGET_MIME in data:
            found.add("widget")
        if "image/png" in data or "image/svg+xml" in data:
            found.add("figure")
        if "deploykit-netron" in str(data.get("text/html", "")):
            found.add("netron")
    if not outputs:
        source = "\n".join(cell.source for cell in code)
        if re.search(r"\binteract(ive)?\(", source):
            found.add("widget")
        if "plt.show()" in source:
            found.add("figure")
        if re.search(r"show_netron\((?![^)]*static)", source):
            found.add("netron")
    return found


def notebooks_under_test() -> list[str]:
    """The real lectures when, together, they show all three features; otherwise the fixture too."""
    chosen = os.environ.get("COURSE_E2E_NOTEBOOKS")
    if chosen:
        return [p.strip() for p in chosen.split(",") if p.strip()]
    lectures = [p for p in LECTURES if (ROOT / p).exists()]
    shown = set().union(*(expected_features(nbformat.read(ROOT / p, as_version=4)) for p in lectures))
    return lectures if shown >= set(FEATURES) else [FIXTURE, *lectures]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_command(port: int, token: str) -> list[str]:
    """The learner's command, `make lab`, told to open no browser and to use our port and token."""
    if not (ROOT / "notebooks" / "00_setup_check.ipynb").exists():
        pytest.fail("`make lab` opens notebooks/00_setup_check.ipynb, which is missing")
    lab_args = " ".join([
        "--no-browser", f"--IdentityProvider.token={token}",
        "--ContentsManager.allow_hidden=True",  # the copy under test is a hidden .e2e-*.ipynb file
        "--ServerApp.port_retries=0",  # our port or nothing: the test knows where to look
        # If this test is killed outright, what it left behind stops by itself: idle kernels after
        # 10 minutes, then the server 15 minutes after its last kernel.
        "--MappingKernelManager.cull_idle_timeout=600", "--MappingKernelManager.cull_interval=60",
        "--ServerApp.shutdown_no_activity_timeout=900",
    ])
    make = ["make", "--no-print-directory"]
    if not STAMP.exists():  # installing is not this test's business: run in the environment we are in
        make += ["-o", str(STAMP.relative_to(ROOT))]
    return [*make, "lab", f"PORT={port}", f"LAB_ARGS={lab_args}"]


class LabServer:
    """`make lab` in its own process group, with a throwaway Jupyter profile (settings, workspaces)."""

    def __init__(self, home: Path):
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.runtime = home / "runtime"
        self.log_path = ARTIFACTS / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None
        self.root_dir: Path | None = None

    def start(self) -> None:
        settings = self.home / "settings"
        for name, values in LAB_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        # The environment as it was before other test modules imported torch, TensorFlow & co.
        # (they set variables of their own): `make lab` runs as if from the learner's shell.
        env = {k: v for k, v in LAUNCH_ENV.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        env.update(
            JUPYTER_CONFIG_DIR=str(self.home / "config"), JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(lab_command(self.port, self.token), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`make lab` exited with code {self.proc.returncode} before serving:\n{self.log_tail()}")
            info = self._server_info()
            if info and self._status_ok():
                self.root_dir = Path(info["root_dir"])
                return
            time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s:\n{self.log_tail()}")

    def _server_info(self) -> dict | None:
        for path in self.runtime.glob("jpserver-*.json"):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if info.get("port") == self.port:
                return info
        return None

    def api(self, path: str, method: str = "GET", timeout: float = 10) -> object:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def _status_ok(self) -> bool:
        try:
            self.api("/api/status", timeout=2)
            return True
        except (OSError, urllib.error.URLError):
            return False

    def url_path(self, path: Path) -> str:
        """The path of a file as JupyterLab sees it (relative to the server's root folder)."""
        return quote(path.resolve().relative_to(self.root_dir.resolve()).as_posix())

    def shutdown_kernels_of(self, path: Path) -> None:
        try:
            rel = path.resolve().relative_to(self.root_dir.resolve()).as_posix()
            for session in self.api("/api/sessions"):
                if session.get("path") == rel:
                    self.api(f"/api/sessions/{session['id']}", method="DELETE")
        except (OSError, urllib.error.URLError, ValueError):
            pass  # the server shutdown below ends them anyway

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:  # a clean stop also shuts down the kernels (they run in their own sessions)
                self.api("/api/shutdown", method="POST", timeout=5)
                self.proc.wait(timeout=20)
            except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
                pass
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)  # make and everything it started
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    remove_orphan_copies()
    server = LabServer(tmp_path_factory.mktemp("jupyter-home"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def off_machine() -> list[str]:
    """Requests to other hosts the browser made (all blocked), each "METHOD url (from [iframe] origin)"."""
    return []


@pytest.fixture(scope="module")
def browser(tmp_path_factory, off_machine):
    blocked = off_machine

    def block(route):  # nothing leaves this machine; any such request fails the test (see leaks)
        request = route.request
        try:
            frame = request.frame
            origin = f"iframe {frame.url}" if frame.parent_frame is not None else frame.url
        except Exception:  # a service worker's request, or a beacon sent while its page was going away
            origin = "no known frame"
        blocked.append(f"{request.method} {request.url[:300]} (from {origin})")
        route.abort()

    playwright = sync_api.sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900}, timeout=60_000,
        )
        try:
            # Only requests to other hosts are routed to Python: the pattern is matched in the driver,
            # so JupyterLab's own loopback traffic never waits for this (sync) process to serve it.
            context.route(OFF_MACHINE, block)
            yield context
        finally:
            context.close()
            (ARTIFACTS / "blocked-requests.txt").write_text("".join(f"{what}\n" for what in blocked))
    finally:
        playwright.stop()


def clean_copy(source: Path, nb) -> Path:
    """A copy without outputs beside the original, so relative paths and the kernel's folder match."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    folder = source.parent if source.parent.resolve().is_relative_to((ROOT / "notebooks").resolve()) else ROOT / "notebooks"
    copy = folder / f".e2e-{source.stem}-{os.getpid()}-{secrets.token_hex(3)}.ipynb"
    nbformat.write(nb, copy)
    return copy


def remove_orphan_copies() -> None:
    """Delete copies left by a run that was killed (its pid is in the name), not those of a run in progress."""
    for stale in (ROOT / "notebooks").glob(".e2e-*.ipynb"):
        match = re.search(r"-(\d+)-[0-9a-f]{6}$", stale.stem)
        if match:
            try:
                os.kill(int(match.group(1)), 0)
                continue  # that run is alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        remove_copy(stale, checkpoints_existed=True)


def remove_copy(copy: Path, checkpoints_existed: bool) -> None:
    """Delete the copy and the checkpoint JupyterLab made of it (and its folder, if we caused it)."""
    copy.unlink(missing_ok=True)
    checkpoints = copy.parent / ".ipynb_checkpoints"
    for leftover in checkpoints.glob(f"{copy.stem}-checkpoint*"):
        leftover.unlink()
    if not checkpoints_existed and checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


KERNEL_IDLE_JS = "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /\\|\\s*Idle\\b/.test(e.textContent))"
RUN_STATE_JS = """(panel) => ({
    prompts: [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim()),
    dialog: document.querySelector('.jp-Dialog')?.innerText || null,
})"""
# In the page an error looks like stderr (JupyterLab renders both as text), so the page is searched for
# tracebacks, and the saved copy (below) for outputs of type "error".
TRACEBACK_JS = """(panel) => [...panel.querySelectorAll('.jp-Notebook .jp-Cell')].map((cell, i) => {
    const bad = [...cell.querySelectorAll('.jp-OutputArea-output')].filter(o => /Traceback \\(most recent call last\\)/.test(o.textContent));
    return bad.length ? [i, bad.map(o => o.textContent.slice(0, 300)).join(' | ')] : null;
}).filter(Boolean)"""


def wait_until(page, what: str, seconds: float, probe, interval_ms: int = 500):
    """Poll ``probe()`` until it returns something truthy; fail with ``what`` after ``seconds``.

    Waits with ``page.wait_for_timeout``, never ``time.sleep``: the sync Playwright API handles the
    browser's events (here: the loopback-only request filter) only while one of its calls runs.
    """
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        page.wait_for_timeout(interval_ms)


def wait_for_kernel(page) -> None:
    """The notebook's kernel is connected and idle (the status bar reads "Python 3 (ipykernel) | Idle")."""
    wait_until(page, "the kernel to start (status bar: '| Idle')", 90, lambda: page.evaluate(KERNEL_IDLE_JS))


class RunAllTimeout(AssertionError):
    """Run All Cells did not finish in time (the page stopped hearing back from the kernel)."""


def run_all_cells(page, panel) -> list[str]:
    """Run > Run All Cells, as a learner would; wait until the kernel stops (done, or halted by an error)."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu:visible .lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    handle = panel.element_handle()

    def prompts(condition):
        state = page.evaluate(RUN_STATE_JS, handle)
        assert not state["dialog"], f"JupyterLab opened a dialog while running: {state['dialog']!r}"
        return state["prompts"] if condition(state["prompts"]) else None

    wait_until(page, "the cells to start running", 30, lambda: prompts(lambda ps: any(p != "[ ]:" for p in ps)))
    try:
        wait_until(page, "Run All Cells to finish", RUN_ALL_S,
                   lambda: prompts(lambda ps: not any("*" in p for p in ps)) and page.evaluate(KERNEL_IDLE_JS))
    except AssertionError as error:
        raise RunAllTimeout(f"{error}; input prompts: {' '.join(page.evaluate(RUN_STATE_JS, handle)['prompts'])}") from None
    return page.evaluate(RUN_STATE_JS, handle)["prompts"]


def save_and_read(page, copy: Path):
    """File > Save Notebook (the copy under test), then read back what the browser holds, as nbformat sees it."""
    before = copy.stat().st_mtime_ns
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^File$")).click()
    page.locator(".lm-Menu:visible .lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()
    wait_until(page, "the notebook to be saved", 30, lambda: copy.stat().st_mtime_ns != before
               and not page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count())
    return nbformat.read(copy, as_version=4)


def error_outputs(page, panel, saved, allowed: set[int]) -> list[str]:
    """Error outputs (saved as type "error") and printed tracebacks, in cells not tagged raises-exception."""
    problems = [f"cell {i}: {output.ename}: {output.evalue}" for i, cell in enumerate(saved.cells) if cell.cell_type == "code"
                for output in cell.outputs if output.output_type == "error" and i not in allowed]
    failed = {i for i, cell in enumerate(saved.cells) for output in cell.get("outputs", []) if output.output_type == "error"}
    problems += [f"cell {i}: printed a traceback: {text}" for i, text in page.evaluate(TRACEBACK_JS, panel.element_handle())
                 if i not in allowed | failed]
    return problems


# The text a widget cell shows, minus the controls' own labels and readouts (those change with any move).
WIDGET_TEXT_JS = """(cell) => {
    const area = cell.querySelector('.jp-Cell-outputArea').cloneNode(true);
    area.querySelectorAll('.widget-readout, .widget-label, .widget-dropdown, .widget-checkbox, .widget-slider, '
                          + '.widget-toggle-buttons, .widget-radio, button, input, select, label').forEach(e => e.remove());
    return area.textContent.replace(/\\s+/g, ' ').trim();
}"""
CONTROLS = ".widget-dropdown select, .widget-checkbox input, .widget-slider .noUi-handle, .widget-toggle-button"


def check_widget(page, panel, shots: Path) -> str:
    """Change the first widget's controls one at a time, as a person would, until the text they drive changes."""
    cell = panel.locator(".jp-CodeCell").filter(has=page.locator(CONTROLS)).first
    cell.wait_for(state="attached", timeout=30_000)
    cell.scroll_into_view_if_needed()
    handle = cell.element_handle()
    before = page.evaluate(WIDGET_TEXT_JS, handle)
    if CJK.search(before):  # the course's Chinese terms (计算图 computation graph, ...)
        assert cjk_fonts() != [], "the widget shows Chinese text but no CJK font is installed (it renders as boxes): install Debian's fonts-noto-cjk"

    def moves():
        for select in cell.locator(".widget-dropdown select").all():
            count, current = select.locator("option").count(), select.evaluate("s => s.selectedIndex")
            if count >= 2:
                select.select_option(index=(current + 1) % count)
                yield f"dropdown option {current} -> {(current + 1) % count}"
        for box in cell.locator(".widget-checkbox input").all():
            box.click()
            yield "checkbox clicked"
        for slider in cell.locator(".widget-slider .noUi-handle").all():
            for key in ("End", "Home"):
                slider.focus()
                slider.press(key)
                yield f"slider moved with the {key} key"
        for button in cell.locator(".widget-toggle-button:not(.mod-active)").all():
            button.click()
            yield "toggle button clicked"

    tried = []
    after = before
    for what in moves():
        tried.append(what)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and after == before:
            page.wait_for_timeout(300)
            after = page.evaluate(WIDGET_TEXT_JS, handle)
        if after != before:
            break
    page.screenshot(path=str(shots / "2-widget.png"))
    assert tried, "the widget cell has no control this test knows how to move"
    assert after != before, f"the widget's output did not change after: {', '.join(tried)}; it shows {before[:200]!r}"
    return f"widget: {tried[-1]}: {before[:60]!r} -> {after[:60]!r}"


def check_figure(page, panel, shots: Path) -> str:
    images = panel.locator(".jp-OutputArea-output img")
    assert images.count() >= 1, "no image output (matplotlib figure) was rendered"
    image = images.first
    image.scroll_into_view_if_needed()
    width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
    page.screenshot(path=str(shots / "3-figure.png"))
    assert width > 0, "the figure's image did not load"
    return f"{images.count()} image(s), first {width} px wide"


NETRON_CSP = "connect-src 'self'"
NETRON_SETTLE_MS = 3000  # Netron sent its first analytics hits at once after the notice was accepted


def check_netron(page, panel, shots: Path) -> str:
    iframe = panel.locator("iframe.deploykit-netron").first
    iframe.wait_for(state="attached", timeout=30_000)
    src = iframe.get_attribute("src")
    assert re.fullmatch(r"/proxy/\d+/", src or ""), f"Netron iframe should go through jupyter-server-proxy, src={src!r}"
    iframe.scroll_into_view_if_needed()
    frame = page.frame_locator("iframe.deploykit-netron").first
    nodes = frame.locator("svg#canvas .graph-node")
    message = frame.locator("#message-button")
    consent = ""
    try:
        # Offline (or in the EU), Netron first asks to accept its cookie notice: click it, as a person would.
        nodes.first.or_(message).first.wait_for(state="visible", timeout=60_000)
        if not nodes.count() and message.is_visible():
            text = frame.locator("#message-text").inner_text()
            page.screenshot(path=str(shots / "4-netron-message.png"))
            assert "cookies" in text, f"Netron shows a message instead of the graph: {text!r}"
            message.click()
            consent = " (after accepting Netron's cookie notice)"
        nodes.first.wait_for(state="visible", timeout=60_000)
        # Netron draws the graph under its splash screen, then swaps the page's class from
        # "welcome spinner" to "default": only then does a person see the graph.
        frame.locator("body.default").wait_for(state="attached", timeout=60_000)
        assert not frame.locator("body.welcome").count(), "Netron still shows its splash screen over the graph"
    finally:
        page.screenshot(path=str(shots / "4-netron.png"))
    count = nodes.count()
    # Give late requests time to show, then leave Netron's page as a closed tab would (its analytics
    # sent a last hit on the way out); the caller then checks that nothing left the machine.
    page.wait_for_timeout(NETRON_SETTLE_MS)
    for child in page.frames:
        if re.search(r"/proxy/\d+/$", child.url):
            child.goto("about:blank")
    page.wait_for_timeout(1000)
    return f"Netron at {src} drew {count} node(s){consent}"


def check_netron_policy(page, panel) -> str:
    """Netron's page, as the browser gets it through the proxy (with the browser's cookies), carries
    deploykit's Content-Security-Policy: the second line, should Netron's code still try another host."""
    src = panel.locator("iframe.deploykit-netron").first.get_attribute("src")
    response = page.request.get(urljoin(page.url, src))
    policy = response.headers.get("content-security-policy", "")
    assert response.ok and NETRON_CSP in policy, f"Netron's page should carry a CSP with {NETRON_CSP!r}, got {policy!r}"
    return f"Netron's page carries the CSP: {policy[:60]}..."


def test_notebook_in_jupyterlab(notebook, lab, browser, off_machine):
    """Run the notebook in the browser; a Run All that never finishes is retried once in a fresh
    page (seen once in CI: the kernel went idle but the page never got the replies), and reported."""
    try:
        run_notebook_in_browser(notebook, lab, browser, off_machine)
    except RunAllTimeout as first:
        print(f"retrying {notebook} once after: {first}")
        run_notebook_in_browser(notebook, lab, browser, off_machine, attempt=2)


def leaks(off_machine: list[str], seen: int, console: list[str]) -> list[str]:
    """Requests to other hosts since ``seen``, from any frame (all were blocked by the route), and
    requests a Content-Security-Policy refused (the browser reports those on the console; they
    never reach the route)."""
    refused = [m for m in console if "Content Security Policy" in m or "Content-Security-Policy" in m]
    return ([f"request to another host: {what}" for what in off_machine[seen:]]
            + [f"refused by CSP: {m[:300]}" for m in refused])


def run_notebook_in_browser(notebook, lab, browser, off_machine, attempt: int = 1):
    source = ROOT / notebook
    nb = nbformat.read(source, as_version=4)
    expected = expected_features(nb)
    allowed = {i for i, cell in enumerate(nb.cells) if "raises-exception" in cell.get("metadata", {}).get("tags", [])}
    shots = ARTIFACTS / source.stem
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png") if attempt == 1 else ():
        old.unlink()
    tracked_before = source.read_bytes()
    copy = clean_copy(source, nb)
    checkpoints_existed = (copy.parent / ".ipynb_checkpoints").exists()
    page = browser.new_page()
    seen = len(off_machine)
    console = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}") if message.type == "error" else None)
    started = time.monotonic()
    try:
        workspace = f"e2e-{secrets.token_hex(4)}"  # a fresh layout: only this notebook open
        page.goto(f"{lab.base}/lab/workspaces/{workspace}/tree/{lab.url_path(copy)}?reset&token={lab.token}",
                  wait_until="domcontentloaded", timeout=60_000)
        panel = page.locator(".jp-NotebookPanel:visible").first
        panel.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        wait_for_kernel(page)
        page.screenshot(path=str(shots / "0-opened.png"))
        prompts = run_all_cells(page, panel)  # textContent: off-screen cells too
        page.screenshot(path=str(shots / "1-ran-all.png"))
        saved = save_and_read(page, copy)
        errors = error_outputs(page, panel, saved, allowed)
        assert not errors, "error output after Run All Cells:\n" + "\n".join(errors)
        assert all(re.search(r"\[\d+\]", p) for p in prompts), f"not every code cell ran: {' '.join(prompts)}"
        assert all(c.execution_count for c in saved.cells if c.cell_type == "code"), "the saved copy has cells that did not run"
        assert expected, f"{notebook} shows no widget, figure or Netron view in its committed outputs: nothing to check"
        report = [f"{notebook}: {len(prompts)} code cells ran in {time.monotonic() - started:.0f} s"]
        if "widget" in expected:
            report.append(check_widget(page, panel, shots))
        if "figure" in expected:
            report.append(check_figure(page, panel, shots))
        if "netron" in expected:
            report.append(check_netron(page, panel, shots))
        leaked = leaks(off_machine, seen, console)
        assert not leaked, "the page or Netron tried to reach another host (nothing may leave the machine):\n" + "\n".join(leaked)
        if "netron" in expected:
            report.append(check_netron_policy(page, panel))
        print("\n".join(report))
    except Exception:
        page.screenshot(path=str(shots / f"failure-attempt{attempt}.png"))
        (shots / f"console-errors-attempt{attempt}.txt").write_text("\n".join(console))
        raise
    finally:
        page.close()
        lab.shutdown_kernels_of(copy)
        remove_copy(copy, checkpoints_existed)
    assert source.read_bytes() == tracked_before, f"{notebook} changed during the browser test (which only runs a copy)"


def pytest_generate_tests(metafunc):  # pragma: no cover - collection hook, see notebooks_under_test
    if "notebook" in metafunc.fixturenames:
        metafunc.parametrize("notebook", notebooks_under_test())
