"""Headless Chromium driven over the DevTools protocol, for the tests of the HTML outputs.

Chromium (Debian package ``chromium``) is started with ``--remote-debugging-pipe``: protocol
messages are JSON terminated by a NUL byte, written to its fd 3 and read from its fd 4, so no
WebSocket library and no network port are needed. One page (target) is attached in flat
session mode. Console messages, uncaught exceptions, log entries and every network request
are recorded, so a test can assert "no console errors" and "nothing fetched from the network".

    with Browser() as b:
        b.open(path)                      # waits for the load event
        b.evaluate("document.title")      # -> value
        b.click_selector("li.result")     # real mouse events at the element's centre
        b.console                         # ["error: ...", ...]
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.width, self.height, self.timeout = width, height, timeout
        self.console: list[str] = []
        self.requests: list[str] = []
        self._events: list[dict] = []
        self._id = 0
        self._buf = b""

    # -- process and transport ------------------------------------------------------------
    def __enter__(self) -> "Browser":
        exe = chromium()
        if exe is None:
            raise BrowserError("Chromium is not installed")
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child must see the pipes as fds 3 (reads commands) and 4 (writes replies). Copies at
        # fds >= 10 (not inheritable, so closed at exec) keep dup2 from overwriting one with the other.
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)

        def child_fds() -> None:
            os.dup2(high_r, 3)  # dup2 targets are inheritable
            os.dup2(high_w, 4)
        self._proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
             f"--window-size={self.width},{self.height}", f"--user-data-dir={self._profile.name}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        for fd in (to_browser_r, from_browser_w, high_r, high_w):
            os.close(fd)
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                      session=False)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                             "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._write({"id": self._next_id(), "method": "Browser.close"})
        except OSError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def _write(self, msg: dict) -> None:
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError("Chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._record(msg)
        return msg

    def _record(self, msg: dict) -> None:
        method, p = msg["method"], msg.get("params", {})
        self._events.append(msg)
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append(f"{p.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append(f"log {e.get('level')}: {e.get('text')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url", ""))

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send one command and return its result (events arriving meanwhile are recorded)."""
        msg_id = self._next_id()
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self._session
        self._write(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _wait_event(self, method: str, deadline: float) -> dict:
        seen = len(self._events)
        while True:
            for ev in self._events[seen:]:
                if ev["method"] == method:
                    return ev
            seen = len(self._events)
            self._read(deadline)

    # -- page actions ----------------------------------------------------------------------
    def open(self, path: str | os.PathLike) -> None:
        """Load a local file and wait for its load event."""
        self._events.clear()
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self._wait_event("Page.loadEventFired", time.monotonic() + self.timeout)

    def evaluate(self, expression: str):
        """Value of a JavaScript expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(f"{expression!r}: {d.get('exception', {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def click(self, x: float, y: float) -> None:
        """A left mouse click at viewport coordinates (press and release)."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def click_selector(self, selector: str) -> None:
        """Scroll the first element matching ``selector`` into view and click its centre."""
        box = self.evaluate(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        self.click(*box)

    def type_text(self, selector: str, text: str) -> None:
        """Focus an input and type ``text`` into it (as keyboard input: fires 'input' events)."""
        self.click_selector(selector)
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: str | os.PathLike) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))


def console_messages(page: str | os.PathLike) -> list[str]:
    """Console messages, uncaught exceptions and log entries while loading ``page``."""
    with Browser() as b:
        b.open(page)
        b.evaluate("new Promise(r => setTimeout(r, 100))")  # let late scripts run
        return list(b.console)
