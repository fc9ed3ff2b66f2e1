#!/usr/bin/env python3
"""A small stand-in for Weir's HTTP API, to develop the dashboard (api/dashboard/) without the Rust server.

    python3 scripts/dashboard-mock.py --port 8099 [--api-key KEY]

Serves the dashboard files, fake devices whose readings change every second (with a late reading now and then, sent as
a correction), /api/v1/subscribe as server-sent events, /ingest, a few SQL queries and /metrics. truck-7 holds the
data scripts/browser_test.py expects: speed and fuel in the last half hour, the latest speed 55.5 two minutes ago.
Standard library only; a dev tool, not a model of Weir's semantics.
"""
import argparse
import base64
import csv
import gzip
import io
import json
import queue
import random
import re
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

DASHBOARD = Path(__file__).resolve().parent.parent / "api" / "dashboard"
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/dashboard/style.css": ("style.css", "text/css; charset=utf-8")}
SENSORS = {"speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"}
WINDOWS = {"1m": 60, "15m": 900, "1h": 3600, "1d": 86400}


def rfc3339(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.windows = {}  # (device, sensor, window, start) -> aggregate
        self.heads = {}  # (device, sensor, window) -> latest start
        self.latest = {}  # (device, sensor) -> (timestamp, value)
        self.rows = []  # every reading, for SQL
        self.subscribers = []  # (filters, queue)
        self.metrics = {"accepted": 0, "undecodable": 0, "invalid": 0, "too_long": 0, "archived": 0}

    def add(self, device, sensor, value, ts):
        with self.lock:
            self.rows.append((device, sensor, value, ts))
            self.metrics["accepted"] += 1
            if (device, sensor) not in self.latest or self.latest[(device, sensor)][0] <= ts:
                self.latest[(device, sensor)] = (ts, value)
            for name, size in WINDOWS.items():
                start = int(ts // size * size)
                key = (device, sensor, name, start)
                w = self.windows.get(key)
                existed = w is not None
                if not w:
                    w = self.windows[key] = {"device": device, "sensor": sensor, "window": name, "start": start,
                                             "count": 0, "sum": 0.0, "min": value, "max": value,
                                             "first": value, "first_ts": ts, "last": value, "last_ts": ts}
                w["count"] += 1
                w["sum"] += value
                w["min"], w["max"] = min(w["min"], value), max(w["max"], value)
                if ts < w["first_ts"]:
                    w["first"], w["first_ts"] = value, ts
                if ts >= w["last_ts"]:
                    w["last"], w["last_ts"] = value, ts
                head = self.heads.get((device, sensor, name), start)
                self.heads[(device, sensor, name)] = max(head, start)
                event = "update" if start >= head else "correction"
                self.publish(event, w, existed)

    def publish(self, event, w, replaces):
        for filters, q in list(self.subscribers):
            if all(filters.get(k) in (None, w[k]) for k in ("device", "sensor", "window")):
                q.put((event, window_json(w, replaces)))


def window_json(w, replaces=False):
    size = WINDOWS[w["window"]]
    return {"device": w["device"], "sensor": w["sensor"], "window": w["window"], "start": rfc3339(w["start"]),
            "end": rfc3339(w["start"] + size), "count": w["count"], "sum": w["sum"], "min": w["min"],
            "max": w["max"], "mean": w["sum"] / w["count"], "first": w["first"],
            "first_timestamp": rfc3339(w["first_ts"]), "last": w["last"], "last_timestamp": rfc3339(w["last_ts"]),
            "replaces": replaces}


STORE = Store()


def seed():
    now = int(time.time())
    for t in range(now - 30 * 60, now - 120, 20):
        STORE.add("truck-7", "speed", round(50 + 10 * random.random(), 1), t)
        STORE.add("truck-7", "fuel", round(80 - (t - now + 1800) / 200, 2), t)
    STORE.add("truck-7", "speed", 55.5, now - 120)
    for t in range(now - 90 * 60, now, 30):
        for device in ("truck-9", "van-3"):
            STORE.add(device, "speed", round(40 + 30 * random.random(), 1), t)
            STORE.add(device, "engine_temperature", round(85 + 5 * random.random(), 1), t)


def generate():
    speed = {"truck-9": 60.0, "van-3": 35.0}
    tick = 0
    while True:
        time.sleep(1)
        tick += 1
        now = time.time()
        for device in speed:
            speed[device] = max(0.0, speed[device] + random.uniform(-3, 3))
            STORE.add(device, "speed", round(speed[device], 1), now)
            STORE.add(device, "engine_temperature", round(88 + random.uniform(-2, 2), 1), now)
        if tick % 7 == 0:  # a late reading: a correction of an older window
            STORE.add("van-3", "speed", round(random.uniform(0, 90), 1), now - random.randint(3, 20) * 60)
        if tick % 11 == 0:
            STORE.metrics["invalid"] += 1
        STORE.metrics["archived"] = max(0, STORE.metrics["accepted"] - random.randint(0, 40))


def run_sql(text):
    """A few canned queries; anything else fails like DataFusion would."""
    q = " ".join(text.strip().rstrip(";").split()).lower()
    with STORE.lock:
        rows = list(STORE.rows)
    if re.fullmatch(r"select count\(\*\)( as (\w+))? from readings", q):
        name = re.fullmatch(r"select count\(\*\)(?: as (\w+))? from readings", q).group(1) or "count(*)"
        return [{name: len(rows)}]
    if "from seals" in q:
        day = 86400
        today = int(time.time() // day * day)
        return [{"date": rfc3339(today - i * day)[:10], "readings": 10000 + 97 * i, "late_readings": (i * 37) % 120}
                for i in range(1, 8)]
    m = re.fullmatch(r"select \* from readings(?: limit (\d+))?", q)
    if m:
        picked = rows[-int(m.group(1) or 20):]
        return [{"device": d, "sensor": s, "value": v, "timestamp": rfc3339(t), "date": rfc3339(t)[:10]}
                for d, s, v, t in picked]
    if not q.startswith("select"):
        raise ValueError(f"SQL error: ParserError(\"Expected: an SQL statement, found: {q.split(' ')[0]}\")")
    raise ValueError("This feature is not implemented: the dashboard mock knows only "
                     "SELECT count(*) AS n FROM readings, SELECT * FROM readings LIMIT n and the seals query")


def check_line(line):
    try:
        r = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(r, dict):
        raise ValueError("bad reading: expected an object")
    for field in ("sensor", "value", "timestamp", "device"):
        if field not in r:
            raise ValueError(f"bad reading: missing field `{field}`")
    if r["sensor"] not in SENSORS:
        raise ValueError(f"unknown sensor {r['sensor']!r}")
    if not isinstance(r["value"], (int, float)):
        raise ValueError("bad reading: value is not a number")
    return r["device"], r["sensor"], float(r["value"]), parse_time(r["timestamp"])


class Handler(BaseHTTPRequestHandler):
    api_key = None

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else (json.dumps(body) if ctype == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if not self.api_key:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            self.send(401, {"error": "no credentials provided"})
            return False
        user = base64.b64decode(header[6:]).decode(errors="replace").split(":")[0]
        if user != self.api_key:
            self.send(401, {"error": "invalid api key"})
            return False
        return True

    def do_GET(self):
        url = urlparse(self.path)
        args = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in FILES:
            name, ctype = FILES[url.path]
            return self.send(200, (DASHBOARD / name).read_bytes(), ctype)
        if url.path == "/metrics":
            return self.send(200, metrics_text(), "text/plain; version=0.0.4")
        if not self.authorized():
            return
        if url.path == "/api/v1/devices":
            with STORE.lock:
                devices = {}
                for (d, s), (t, _) in STORE.latest.items():
                    n, last = devices.get(d, (0, 0))
                    devices[d] = (n + 1, max(last, t))
            return self.send(200, {"devices": [{"device": d, "sensors": n, "last_timestamp": rfc3339(t)}
                                               for d, (n, t) in sorted(devices.items())]})
        if url.path == "/api/v1/latest":
            device = args.get("device", "")
            with STORE.lock:
                latest = sorted((s, v, t) for (d, s), (t, v) in STORE.latest.items() if d == device)
            return self.send(200, {"device": device, "latest": [{"sensor": s, "value": v, "timestamp": rfc3339(t)}
                                                                for s, v, t in latest]})
        if url.path == "/api/v1/series":
            lo, hi = parse_time(args["from"]), parse_time(args["to"])
            with STORE.lock:
                ws = [window_json(w) for (d, s, n, st), w in sorted(STORE.windows.items())
                      if (d, s, n) == (args.get("device"), args.get("sensor"), args.get("window")) and lo <= st < hi]
            for w in ws:
                w.pop("device"), w.pop("sensor"), w.pop("window"), w.pop("replaces")
            return self.send(200, {"device": args.get("device"), "sensor": args.get("sensor"),
                                   "window": args.get("window"), "windows": ws})
        if url.path == "/api/v1/subscribe":
            return self.stream(args)
        self.send(404, {"error": "not found"})

    def stream(self, filters):
        q = queue.Queue()
        with STORE.lock:
            since = parse_time(filters["from"]) if filters.get("from") else float("-inf")
            snapshot = [window_json(w) for k, w in sorted(STORE.windows.items(), key=lambda kv: kv[0][3])
                        if all(filters.get(f) in (None, w[f]) for f in ("device", "sensor", "window"))
                        and w["start"] >= since]
            STORE.subscribers.append((filters, q))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            chunk = "".join(f"event: snapshot\ndata: {json.dumps(w)}\n\n" for w in snapshot)
            self.wfile.write((chunk + "event: ready\ndata: {}\n\n").encode())
            self.wfile.flush()
            while True:
                try:
                    event, data = q.get(timeout=10)
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                except queue.Empty:
                    self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with STORE.lock:
                STORE.subscribers.remove((filters, q))

    def do_POST(self):
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.authorized():
            return
        if url.path == "/api/v1/sql":
            try:
                rows = run_sql(json.loads(body)["sql"])
            except (ValueError, KeyError) as e:
                return self.send(400, {"error": str(e)})
            if "text/csv" in self.headers.get("Accept", ""):
                out = io.StringIO()
                w = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["n"], lineterminator="\n")
                w.writeheader()
                w.writerows(rows)
                return self.send(200, out.getvalue(), "text/csv; charset=utf-8")
            return self.send(200, rows)
        if url.path == "/ingest":
            return self.ingest(body, "verbose=true" in url.query)
        self.send(404, {"error": "not found"})

    def ingest(self, body, verbose):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype not in ("application/x-ndjson", "application/json"):
            return self.send(415, f"unsupported Content-Type {ctype!r}: send newline-delimited JSON", "text/plain")
        if len(body) > 8 << 20:
            return self.send(413, "the body is larger than the limit of 8388608 bytes", "text/plain")
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        errors, invalid, accepted = [], [], 0
        for number, line in enumerate(body.decode(errors="replace").split("\n"), start=1):
            if not line.strip():
                continue
            try:
                STORE.add(*check_line(line))
                accepted += 1
            except ValueError as e:
                errors.append({"line": number, "error": str(e)})
                invalid.append(line[:200])
                STORE.metrics["invalid" if not str(e).startswith("bad JSON") else "undecodable"] += 1
        if errors:
            return self.send(400, {"invalid": invalid, "errors": errors, "accepted": accepted,
                                   "rejected": len(errors)})
        self.send(200, {"accepted": accepted, "position": STORE.metrics["accepted"]} if verbose else {})


def metrics_text():
    m = STORE.metrics
    lines = ["# HELP weir_readings_accepted_total Readings accepted", "# TYPE weir_readings_accepted_total counter",
             f"weir_readings_accepted_total {m['accepted']}"]
    lines += [f'weir_readings_rejected_total{{reason="{r}"}} {m[r]}' for r in ("undecodable", "invalid", "too_long")]
    lines += [f"weir_dataflow_lag_seconds {random.uniform(0, 0.3):.3f}",
              f"weir_dataflow_lag_positions {random.randint(0, 5)}",
              f"weir_wal_durable_position {m['accepted']}", f"weir_archive_committed_position {m['archived']}",
              f"weir_archive_readings_total {m['archived']}"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--api-key", help="require this API key (HTTP Basic username)")
    args = parser.parse_args()
    Handler.api_key = args.api_key
    seed()
    threading.Thread(target=generate, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"dashboard mock on http://127.0.0.1:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
