"""Open a page in headless Chromium (Debian's /usr/bin/chromium) over the DevTools protocol:
collect console errors and exceptions, check every image decoded, save a full-page screenshot."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1200,900"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("chromium is not installed (make test installs Debian's chromium package)")
    return path


def inspect_page(url: str, screenshot: Path) -> dict:
    # Chromium's helper processes (renderer, crashpad) outlive the main one by a moment and keep
    # writing to the profile: the whole process group is stopped before the profile is removed, and
    # a file a straggler writes after that does not fail the test.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            port = _devtools_port(proc)
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in targets if t["type"] == "page")
            return asyncio.run(_inspect(page["webSocketDebuggerUrl"], url, screenshot))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


def _devtools_port(proc, timeout: float = 30) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if m:
            return int(m.group(1))
    raise RuntimeError("chromium did not start its DevTools endpoint")


async def _inspect(ws_url: str, url: str, screenshot: Path) -> dict:
    import websockets

    ids = itertools.count(1)
    errors: list[str] = []
    async with websockets.connect(ws_url, max_size=None) as ws:
        async def call(method, **params):
            i = next(ids)
            await ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                _collect(msg, errors)
                if msg.get("id") == i:
                    return msg.get("result", {})

        for domain in ("Page", "Runtime", "Log"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=url)
        while True:  # until the load event
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            _collect(msg, errors)
            if msg.get("method") == "Page.loadEventFired":
                break
        check = await call("Runtime.evaluate", returnByValue=True, expression=(
            "JSON.stringify(Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]))"))
        images = json.loads(check["result"]["value"])
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    return {"errors": errors, "images": images}


def _collect(msg: dict, errors: list[str]) -> None:
    method, params = msg.get("method"), msg.get("params", {})
    if method == "Runtime.exceptionThrown":
        errors.append(params["exceptionDetails"].get("text", "exception"))
    elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
        errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
    elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
        errors.append(params["entry"]["text"])
