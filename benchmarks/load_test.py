"""Bounded load test of `mmsent serve` on loopback: N concurrent clients send a fixed number of requests.

Starts the service for --run on a free 127.0.0.1 port (or targets --url, which must be loopback), sends
--requests POST /predict (or /predict/batch with --batch K) from --clients concurrent clients, prints
throughput and latency percentiles, stops the service and exits. It never runs longer than --max-seconds.

    python benchmarks/load_test.py --run runs/default --data ../shared/mvsa --clients 4 --requests 200

--compare-views measures what the text-only and image-only views of each answer cost: the same requests
with and without them (`?views=false`), alternating in --rounds rounds on the same service, and prints
the ratio of their latencies (a ratio within one run, as timings on a shared machine are noisy).
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


def start_service(run: Path, port: int, wait_s: float) -> subprocess.Popen:
    """`mmsent serve` in a child process; returns once /health answers."""
    env = dict(os.environ)
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsent.cli", "serve", "--run", str(run), "--host", "127.0.0.1", "--port", str(port)],
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
    return {"latencies_ms": latencies} | summary(lat) | {
        "clients": clients, "requests_sent": len(latencies), "batch": batch, "seconds": round(wall, 2),
        "stopped_at_max_seconds": stopped, "errors": errors,
        "requests_per_s": round(len(latencies) / wall, 2), "posts_per_s": round(len(latencies) * batch / wall, 2),
    }


def summary(lat: np.ndarray) -> dict:
    return {"latency_ms": {q: round(float(np.percentile(lat, p)), 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
            | {"mean": round(float(lat.mean()), 1)}}


def compare_views(url: str, posts: list[tuple[bytes, str]], args: argparse.Namespace) -> dict:
    """The same load with and without the one-side views, alternating round by round; their latency ratio."""
    modes = {"plain": "?views=false", "views": "?views=true"}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    errors: dict[str, int] = {}
    for _ in range(args.rounds):
        for mode, query in modes.items():
            result = asyncio.run(load(url, posts, args.clients, args.requests, args.batch, args.max_seconds, query))
            latencies[mode] += result["latencies_ms"]
            errors |= result["errors"]
    out = {mode: summary(np.asarray(lat)) | {"requests": len(lat)} for mode, lat in latencies.items()}
    ratio = {q: round(out["views"]["latency_ms"][q] / out["plain"]["latency_ms"][q], 3) for q in ("p50", "mean", "p95")}
    return out | {"views_over_plain": ratio, "clients": args.clients, "rounds": args.rounds, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", type=Path, help="run folder: start `mmsent serve` for it on a free loopback port")
    target.add_argument("--url", help="an already running service, e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--data", type=Path, help="MVSA folder to take posts from (default: synthetic images)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="posts per request; > 1 uses /predict/batch")
    parser.add_argument("--warmup", type=int, default=5, help="requests sent first and not counted")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop the test after this long")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--compare-views", action="store_true",
                        help="latency with the one-side views against without them (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --compare-views")
    args = parser.parse_args()

    posts = posts_from_data(args.data, 200) if args.data else synthetic_posts(50)
    proc = None
    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            raise SystemExit("--url must be a loopback address: this test is not to be aimed at other machines")
        url = args.url.rstrip("/")
    else:
        port = free_port()
        proc = start_service(args.run, port, wait_s=180)
        url = f"http://127.0.0.1:{port}"
    try:
        if args.warmup:
            asyncio.run(load(url, posts, 1, args.warmup, args.batch, args.max_seconds))
        if args.compare_views:
            result = compare_views(url, posts, args)
        else:
            result = asyncio.run(load(url, posts, args.clients, args.requests, args.batch, args.max_seconds))
            result.pop("latencies_ms")
        result["model"] = httpx.get(url + "/health", timeout=10).json().get("model")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.compare_views:
        print(f"views / plain latency: p50 {result['views_over_plain']['p50']}, mean {result['views_over_plain']['mean']}")
        return 1 if result["errors"] else 0
    lat = result["latency_ms"]
    print(f"{result['requests_sent']} requests ({result['batch']} post(s) each) from {result['clients']} clients in "
          f"{result['seconds']} s: {result['requests_per_s']} requests/s, {result['posts_per_s']} posts/s; "
          f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms; errors: {result['errors'] or 'none'}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
