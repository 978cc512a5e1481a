"""report.html as a person sees it: opened in a real headless Chromium.

Chromium is driven over the Chrome DevTools Protocol (a WebSocket, `websocket-client`), so
no browser download and no driver are needed: Debian's `chromium` package is enough, and
`.ci/run` installs it. Without it the test is skipped, saying so.
"""

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import dlpipe
from dlpipe import runs
from dlpipe.report.html import fmt
from helpers import minimal_config

CHROMIUM = os.environ.get("DLPIPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,1600"]

PAGE_FACTS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth,
                                                 alt: i.alt})),
  cells: Array.from(document.querySelectorAll('td[data-metric]')).map(
      td => [td.dataset.metric, td.dataset.value, td.textContent]),
  sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
  height: document.documentElement.scrollHeight,
})"""


class DevTools:
    """A minimal Chrome DevTools Protocol session over one page's WebSocket."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.events:
                if message.get("method") == event:
                    return message
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {event} within {timeout_s} s")


@pytest.fixture
def chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: `apt-get install chromium` "
                    f"(.ci/run does) or set DLPIPE_CHROMIUM")
    pytest.importorskip("websocket", reason="websocket-client is not installed: "
                                            "pip install -e '.[dev]'")
    profile = tmp_path / "profile"
    process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start (exit code {process.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        session = DevTools(target["webSocketDebuggerUrl"])
        yield session
        session.ws.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_report_renders_in_chromium_with_every_image_and_the_exact_metrics(chromium,
                                                                                tmp_path):
    result = dlpipe.run(minimal_config(report={"enabled": True}), run_dir=tmp_path / "run")
    report = result.rundir.file(runs.REPORT)
    for domain in ("Page", "Runtime", "Log", "Network"):
        chromium.send(f"{domain}.enable")
    chromium.send("Page.navigate", url=report.resolve().as_uri())
    chromium.wait_for("Page.loadEventFired")
    facts = json.loads(chromium.send("Runtime.evaluate", expression=PAGE_FACTS,
                                     returnByValue=True)["result"]["value"])

    errors = [e for e in chromium.events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    requested = [e["params"]["request"]["url"] for e in chromium.events
                 if e.get("method") == "Network.requestWillBeSent"]
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested

    assert len(facts["images"]) >= 8
    broken = [i["alt"] for i in facts["images"] if not i["complete"] or i["width"] == 0]
    assert not broken, f"images that did not load: {broken}"
    assert facts["sections"] == ["overview", "data", "training", "evaluation"]

    metrics = result.rundir.read_json(runs.METRICS)
    shown = {key: (value, text) for key, value, text in facts["cells"]}
    expected = {f"{split}.{name}": value for split in ("val", "test")
                for name, value in metrics[split].items() if not isinstance(value, list)}
    assert set(shown) == set(expected)
    for key, value in expected.items():
        raw, text = shown[key]
        assert (None if raw == "null" else float(raw)) == value, key
        assert text == fmt(value), key

    width = 1280
    shot = chromium.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": facts["height"],
                               "scale": 1})
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
