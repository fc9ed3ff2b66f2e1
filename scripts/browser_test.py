#!/usr/bin/env python3
"""Drives the dashboard in headless Chromium (W3C WebDriver through chromedriver) against a running Weir.

    python3 scripts/browser_test.py --url http://127.0.0.1:PORT --screenshots DIR [--api-key KEY]

The server must already hold readings: truck-7's latest speed 55.5 (two minutes ago) and a few speed/fuel readings
before it. Checks: (1) the devices table shows truck-7 with speed 55.5; (2) the truck-7/speed chart draws points and
gains one when a reading for the current minute is posted to /ingest (the live feed); (3) the SQL console runs
`SELECT count(*) AS n FROM readings`; (4) uploading a file with a bad second line reports line 2. Saves
DIR/dashboard.png, DIR/dashboard-sql.png and DIR/dashboard-phone.png. Needs scripts/install-chromium.sh first.
Standard library only.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
CHECK_TIMEOUT = 20.0


class CheckFailed(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class WebDriver:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def call(self, method, path, body=None):
        url = self.base + (f"/session/{self.session}" if self.session else "") + path
        status, raw = http(method, url, {} if body is None and method == "POST" else body,
                           {"Content-Type": "application/json"}, timeout=60)
        value = json.loads(raw or b"{}").get("value")
        if status >= 400:
            raise RuntimeError(f"WebDriver {method} {path}: {status} {value}")
        return value

    def start(self, user_data_dir):
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={user_data_dir}", "--window-size=1280,800"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def quit(self):
        if self.session:
            try:
                self.call("DELETE", "")
            finally:
                self.session = None

    def script(self, source, *args):
        return self.call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def find(self, css):
        found = self.call("POST", "/elements", {"using": "css selector", "value": css})
        return found[0][ELEMENT] if found else None

    def click(self, element):
        self.call("POST", f"/element/{element}/click")

    def type(self, element, text):
        self.call("POST", f"/element/{element}/value", {"text": text})

    def screenshot(self, path):
        """The whole page (through the DevTools protocol), or the viewport where that is not available."""
        try:
            # Without a vertical scroll bar (the capture grows the viewport) the page lays out at innerWidth.
            size = self.script("const d = document.documentElement;"
                               "return [Math.max(d.scrollWidth, window.innerWidth), d.scrollHeight]")
            shot = self.call("POST", "/goog/cdp/execute", {"cmd": "Page.captureScreenshot", "params": {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}}})["data"]
        except RuntimeError:
            shot = self.call("GET", "/screenshot")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot))
        print(f"  saved {path}")

    def console_log(self):
        for path in ("/se/log", "/log"):
            try:
                return self.call("POST", path, {"type": "browser"})
            except RuntimeError:
                continue
        return []


def wait_for(what, probe, timeout=CHECK_TIMEOUT):
    """Polls probe() until it returns something truthy; fails the check after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except RuntimeError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    raise CheckFailed(f"{what} (after {timeout:.0f} s; last seen: {last!r})")


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def auth_header(key):
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()} if key else {}


def enter_key(wd, key):
    field = wait_for("the API key prompt appears", lambda: wd.script(
        "const f = document.querySelector('#key-input'); return f && f.offsetParent !== null;")
        and wd.find("#key-input"))
    wd.type(field, key)
    wd.click(wd.find("#key-submit"))
    wait_for("the API key prompt goes away", lambda: wd.script("return document.querySelector('#auth').hidden"))


def check_devices(wd):
    print("(1) devices table shows truck-7 with speed 55.5")
    wait_for("truck-7's row shows speed 55.5", lambda: wd.script(
        "const r = document.querySelector('#devices tr[data-device=\"truck-7\"] [data-sensor=\"speed\"]');"
        "return r && r.innerText.includes('55.5') && r.innerText;"))


def chart_points(wd):
    return wd.script("const c = document.querySelector('canvas[data-device=\"truck-7\"][data-sensor=\"speed\"]');"
                     "return c ? Number(c.dataset.points) : -1;")


def settled(probe, pause=0.5):
    """probe()'s value when it is the same twice in a row, pause seconds apart; else None."""
    first = probe()
    time.sleep(pause)
    return first if probe() == first else None


def check_live_chart(wd, url, key):
    print("(2) the truck-7/speed chart draws points and grows with the live feed")
    wd.click(wait_for("truck-7's device button", lambda: wd.find('#devices tr[data-device="truck-7"] button')))
    wait_for("the live feed is connected", lambda: wd.script(
        "return document.querySelector('#feed-status').dataset.state === 'live'"))
    wait_for("the truck-7/speed chart draws a point", lambda: chart_points(wd) > 0)
    before = wait_for("the point count settles", lambda: settled(lambda: chart_points(wd)))
    print(f"  {before} points drawn")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    line = json.dumps({"sensor": "speed", "value": 60, "timestamp": rfc3339(now), "device": "truck-7"})
    status, body = http("POST", url + "/ingest", line.encode(),
                        {"Content-Type": "application/x-ndjson", **auth_header(key)})
    if status != 200:
        raise CheckFailed(f"POST /ingest answered {status}: {body[:300]!r}")
    after = wait_for(f"the chart grows past {before} points", lambda: chart_points(wd) > before and chart_points(wd))
    print(f"  {after} points after the new reading")


