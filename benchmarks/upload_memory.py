"""Peak memory of `mmsent serve` under concurrent uploads: a tiny PNG of huge pixel size, then an ordinary photo.

Starts `mmsent serve` for --run on a free 127.0.0.1 port, sends --uploads concurrent POST /predict of a
generated 9400 x 9400 single-colour 1-bit PNG (10.8 KB of file, as in the issue; 421 MiB to decode: a
byte a pixel, then four for the RGB copy), then the same number of a 12-megapixel JPEG, and records
every status code and the service's peak resident memory in each phase (VmHWM of /proc/PID/status, reset between phases; psutil or /proc samples
where that is missing). It then checks /health, prints a table, writes --json and stops the service.
--max-rss-mb stops the service if it grows past that (a guard for a shared machine). Nothing is trained:
give it a run folder, e.g. `mmsent train --data DIR --out RUN --quiet --set train.epochs=3`. --src runs
another source tree's service (e.g. branch main's, to measure "before").

    python benchmarks/upload_memory.py --run runs/default --uploads 20 --json upload_memory.json
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
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

MB = 1_000_000
TARGET_PEAK_MB = 2500  # the target: 20 concurrent huge PNGs under 2.5 GB


def huge_png(side: int, mode: str) -> bytes:
    """A single-colour side x side PNG: a few KB of file whatever its pixel size (mode 1, L, P or RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (side, side), 0 if mode in ("1", "L", "P") else (40, 90, 160)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def photo_jpeg(width: int, height: int) -> bytes:
    """A photo-sized JPEG: a smooth gradient with some noise, so that it compresses like a photo."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2) + rng.normal(0, 12, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(run: Path, port: int, src: Path, log: Path, wait_s: float) -> subprocess.Popen:
    """`mmsent serve` (from the source tree src) in a child process; returns once /health answers."""
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmsent.cli", "serve", "--run", str(run), "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        if healthy(f"http://127.0.0.1:{port}"):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the service did not answer within {wait_s:.0f} s")


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


class PeakMemory:
    """The service's peak RSS: the kernel's high-water mark where it can be reset, samples besides.

    Samples every 20 ms also guard the machine: past guard_mb the service is killed.
    """

    def __init__(self, proc: subprocess.Popen, guard_mb: float):
        self.proc = proc
        self.guard = guard_mb * MB
        self.sampled = 0
        self.killed_at: int | None = None
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        try:
            import psutil

            return psutil.Process(self.proc.pid).memory_info().rss
        except ImportError:
            return self._status_kb("VmRSS") * 1024
        except Exception:  # the process is gone
            return 0

    def _status_kb(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = self.rss()
            self.sampled = max(self.sampled, rss)
            if rss > self.guard and self.killed_at is None:
                self.killed_at = rss
                self.proc.kill()

    def start_phase(self) -> None:
        """Forget the peak so far: the next phase reports its own."""
        self.sampled = self.rss()
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        if not self._thread.is_alive():
            self._thread.start()

    def peak(self) -> int:
        """Bytes: the kernel's high-water mark if it was reset for this phase, else the highest sample."""
        hwm = self._status_kb("VmHWM") * 1024 if self.hwm_reset else 0
        return max(hwm, self.sampled)

    def stop(self) -> None:
        self._stop.set()


async def upload_all(url: str, image: bytes, name: str, kind: str, n: int, timeout_s: float) -> list[dict]:
    """n POST /predict at once; for each: status (or the exception's name), seconds, detail of an error."""

    async def one(client: httpx.AsyncClient, i: int) -> dict:
        t0 = time.perf_counter()
        try:
            response = await client.post(url + "/predict", files={"image": (name, image, kind)},
                                         data={"text": f"upload {i}: what a day"})
            status, detail = response.status_code, (None if response.status_code == 200 else response.text[:300])
        except httpx.HTTPError as exc:
            status, detail = type(exc).__name__, str(exc)[:300]
        return {"status": status, "seconds": round(time.perf_counter() - t0, 2), "detail": detail}

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(n))))


