"""Open a report in a real headless Chromium and check it as a reader would see it.

Drives the system's Chromium (Debian's `chromium` package; never a downloaded browser) over the
Chrome DevTools Protocol with the small `websocket-client` library: load the file, collect console
errors, uncaught exceptions, failed loads and any request that would need the network, wait until
the page says its charts are drawn, count the chart elements that hold an SVG plot, and save a
screenshot of the first screen.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-allow-origins=*", "--remote-debugging-port=0", "--hide-scrollbars")
WIDTH, HEIGHT = 1280, 900


def find_chromium() -> str | None:
    """$PAGESIM_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("PAGESIM_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class PageCheck:
    """What the browser saw."""

    charts_expected: int
    charts_rendered: int
    errors: list[str] = field(default_factory=list)          # console errors, exceptions, failed loads
    network: list[str] = field(default_factory=list)         # requests beyond file: and data: URLs
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not self.network and self.charts_rendered == self.charts_expected


class _CDP:
    """A minimal DevTools session on one page target: commands in order, events buffered."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expr: str) -> Any:
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")


def _launch(binary: str, profile: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode} before opening DevTools")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("chromium did not open its DevTools port within 60 s")


def _collect(events: list[dict[str, Any]], out: PageCheck) -> None:
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.errors.append("log: " + str(p["entry"].get("text")))
        elif method == "Network.requestWillBeSent":
            url = str(p.get("request", {}).get("url", ""))
            if not url.startswith(("file:", "data:", "blob:", "about:")):
                out.network.append(url)
        elif method == "Network.loadingFailed":
            out.errors.append(f"load failed: {p.get('errorText')}")


def check_page(html_path: Path, screenshot: Path | None = None, timeout_s: float = 90.0,
               full_page: bool = False) -> PageCheck:
    """Load `html_path` in headless Chromium; return what it saw and save a screenshot of the first
    screen (of the whole page with `full_page`)."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found: apt-get install -y chromium (or set PAGESIM_CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="pagesim-chromium-")
    proc, port = _launch(binary, profile)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        cdp = _CDP(page["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        cdp.call("Page.navigate", url=Path(html_path).resolve().as_uri())
        deadline = time.monotonic() + timeout_s
        state = None
        while time.monotonic() < deadline:
            state = cdp.evaluate("document.readyState === 'complete' && document.body ? "
                                 "[document.body.dataset.chartsRendered || null, document.getElementById('jsmsg')?.textContent || ''] : null")
            if state and (state[0] is not None or state[1]):
                break
            time.sleep(0.2)
        expected = int(cdp.evaluate("Number(document.body.dataset.chartsExpected || 0)") or 0)
        drawn = int(cdp.evaluate("[...document.querySelectorAll('div.chart')]"
                                 ".filter(d => d.querySelector('svg.main-svg')).length") or 0)
        result = PageCheck(expected, drawn)
        if not state or state[0] is None:
            result.errors.append(f"charts not drawn within {timeout_s:.0f} s" + (f": {state[1]}" if state and state[1] else ""))
        cdp.call("Runtime.evaluate", expression="window.scrollTo(0, 0)")
        time.sleep(0.3)
        if screenshot is not None:
            params: dict[str, Any] = {"format": "png"}
            if full_page:
                h = int(cdp.evaluate("document.documentElement.scrollHeight") or HEIGHT)
                params |= {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": WIDTH, "height": h, "scale": 1}}
            shot = cdp.call("Page.captureScreenshot", **params)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            result.screenshot = Path(screenshot)
        cdp.call("Runtime.evaluate", expression="0")   # flush pending events
        _collect(cdp.events, result)
        cdp.ws.close()
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
