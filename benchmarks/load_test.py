"""Bounded load test of `mmsent serve` on loopback: N concurrent clients send a fixed number of requests.

Starts the service for --run on a free 127.0.0.1 port (or targets --url, which must be loopback), sends
--requests POST /predict (or /predict/batch with --batch K: --requests / K requests, at least 3 per client)
from --clients concurrent clients, prints throughput and latency percentiles, stops the service and exits.
--clients and --batch take comma-separated lists: every combination runs against the same service.
--compare SRC runs the same combinations against a service started from another source tree (e.g. a
worktree of 7b007e0) for --compare-run (a run that code trained), one after the other, so that both are
measured on the same machine in one run.
Each combination never runs longer than --max-seconds.
--compare-views measures what the text-only and image-only views of each answer cost: the same requests
with and without them (`?views=false`), alternating in --rounds rounds on the same service, and prints
the ratio of their latencies (a ratio within one run, as timings on a shared machine are noisy).

    python benchmarks/load_test.py --run runs/default --data ../shared/mvsa --clients 1,4,8 --batch 1,16 \
        --requests 200 --compare /tmp/baseline-7b007e0/src --compare-run runs/default-7b007e0
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SRC = Path(__file__).resolve().parents[1] / "src"


def posts_from_data(data: Path, n: int) -> list[tuple[bytes, str]]:
    """The first n posts (image bytes, text) listed in data/train.txt; no labels are read."""
    guids = [line.split(",")[0] for line in (data / "train.txt").read_text().splitlines()[1:] if line.strip()][:n]
    posts = []
    for guid in guids:
        raw = (data / "data" / f"{guid}.txt").read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("gb18030", errors="replace")
        posts.append(((data / "data" / f"{guid}.jpg").read_bytes(), text.strip() or "."))
    return posts


def synthetic_posts(n: int) -> list[tuple[bytes, str]]:
    """Plain coloured JPEGs and short texts, for a run without a data folder."""
    from PIL import Image

    posts = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (480, 360), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, format="JPEG")
        posts.append((buf.getvalue(), f"post number {i}: what a day"))
    return posts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(run: Path, port: int, wait_s: float, src: Path = SRC, serve_args: list[str] | None = None
                  ) -> subprocess.Popen:
    """`mmsent serve` from the source tree src in a child process; returns once /health answers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsent.cli", "serve", "--run", str(run), "--host", "127.0.0.1", "--port", str(port),
         "--quiet", *(serve_args or [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the service did not answer within {wait_s:.0f} s")


async def load(url: str, posts: list[tuple[bytes, str]], clients: int, requests: int, batch: int, max_s: float,
               query: str = "") -> dict:
    """Send `requests` requests from `clients` concurrent workers; latency per request in ms."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            chosen = [posts[(i * batch + k) % len(posts)] for k in range(batch)]
            if batch == 1:
                path, files, data = "/predict", {"image": ("p.jpg", chosen[0][0], "image/jpeg")}, {"text": chosen[0][1]}
            else:
                path = "/predict/batch"
                files = [("images", (f"{k}.jpg", img, "image/jpeg")) for k, (img, _) in enumerate(chosen)]
                data = {"texts": [t for _, t in chosen]}
            t0 = time.perf_counter()
            try:
                response = await client.post(url + path + query, files=files, data=data)
                key = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            latencies.append((time.perf_counter() - t0) * 1000)
            if key:
                errors[key] = errors.get(key, 0) + 1

    async with httpx.AsyncClient(timeout=60) as client:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(clients))), max_s)
            stopped = False
        except TimeoutError:
            stopped = True
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {
        "clients": clients, "requests_sent": len(latencies), "batch": batch, "seconds": round(wall, 2),
        "stopped_at_max_seconds": stopped, "errors": errors, "latencies": latencies,
        "requests_per_s": round(len(latencies) / wall, 2), "posts_per_s": round(len(latencies) * batch / wall, 2),
        **latency_summary(lat),
    }


def latency_summary(lat: np.ndarray) -> dict:
    return {"latency_ms": {q: round(float(np.percentile(lat, p)), 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
            | {"mean": round(float(lat.mean()), 1)}}


def compare_views(url: str, posts: list[tuple[bytes, str]], args: argparse.Namespace) -> dict:
    """The same load with and without the one-side views, alternating round by round; their latency ratio."""
    clients, batch = int(args.clients.split(",")[0]), int(args.batch.split(",")[0])
    asyncio.run(load(url, posts, 1, args.warmup, batch, args.max_seconds))
    modes = {"plain": "?views=false", "views": "?views=true"}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    errors: dict[str, int] = {}
    for _ in range(args.rounds):
        for mode, query in modes.items():
            result = asyncio.run(load(url, posts, clients, args.requests, batch, args.max_seconds, query))
            latencies[mode] += result["latencies"]
            errors |= result["errors"]
    out = {mode: latency_summary(np.asarray(lat)) | {"requests": len(lat)} for mode, lat in latencies.items()}
    ratio = {q: round(out["views"]["latency_ms"][q] / out["plain"]["latency_ms"][q], 3) for q in ("p50", "mean", "p95")}
    return out | {"views_over_plain": ratio, "clients": clients, "rounds": args.rounds, "errors": errors}


def matrix(url: str, posts: list[tuple[bytes, str]], args: argparse.Namespace) -> list[dict]:
    """Every combination of --clients and --batch against the service at url, after a warm-up."""
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        if args.warmup:
            asyncio.run(load(url, posts, 1, args.warmup, batch, args.max_seconds))
        for clients in (int(c) for c in args.clients.split(",")):
            requests = args.requests if batch == 1 else max(3 * clients, args.requests // batch)
            rows.append(asyncio.run(load(url, posts, clients, requests, batch, args.max_seconds)))
            rows[-1].pop("latencies")
            print(summary(rows[-1]), file=sys.stderr, flush=True)
    return rows


def summary(result: dict) -> str:
    lat = result["latency_ms"]
    return (f"{result['requests_sent']} requests ({result['batch']} post(s) each) from {result['clients']} clients in "
            f"{result['seconds']} s: {result['requests_per_s']} requests/s, {result['posts_per_s']} posts/s; "
            f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms; errors: {result['errors'] or 'none'}")


def serve_and_measure(run: Path, src: Path, posts: list[tuple[bytes, str]], args: argparse.Namespace,
                      serve_args: list[str]) -> list[dict]:
    """Start the service from src on a free port, run the matrix, stop it."""
    port = free_port()
    proc = start_service(run, port, wait_s=300, src=src, serve_args=serve_args)
    try:
        return matrix(f"http://127.0.0.1:{port}", posts, args)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def print_table(results: dict[str, list[dict]]) -> None:
    print("| code | clients | posts per request | requests | posts/s | p50 (ms) | p95 (ms) | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for code, rows in results.items():
        for r in rows:
            lat = r["latency_ms"]
            print(f"| {code} | {r['clients']} | {r['batch']} | {r['requests_sent']} | {r['posts_per_s']} | {lat['p50']} "
                  f"| {lat['p95']} | {sum(r['errors'].values())} |")


def measure_views(posts: list[tuple[bytes, str]], args: argparse.Namespace) -> int:
    """--compare-views against --url or a service started for --run."""
    proc = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        port = free_port()
        proc = start_service(args.run, port, wait_s=300, src=SRC, serve_args=args.serve_arg)
        url = f"http://127.0.0.1:{port}"
    try:
        result = compare_views(url, posts, args)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"views / plain latency: p50 {result['views_over_plain']['p50']}, mean {result['views_over_plain']['mean']}")
    return 1 if result["errors"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", type=Path, help="run folder: start `mmsent serve` for it on a free loopback port")
    target.add_argument("--url", help="an already running service, e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--data", type=Path, help="MVSA folder to take posts from (default: synthetic images)")
    parser.add_argument("--clients", default="4", help="concurrent clients; a comma-separated list runs each")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", default="1", help="posts per request (> 1 uses /predict/batch); a list runs each")
    parser.add_argument("--warmup", type=int, default=5, help="requests sent first and not counted")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop a combination after this long")
    parser.add_argument("--serve-arg", action="append", default=[], help="an argument for `mmsent serve` of this code")
    parser.add_argument("--compare", type=Path, help="src folder of other code to measure the same way, after this one")
    parser.add_argument("--compare-run", type=Path,
                        help="run folder for --compare (default: --run); older code cannot read a newer run's config")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--compare-views", action="store_true",
                        help="latency with the one-side views against without them (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --compare-views")
    args = parser.parse_args()

    posts = posts_from_data(args.data, 200) if args.data else synthetic_posts(50)
    results: dict[str, list[dict]] = {}
    if args.compare_views:
        return measure_views(posts, args)
    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            raise SystemExit("--url must be a loopback address: this test is not to be aimed at other machines")
        results["service"] = matrix(args.url.rstrip("/"), posts, args)
    else:
        results["this code"] = serve_and_measure(args.run, SRC, posts, args, args.serve_arg)
        if args.compare:
            results[str(args.compare)] = serve_and_measure(args.compare_run or args.run, args.compare, posts, args, [])
    print(json.dumps(results, indent=2))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"command": "python benchmarks/load_test.py " + " ".join(sys.argv[1:]),
                                         "load_average": os.getloadavg()[0], "results": results}, indent=2))
    return 1 if any(r["errors"] for rows in results.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
