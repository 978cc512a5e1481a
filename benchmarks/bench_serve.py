"""Serving: dlpipe serve (ONNX Runtime + micro-batching) against a naive PyTorch server.

Workload: examples/tabular_binary.yaml (make_classification 10,000 × 20, MLP 128-64),
trained briefly and exported. Two servers, each a separate process on 127.0.0.1, started in
turn (never at the same time) on the same machine:

  dlpipe serve   `python -m dlpipe serve RUN` with its defaults (max_batch_size 64,
                 max_delay_ms 2, one ONNX Runtime thread)
  baseline       FastAPI on uvicorn calling the run's PyTorch predictor
                 (`dlpipe.load(run).predict(rows)`) once per request in FastAPI's thread
                 pool: no batching; torch on 1 thread (more threads only oversubscribe the
                 cores under concurrent requests)

The load generator (this process) keeps 1, 16 and 64 clients busy, each on its own
keep-alive HTTP/1.1 connection, one test row per request (`POST /predict`, the same JSON for
both servers); it is bounded by a request count and a time limit per level, and talks to
loopback only. The first requests of each level warm up and are not counted. Measured:
requests/s, p50 / p99 latency, errors (a non-200 answer or a broken connection). The servers
are measured in rounds (each round starts each server in turn), and the median round is
reported with the range of p99: the machine is shared, and a busy neighbour moves tail
latency far more than throughput.

With `--workers 2` (the default of this script's `--workers`), dlpipe serve is also measured
with two worker processes; the target is judged on the default single process.

Target: at 64 clients dlpipe serve answers ≥ 3× the baseline's requests/s with p99 under
50 ms, and no errors.

Usage: python benchmarks/bench_serve.py [--requests 4000] [--seconds 20] [--clients 1 16 64]
Prints the table and rewrites its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP, TARGET_P99_MS = 3.0, 50.0


# -- the servers ------------------------------------------------------------------------------


class BaselineBody(BaseModel):
    rows: list[dict[str, Any]]



def baseline_app(run: str) -> Any:
    """The naive server: FastAPI, the PyTorch predictor per request, no batching."""
    import torch
    from fastapi import FastAPI

    import dlpipe

    torch.set_num_threads(1)
    predictor = dlpipe.load(run)
    app = FastAPI()

    @app.post("/predict")
    def predict(body: BaselineBody) -> dict[str, Any]:
        prediction = predictor.predict(body.rows)
        classes = [str(c) for c in prediction.classes]
        return {"predictions": [
            {"label": label, "probabilities": dict(zip(classes, p, strict=True))}
            for label, p in zip(prediction.labels.tolist(), prediction.probabilities.tolist(),
                                strict=True)]}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def start(kind: str, run: Path, port: int) -> subprocess.Popen:
    if kind.startswith("dlpipe"):
        command = [sys.executable, "-m", "dlpipe", "serve", str(run), "--port", str(port)]
        if kind != "dlpipe":  # "dlpipe-w2": two worker processes
            command += ["--workers", kind.removeprefix("dlpipe-w")]
    else:
        command = [sys.executable, __file__, "--baseline-server", str(run), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {process.stderr.read()}")
        try:
            status, _ = _run(_get(port, "/v2/health/ready"))
            if status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{kind} server not ready after 120 s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


# -- the load generator ------------------------------------------------------------------------


def _run(coroutine: Any) -> Any:
    """asyncio.run on uvloop when installed: a lighter load generator for both servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)



async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status, body = await _response(reader)
    writer.close()
    return status, body


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


