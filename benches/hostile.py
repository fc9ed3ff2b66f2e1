#!/usr/bin/env python3
"""Attackers and a bad day against a running Weir, while a load generator measures ingest (issue 17's proof).

    benches/hostile.py --url http://127.0.0.1:8080 --grpc 127.0.0.1:50051 --seconds 20 [--idle 1000] [--stalled 50] [--sql 10] [--flood 2]

For `--seconds` it holds `--idle` idle TCP connections (half to the HTTP port, half to gRPC), `--stalled` SQL bodies
that announce 100 bytes and send 6, `--sql` clients running slow queries back to back, and `--flood` clients posting
bodies of bad lines; meanwhile it asks /healthz every 50 ms and prints the latency percentiles and failures as JSON.
Standard library only. Run it next to `weir-loadgen` (benches/hostile.sh does both).
"""
import argparse, json, socket, threading, time, urllib.request

def idle(host, port, n, sockets):
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=5)
            sockets.append(s)
        except OSError:
            pass

def stalled(host, port, stop):
    while not stop.is_set():
        try:
            s = socket.create_connection((host, port), timeout=30)
            s.sendall(b"POST /api/v1/sql HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\nSELECT")
            s.settimeout(30)
            try:
                s.recv(1024)  # the server's 408 after --max-request-time
            except OSError:
                pass
            s.close()
        except OSError:
            time.sleep(0.1)

def post_until_stopped(url, body, content_type, stop, counts):
    """POSTs `body` to `url` back to back until `stop`, counting the answers by status."""
    while not stop.is_set():
        req = urllib.request.Request(url, data=body, headers={"content-type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                counts[r.status] = counts.get(r.status, 0) + 1
        except urllib.error.HTTPError as e:
            counts[e.code] = counts.get(e.code, 0) + 1
        except OSError:
            counts["error"] = counts.get("error", 0) + 1

SLOW_SQL = b"SELECT count(*) AS n FROM (SELECT levenshtein(repeat('a', 3000), repeat('b', 3000)) FROM generate_series(1, 200))"
BAD_LINES = ("\n".join('{"sensor":"warp","value":1,"timestamp":"2026-11-22T18:25:43Z"}' for _ in range(5000))).encode()

def main():
    a = argparse.ArgumentParser()
    a.add_argument("--url", required=True)
    a.add_argument("--grpc", required=True)
    a.add_argument("--seconds", type=float, default=20)
    a.add_argument("--idle", type=int, default=1000)
    a.add_argument("--stalled", type=int, default=50)
    a.add_argument("--sql", type=int, default=10)
    a.add_argument("--flood", type=int, default=2)
    args = a.parse_args()
    host, port = args.url.split("//")[1].split(":")
    ghost, gport = args.grpc.split(":")
    stop = threading.Event()
    sockets, sql_counts, flood_counts = [], {}, {}
    threads = [threading.Thread(target=idle, args=(host, int(port), args.idle // 2, sockets)),
               threading.Thread(target=idle, args=(ghost, int(gport), args.idle - args.idle // 2, sockets))]
    threads += [threading.Thread(target=stalled, args=(host, int(port), stop)) for _ in range(args.stalled)]
    threads += [threading.Thread(target=post_until_stopped, args=(args.url + "/api/v1/sql", SLOW_SQL, "text/plain", stop, sql_counts))
                for _ in range(args.sql)]
    threads += [threading.Thread(target=post_until_stopped, args=(args.url + "/ingest", BAD_LINES, "application/x-ndjson", stop, flood_counts))
                for _ in range(args.flood)]
    for t in threads:
        t.daemon = True
        t.start()
    latencies, failures = [], 0
    end = time.time() + args.seconds
    while time.time() < end:
        t0 = time.time()
        try:
            with urllib.request.urlopen(args.url + "/healthz", timeout=5) as r:
                r.read()
            latencies.append((time.time() - t0) * 1000)
        except OSError:
            failures += 1
        time.sleep(0.05)
    stop.set()
    latencies.sort()
    pct = lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else None
    print(json.dumps({"healthz": {"n": len(latencies), "failures": failures, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                                  "max_ms": pct(1.0)},
                      "idle_connections_opened": len(sockets), "slow_sql": sql_counts, "bad_line_floods": flood_counts}))

if __name__ == "__main__":
    main()