def check_sql(wd):
    print("(3) the SQL console runs SELECT count(*) AS n FROM readings")
    editor = wd.find("#sql-input")
    wd.call("POST", f"/element/{editor}/clear")
    wd.type(editor, "SELECT count(*) AS n FROM readings")
    wd.click(wd.find("#sql-run"))
    result = wait_for("a results table with column n and a number", lambda: wd.script(
        "const t = document.querySelector('#sql-results');"
        "const h = [...t.querySelectorAll('thead th')].map(th => th.innerText.trim());"
        "const c = t.querySelector('tbody td');"
        "return h.length === 1 && h[0] === 'n' && c && /^\\d+$/.test(c.innerText.trim()) && c.innerText;"))
    print(f"  n = {result}")


def check_completeness(wd):
    print("(5) the completeness map shows truck-7's hours")
    cells = wait_for("truck-7's row of the completeness map has a judged hour", lambda: wd.script(
        "const r = document.querySelector('#completeness-map tr[data-device=\"truck-7\"]');"
        "const judged = r && [...r.querySelectorAll('td.cell')].filter(c => c.dataset.completeness !== '');"
        "return judged && judged.length > 0 && judged.map(c => c.title);"))
    hours = wd.script("return document.querySelectorAll('#completeness-map thead th.hour').length")
    if hours != 24:
        raise CheckFailed(f"the map has {hours} hour columns, not 24")
    colour = wd.script("return getComputedStyle(document.querySelector("
                       "'#completeness-map tr[data-device=\"truck-7\"] td.cell:last-child')).backgroundColor")
    if "rgb" not in colour:
        raise CheckFailed(f"the newest hour's cell has no colour: {colour!r}")
    print(f"  {cells[-1]}; colour {colour}")


def check_upload(wd, workdir):
    print("(4) uploading a file with a bad line 2 reports it")
    path = os.path.join(workdir, "upload.ndjson")
    ts = rfc3339(datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1))
    with open(path, "w") as f:
        f.write(json.dumps({"sensor": "fuel", "value": 42.0, "timestamp": ts, "device": "truck-7"}) + "\n{oops\n")
    wd.type(wd.find("#upload-file"), os.path.abspath(path))
    wd.click(wd.find("#upload-button"))
    report = wait_for("the error report names line 2", lambda: wd.script(
        "const r = document.querySelector('#upload-report tr[data-line=\"2\"]'); return r && r.innerText;"))
    print(f"  {' '.join(report.split())}")


def check_phone(wd, shots):
    print("phone size 390x844")
    wd.call("POST", "/window/rect", {"width": 390, "height": 844})
    width = wait_for("the window narrows", lambda: wd.script("return window.innerWidth <= 420 && window.innerWidth"))
    wait_for("the charts redraw", lambda: wd.script("return new Promise(r => setTimeout(() => r(true), 300))"), 5)
    overflow = wd.script("return document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 1:
        print(f"  WARNING: the page is {overflow}px wider than the {width}px viewport")
    wd.screenshot(os.path.join(shots, "dashboard-phone.png"))


def report_failure(wd, error):
    print(f"FAILED: {error}", file=sys.stderr)
    try:
        print("--- page text ---\n" + wd.script("return document.body.innerText"), file=sys.stderr)
        print("--- browser console ---", file=sys.stderr)
        for entry in wd.console_log() or []:
            print(f"{entry.get('level')}: {entry.get('message')}", file=sys.stderr)
    except Exception as e:  # the browser may be gone
        print(f"(could not read the page: {e})", file=sys.stderr)


def start_chromedriver():
    port = free_port()
    process = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = WebDriver(port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if wd.call("GET", "/status").get("ready"):
                return process, wd
        except (OSError, RuntimeError, ValueError):
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("chromedriver did not start")


def run(args, wd, workdir):
    wd.start(os.path.join(workdir, "profile"))
    wd.call("POST", "/timeouts", {"script": 10000, "pageLoad": 20000})
    wd.call("POST", "/url", {"url": args.url + "/"})
    if args.api_key:
        enter_key(wd, args.api_key)
    check_devices(wd)
    check_live_chart(wd, args.url, args.api_key)
    wd.screenshot(os.path.join(args.screenshots, "dashboard.png"))
    check_sql(wd)
    wd.screenshot(os.path.join(args.screenshots, "dashboard-sql.png"))
    check_upload(wd, workdir)
    check_completeness(wd)
    wd.script("document.querySelector('#completeness').scrollIntoView()")
    wd.screenshot(os.path.join(args.screenshots, "dashboard-completeness.png"))
    check_phone(wd, args.screenshots)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the running Weir, e.g. http://127.0.0.1:8080")
    parser.add_argument("--screenshots", required=True, help="folder for the PNG screenshots")
    parser.add_argument("--api-key", help="the API key to enter when the page asks for one")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    os.makedirs(args.screenshots, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="weir-browser-")
    process, wd = start_chromedriver()
    ok = False
    try:
        run(args, wd, workdir)
        ok = True
        print("all dashboard checks passed")
    except (CheckFailed, RuntimeError) as e:
        report_failure(wd, e)
    finally:
        try:
            wd.quit()
        except (RuntimeError, OSError):
            pass
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
