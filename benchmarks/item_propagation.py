"""How long an item posted to one worker of ``feedrank serve --workers 2`` takes to be
served by the other one (serving/item_sync.py; the contract is 60 s, the bound is about
``serving.item_sync_s`` plus the time to index the item).

    .venv/bin/python benchmarks/item_propagation.py var/demo/full/model --posts 15
    .venv/bin/python benchmarks/item_propagation.py var/demo/full/model serving.item_sync_s=0.5

Starts the server on a free port with a fresh events folder, then per post: ``POST
/v1/items`` on a fresh connection (``X-Feedrank-Worker`` says which worker took it), then
``GET /v1/items/{id}`` on fresh connections until the *other* worker answers 200. Prints
every delay, the median and the maximum (seconds, from the POST being sent).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from feedrank.serving.ingest import WORKER_HEADER
from feedrank.serving.serve_process import start_serve


def _fresh(method: str, url: str, **kw) -> httpx.Response:
    with httpx.Client(timeout=30) as c:  # a new connection: the kernel picks the worker
        return c.request(method, url, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model bundle folder")
    ap.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides for `feedrank serve`")
    ap.add_argument("--posts", type=int, default=15, help="items to post (default 15)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on one item after this many seconds")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="item-propagation-"))
    t0 = time.monotonic()
    try:
        srv = start_serve(args.model, workers=2, events_dir=work / "events", overrides=args.overrides,
                          errlog=work / "serve.err", timeout_s=300)
    except (RuntimeError, FileNotFoundError) as exc:
        sys.exit(f"the server did not start: {exc}")
    url = srv.url
    with srv:
        print(f"2 workers ready after {time.monotonic() - t0:.1f} s")
        delays = []
        for i in range(args.posts):
            item_id = f"propagation-{i}"
            t = time.monotonic()
            r = _fresh("POST", f"{url}/v1/items", json={"items": [
                {"item_id": item_id, "title": f"Storm {i} closes the harbour", "category": "news"}]})
            if r.status_code != 201:
                sys.exit(f"POST /v1/items: {r.status_code} {r.text}")
            first = r.headers[WORKER_HEADER]
            while True:
                g = _fresh("GET", f"{url}/v1/items/{item_id}")
                if g.status_code == 200 and g.headers[WORKER_HEADER] != first:
                    delays.append(time.monotonic() - t)
                    break
                if time.monotonic() - t > args.timeout:
                    sys.exit(f"{item_id} (posted to {first}) not served by the other worker after {args.timeout} s")
            time.sleep(0.3)
        print("delays (s):", " ".join(f"{d:.2f}" for d in delays))
        print(f"median {statistics.median(delays):.2f} s, max {max(delays):.2f} s over {len(delays)} posts")


if __name__ == "__main__":
    main()