def _request(body: bytes) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def load(port: int, bodies: list[bytes], *, clients: int, requests: int,
               seconds: float, warmup: int) -> dict[str, Any]:
    """`clients` closed-loop clients until `requests` answers or `seconds` have passed."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds
    payloads = [_request(b) for b in bodies]

    async def client(index: int) -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = index
        try:
            while sent < requests + warmup and time.perf_counter() < stop_at:
                sent += 1
                counted = sent > warmup
                began = time.perf_counter()
                writer.write(payloads[i % len(payloads)])
                i += clients
                try:
                    status, _ = await _response(reader)
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    return
                if status != 200:
                    errors += counted
                elif counted:
                    latencies.append(time.perf_counter() - began)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    ms = sorted(x * 1e3 for x in latencies)
    # Throughput over the counted requests only: the warm-up share of the wall time is taken
    # out in proportion.
    counted_share = len(latencies) / max(len(latencies) + min(warmup, sent), 1)
    return {"clients": clients, "requests": len(latencies),
            "rps": len(latencies) / (elapsed * counted_share) if latencies else 0.0,
            "p50_ms": statistics.median(ms) if ms else None,
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else None,
            "errors": errors}


# -- the run -----------------------------------------------------------------------------------


def trained_run(workdir: Path, epochs: int) -> Path:
    import dlpipe

    result = dlpipe.run(ROOT / "examples" / "tabular_binary.yaml", run_dir=workdir / "run",
                        overrides=[f"train.epochs={epochs}", "train.progress=never",
                                   "export.parity_rows=256"],
                        stages=("data", "features", "train", "evaluate", "export"))
    return result.path


def test_rows(run: Path) -> list[bytes]:
    from dlpipe.runs import RunDir

    frame = RunDir(run).read_split("test")
    rows = json.loads(frame.drop(columns=["target"]).to_json(orient="records"))
    return [json.dumps({"rows": [row]}).encode() for row in rows]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="counted requests a level")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit a level")
    parser.add_argument("--warmup", type=int, default=300, help="uncounted requests a level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds over all servers; medians are reported")
    parser.add_argument("--workers", type=int, nargs="*", default=[2],
                        help="also measure dlpipe serve with this many worker processes")
    parser.add_argument("--baseline-server", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        import uvicorn

        uvicorn.run(baseline_app(args.baseline_server), host="127.0.0.1", port=args.port,
                    log_level="warning", access_log=False)
        return

    with tempfile.TemporaryDirectory() as tmp:
        run = trained_run(Path(tmp), args.epochs)
        bodies = test_rows(run)
        kinds = ["dlpipe", *(f"dlpipe-w{w}" for w in args.workers), "baseline"]
        rounds: dict[str, list[list[dict[str, Any]]]] = {k: [] for k in kinds}
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):  # rounds interleave the servers: load hits all alike
            for kind in kinds:
                port = free_port()
                process = start(kind, run, port)
                try:
                    rows = [_run(load(port, bodies, clients=c, requests=args.requests,
                                      seconds=args.seconds, warmup=args.warmup))
                            for c in args.clients]
                finally:
                    stop(process)
                rounds[kind].append(rows)
                for row in rows:
                    print(f"{kind:10s} clients {row['clients']:3d}: {row['rps']:7.0f} req/s, "
                          f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                          f"errors {row['errors']}", flush=True)
        load_after = os.getloadavg()[0]
    report({k: median_rows(v) for k, v in rounds.items()}, args, (load_before, load_after))


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per client count: the median round's numbers, the p99 range, all errors."""
    out = []
    for level in zip(*rounds, strict=True):
        p99s = [r["p99_ms"] for r in level]
        out.append({"clients": level[0]["clients"],
                    "requests": sum(r["requests"] for r in level),
                    "rps": statistics.median(r["rps"] for r in level),
                    "p50_ms": statistics.median(r["p50_ms"] for r in level),
                    "p99_ms": statistics.median(p99s), "p99_range": (min(p99s), max(p99s)),
                    "errors": sum(r["errors"] for r in level)})
    return out


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
           loads: tuple[float, float]) -> None:
    import onnxruntime
    import torch

    lines = ["| server | clients | requests | req/s | p50 ms | p99 ms (range) | errors |",
             "|---|---|---|---|---|---|---|"]
    labels = {"dlpipe": "dlpipe serve",
              **{f"dlpipe-w{w}": f"dlpipe serve --workers {w}" for w in args.workers},
              "baseline": "baseline (PyTorch)"}
    for kind, label in labels.items():
        for row in results[kind]:
            lines.append(f"| {label} | {row['clients']} | {row['requests']:,} | "
                         f"{row['rps']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                         f"({row['p99_range'][0]:.1f}–{row['p99_range'][1]:.1f}) | "
                         f"{row['errors']} |")
    top = max(args.clients)
    ours = next(r for r in results["dlpipe"] if r["clients"] == top)
    theirs = next(r for r in results["baseline"] if r["clients"] == top)
    speedup = ours["rps"] / theirs["rps"] if theirs["rps"] else float("inf")
    errors = sum(r["errors"] for rows in results.values() for r in rows)
    met = speedup >= TARGET_SPEEDUP and ours["p99_ms"] < TARGET_P99_MS and errors == 0
    table = "\n".join(lines)
    verdict = (f"At {top} clients dlpipe serve answers {speedup:.1f}× the baseline's requests/s "
               f"with p99 {ours['p99_ms']:.1f} ms and {errors} errors in all; target (≥ "
               f"{TARGET_SPEEDUP:g}×, p99 < {TARGET_P99_MS:g} ms, no errors) "
               f"{'met' if met else 'NOT met'}.")
    print(table)
    print(verdict)
    command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
    body = (f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, "
            f"{os.cpu_count()} cores, {platform.machine()}, load average {loads[0]:.1f} before, "
            f"{loads[1]:.1f} after (load generator and server share the machine); "
            f"tabular_binary MLP 128-64 (20 features), one row per request; "
            f"{args.requests:,} counted requests or {args.seconds:g} s per level after "
            f"{args.warmup} warm-up requests; {args.repeats} rounds over all servers, medians "
            f"(requests: the total); command: `{command.strip()}`.\n\n"
            f"{table}\n\n{verdict}\n")
    write_section("bench_serve", "Serving: dlpipe serve vs a naive PyTorch server "
                  "(`python benchmarks/bench_serve.py`)", body)


if __name__ == "__main__":
    main()
