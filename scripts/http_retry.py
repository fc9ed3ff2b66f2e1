"""What a real client does with Weir's backpressure, for the client checks of scripts/clients.sh.

A 503 from Weir comes with Retry-After: its WAL queue stayed full, or the archive had not taken in what was just
acknowledged, within the server's wait (a debug build on busy cores reaches either). A client waits that long and
asks again; anything else fails the check with Weir's own answer.
"""
import sys
import time
import urllib.error
import urllib.request


def send(request, what, retries):
    """The body of the answer to `request`, retrying a 503 up to `retries` times (each retry printed)."""
    for attempt in range(retries + 1):
        try:
            return urllib.request.urlopen(request, timeout=300).read()
        except urllib.error.HTTPError as e:
            said = e.read().decode(errors="replace")[:500]
            if e.code != 503 or attempt == retries:
                raise SystemExit(f"FAIL {what}: {e.code} {said}")
            print(f"note {what}: 503, retrying after {e.headers.get('Retry-After')} s: {said}", file=sys.stderr)
            time.sleep(int(e.headers.get("Retry-After") or "1"))