def run_phase(label: str, url: str, memory: PeakMemory, image: bytes, name: str, kind: str, n: int, timeout_s: float) -> dict:
    memory.start_phase()
    t0 = time.perf_counter()
    answers = asyncio.run(upload_all(url, image, name, kind, n, timeout_s))
    wall = time.perf_counter() - t0
    statuses = Counter(str(a["status"]) for a in answers)
    details = sorted({a["detail"] for a in answers if a["detail"]})
    return {
        "phase": label, "uploads": n, "file_bytes": len(image), "statuses": dict(statuses),
        "answered": all(isinstance(a["status"], int) and a["status"] < 500 for a in answers),
        "peak_rss_mb": round(memory.peak() / MB), "seconds": round(wall, 2),
        "slowest_s": max(a["seconds"] for a in answers), "error_details": details[:3],
        "killed_by_guard_at_mb": None if memory.killed_at is None else round(memory.killed_at / MB),
    }


def print_table(result: dict) -> None:
    print(f"service: {result['service']['src']}, run {result['service']['run']}, idle RSS {result['service']['idle_rss_mb']} MB")
    print(f"{'phase':32s} {'uploads':>7s} {'file':>9s}  {'statuses':24s} {'peak RSS':>9s} {'wall':>7s}")
    for p in result["phases"]:
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(p["statuses"].items()))
        guard = f"  (killed at {p['killed_by_guard_at_mb']} MB)" if p["killed_by_guard_at_mb"] else ""
        print(f"{p['phase']:32s} {p['uploads']:7d} {p['file_bytes'] / 1000:7.1f}KB  {statuses:24s} "
              f"{p['peak_rss_mb']:6d} MB {p['seconds']:6.1f}s{guard}")
        for detail in p["error_details"]:
            print(f"    e.g. {detail}")
    print(f"health after: {'ok' if result['health_after'] else 'DOWN'}; "
          f"target (peak < {TARGET_PEAK_MB} MB, all answered 200/4xx, up afterwards): {'met' if result['target_met'] else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="trained run folder to serve")
    parser.add_argument("--uploads", type=int, default=20, help="concurrent uploads per phase")
    parser.add_argument("--side", type=int, default=9400, help="pixel width and height of the huge PNG")
    parser.add_argument("--mode", choices=["1", "L", "P", "RGB"], default="1",
                        help="PNG mode (default 1: 1-bit, the issue's 10.8 KB file; L and P cost as much to decode)")
    parser.add_argument("--photo", default="4000x3000", help="size of the ordinary JPEG, WIDTHxHEIGHT")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="source tree whose service is run (default: this checkout's)")
    parser.add_argument("--max-rss-mb", type=float, default=8000, help="kill the service past this RSS (machine guard)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a request may take")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()

    width, height = (int(v) for v in args.photo.lower().split("x"))
    png, jpeg = huge_png(args.side, args.mode), photo_jpeg(width, height)
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"upload_memory_{port}.log"
    proc = start_service(args.run, port, args.src.resolve(), log, wait_s=300)
    url = f"http://127.0.0.1:{port}"
    memory = PeakMemory(proc, args.max_rss_mb)
    try:
        # one request first: lazily loaded parts of the model are not counted as the uploads' cost
        asyncio.run(upload_all(url, jpeg, "warmup.jpg", "image/jpeg", 1, args.timeout))
        idle = memory.rss()
        phases = [
            run_phase(f"PNG {args.side}x{args.side} {args.mode}", url, memory, png, "huge.png", "image/png",
                      args.uploads, args.timeout),
        ]
        if proc.poll() is None:
            phases.append(run_phase(f"JPEG {width}x{height}", url, memory, jpeg, "photo.jpg", "image/jpeg",
                                    args.uploads, args.timeout))
        up = proc.poll() is None and healthy(url)
    finally:
        memory.stop()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    result = {
        "service": {"src": str(args.src), "run": str(args.run), "idle_rss_mb": round(idle / MB), "log": str(log)},
        "machine": f"{os.cpu_count()} CPUs",
        "phases": phases,
        "health_after": up,
        "target_met": up and all(p["answered"] and p["peak_rss_mb"] < TARGET_PEAK_MB for p in phases),
    }
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
