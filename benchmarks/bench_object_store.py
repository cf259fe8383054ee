"""Ingest from and into S3 vs local -> local and vs a bare S3 loop, with and without latency, in one run.

    python benchmarks/bench_object_store.py [--files 520] [--workers N] [--latency-ms 50] [--get-threads 8]

Input: `--files` generated 1024x768 photo-like JPEGs (lakeimg.samples.write_photo_jpegs), also
uploaded to a bucket of an S3 server started here on 127.0.0.1: `--server moto` (the default)
is moto's standalone server, as the tests use it (tests/object_stores.py); `--server gofakes3`
is gofakes3 v1.2.0 (MIT, Go, in memory), built once with the Go toolchain from the Go module
proxy into ~/.cache/lakeimg-go (or $LAKEIMG_GOFAKES3). moto is a Python server: each request
costs it several milliseconds of CPU on the cores the ingest needs, so on a small machine the
latency run measures moto as much as lakeimg; gofakes3 serves the same requests for a fraction
of that CPU, closer to a real object store, which runs elsewhere. Measured, each with
`--workers` processes (default: all cores):

  local -> local   lakeimg `ingest_files` from the folder into a fresh local lake.
  bare local       bench_ingest's bare loop on the folder (informational).
Then twice: with the server as is, and through a delaying TCP proxy (a child process on loopback
that holds every client -> server chunk `--latency-ms` before passing it on, so every request
waits that much longer; AWS_ENDPOINT_URL points at it):
  S3 -> S3         lakeimg `ingest_files` from s3://bucket/src/ into a fresh s3://bucket/lake-*.
  bare S3 loop     the baseline: a process pool over chunks of 16 keys; each task GETs its
                   objects with pyarrow.fs.S3FileSystem (the library lakeimg uses), `--get-threads`
                   GETs in flight per process (a hand-written loop overlaps I/O), does bench_ingest's
                   per-file work (sha256, header, EXIF-aware 256-px thumbnail) and writes one
                   Parquet object per chunk to the bucket. No Delta, no listing, no error handling.
  bare S3, 1 GET   the same loop with one GET at a time per process (informational).

The proxy counts the requests it passes (by HTTP method) per measurement: requests per file show
how many round trips each file costs. Each S3 row also gives the CPU seconds the S3 server
spent on it: the server runs on the same cores, so what it costs per request and per byte (a
multipart upload costs moto several copies of the object) slows whichever side makes it work
harder; `--log-requests FILE` appends each proxied request line
(method and path, no headers) with a timestamp, to see where the latency run's time goes.

Targets: S3 -> S3 >= 0.8x the bare S3 loop's throughput in both settings, and S3 -> S3 with the
latency >= 0.5x local -> local. A missed target prints MISSED and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

_METHODS = (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE")


# --- the delaying proxy ------------------------------------------------------------------


async def _forward(reader, writer, delay_s: float, counts=None, log=None) -> None:
    """Copy reader -> writer; each chunk leaves `delay_s` after it arrived (order kept, pipelined)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            while True:
                data = await reader.read(1 << 16)
                if counts is not None and data:
                    # A request starts a read after the previous answer (keep-alive, no pipelining).
                    for i, method in enumerate(_METHODS):
                        if data.startswith(method + b" "):
                            counts[i] += 1
                            if log is not None:  # the request line only: no headers, no credentials
                                line = data.split(b"\r\n", 1)[0].decode("latin-1")
                                log.write(f"{time.time():.3f} {line}\n")
                queue.put_nowait((loop.time() + delay_s, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((0.0, b""))

    task = asyncio.ensure_future(pump())
    try:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        task.cancel()
        try:
            writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass


def _proxy_main(upstream_port: int, delay_s: float, counts, max_seconds: float, parent: int, ready,
                log_path: str | None) -> None:
    """The proxy process: serve on a free loopback port (sent back through `ready`) until the
    parent goes away or `max_seconds` pass."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (terminate) when it ends
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the request log is flushed
    log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115 - open for the process's life

    async def handle(client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_forward(client_reader, server_writer, delay_s, counts, log),
                                 _forward(server_reader, client_writer, 0.0))
        except (asyncio.CancelledError, SystemExit):  # the proxy is stopping: connections just end
            pass

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
        ready.send(server.sockets[0].getsockname()[1])
        deadline = time.monotonic() + max_seconds
        async with server:
            while time.monotonic() < deadline and os.getppid() == parent:
                await asyncio.sleep(0.5)

    asyncio.run(serve())


class DelayingProxy:
    """A loopback TCP proxy in a child process adding `delay_ms` to every client -> server chunk."""

    def __init__(self, upstream_port: int, delay_ms: float, max_seconds: float = 3600.0, log_path: str | None = None):
        # spawn: a fresh process, whatever threads (delta-rs, AWS SDK) this one runs.
        context = multiprocessing.get_context("spawn")
        self.counts = context.Array("q", len(_METHODS), lock=False)
        self._ready, ready = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_proxy_main, args=(upstream_port, delay_ms / 1000, self.counts, max_seconds, os.getpid(), ready,
                  log_path),
            daemon=True)
        self.port = 0

    def __enter__(self) -> DelayingProxy:
        self.process.start()
        if not self._ready.poll(60):
            self.__exit__()
            raise RuntimeError("the delaying proxy did not start within 60 s")
        self.port = self._ready.recv()
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)

    def take_counts(self) -> dict[str, int]:
        """Requests passed since the last call, by method."""
        out = {m.decode(): self.counts[i] for i, m in enumerate(_METHODS) if self.counts[i]}
        for i in range(len(_METHODS)):
            self.counts[i] = 0
        return out


# --- the bare S3 loop --------------------------------------------------------------------

_FS = {}


def _s3(endpoint: str, key_id: str, secret: str, region: str):
    import pyarrow.fs as pafs

    key = (endpoint, key_id)
    if key not in _FS:
        _FS[key] = pafs.S3FileSystem(access_key=key_id, secret_key=secret, region=region, scheme="http",
                                     endpoint_override=endpoint, allow_delayed_open=True)
    return _FS[key]


def bare_s3_chunk(keys: list[str], out_key: str, conn: tuple[str, str, str, str], get_threads: int) -> int:
    """GET `keys` (`get_threads` in flight), do the per-file work, write one Parquet object."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_ingest import bare_row

    fs = _s3(*conn)

    def get(key: str) -> bytes:
        with fs.open_input_file(key) as handle:
            return handle.read()

    if get_threads > 1:
        with ThreadPoolExecutor(get_threads) as pool:
            rows = [bare_row(data, "s3://" + key, None) for key, data in zip(keys, pool.map(get, keys), strict=True)]
    else:
        rows = [bare_row(get(key), "s3://" + key, None) for key in keys]
    pq.write_table(pa.Table.from_pylist(rows), out_key, filesystem=fs)
    return len(rows)


def bare_s3_loop(keys: list[str], out_prefix: str, conn: tuple[str, str, str, str], workers: int, get_threads: int) -> float:
    start = time.perf_counter()
    chunks = [keys[i:i + 16] for i in range(0, len(keys), 16)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        done = sum(pool.map(bare_s3_chunk, chunks, [f"{out_prefix}/part-{i:05d}.parquet" for i in range(len(chunks))],
                            [conn] * len(chunks), [get_threads] * len(chunks)))
    assert done == len(keys), done
    return time.perf_counter() - start


def _server_process(port: int):
    """The S3 server process listening on `port` (psutil), to read its CPU time."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(port) in arg for arg in cmdline) and any("moto.server" in arg or "gofakes3" in arg for arg in cmdline):
            return process
    raise RuntimeError(f"no S3 server process on port {port}")


GOFAKES3_MODULE = "github.com/johannesboyne/gofakes3/cmd/gofakes3@v1.2.0"


def gofakes3_binary() -> str:
    """$LAKEIMG_GOFAKES3, else ~/.cache/lakeimg-go/gofakes3, built there once with `go install`."""
    found = os.environ.get("LAKEIMG_GOFAKES3")
    if found:
        return found
    home = Path.home() / ".cache" / "lakeimg-go"
    binary = home / "gofakes3"
    if not binary.exists():
        go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
        if go is None:
            raise SystemExit("--server gofakes3 needs the Go toolchain (or LAKEIMG_GOFAKES3 naming a built binary)")
        print(f"building gofakes3 ({GOFAKES3_MODULE}) into {home} ...", flush=True)
        subprocess.run([go, "install", GOFAKES3_MODULE], check=True, env={**os.environ, "GOBIN": str(home)})
    return str(binary)


@contextlib.contextmanager
def gofakes3_server():
    """gofakes3 on 127.0.0.1 at a free port, in memory, with the tests' S3Server interface."""
    from object_stores import S3Server, free_port, running_server

    # gofakes3 refuses the AWS SDK's default streamed (aws-chunked) uploads, which carry no
    # Content-Length; with checksums only where an API requires them, uploads are plain PUTs.
    os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] = "WHEN_REQUIRED"
    os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "WHEN_REQUIRED"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with running_server([gofakes3_binary(), "-backend", "memory", "-host", f"127.0.0.1:{port}", "-quiet"], endpoint + "/"):
        yield S3Server(endpoint)


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# --- lakeimg -----------------------------------------------------------------------------


def lakeimg_ingest(src: str, lake: str, workers: int, storage_options: dict | None, n: int) -> float:
    """Seconds of `Lake(lake).ingest([src])` into a fresh lake (listing, pool, staging, commit, runs row)."""
    from lakeimg import Lake

    start = time.perf_counter()
    summary = Lake(lake, storage_options=storage_options).ingest([src], workers=workers)
    seconds = time.perf_counter() - start
    assert summary.added == n and summary.rejected == 0, summary
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=520)
    parser.add_argument("--server", choices=("moto", "gofakes3"), default="moto", help="the S3 server on loopback")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--get-threads", type=int, default=8, help="GETs in flight per process in the bare S3 loop")
    parser.add_argument("--log-requests", default=None, help="append the request line of every proxied request to this file")
    parser.add_argument("--no-sequential", action="store_true", help="skip the informational one-GET-at-a-time loop")
    args = parser.parse_args(argv)

    import psutil
    import pyarrow.fs as pafs
    from bench_ingest import bare_loop, tree_cpu
    from object_stores import S3_REGION, moto_s3_server

    from lakeimg.samples import write_photo_jpegs

    # A terminated run still stops the S3 server and the proxy and removes its files (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="bench-object-store-")
    results: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of every process a measurement kept busy
    requests: dict[str, dict[str, int]] = {}
    n = args.files
    try:
        t0 = time.perf_counter()
        src = os.path.join(work, "jpegs")
        files = sorted(write_photo_jpegs(src, n))
        mib = sum(os.path.getsize(f) for f in files) / 2**20
        print(f"{n} JPEGs 1024x768, {mib:.0f} MiB ({time.perf_counter() - t0:.1f} s to generate); workers={args.workers}, "
              f"server={args.server}, latency={args.latency_ms:g} ms, bare loop GETs in flight per process={args.get_threads}", flush=True)

        own_cpu = tree_cpu()
        results["local -> local"] = lakeimg_ingest(src, os.path.join(work, "lake-local"), args.workers, None, n)
        cpu["local -> local"] = tree_cpu() - own_cpu
        out = os.path.join(work, "bare-local")
        os.makedirs(out)
        results["bare local"] = bare_loop(files, args.workers, out)
        for name in ("local -> local", "bare local"):
            print(f"  {name:<22} {results[name]:7.2f} s", flush=True)

        with (moto_s3_server() if args.server == "moto" else gofakes3_server()) as server:
            host_port = server.endpoint.split("//", 1)[1]
            server_port = int(host_port.rsplit(":", 1)[1])
            server_process = _server_process(server_port)
            with DelayingProxy(server_port, args.latency_ms, log_path=args.log_requests) as proxy:
                bucket = server.new_bucket("bench")
                fs = pafs.S3FileSystem(access_key=server.key_id, secret_key=server.secret, region=S3_REGION, scheme="http",
                                       endpoint_override=host_port, allow_delayed_open=True)
                t0 = time.perf_counter()
                pafs.copy_files(src, f"{bucket}/src", destination_filesystem=fs, use_threads=True)
                keys = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(f"{bucket}/src", recursive=True))
                              if info.type == pafs.FileType.File)
                assert len(keys) == n, len(keys)
                print(f"  uploaded to s3://{bucket}/src/ in {time.perf_counter() - t0:.1f} s", flush=True)

                for label, port in (("as is", server_port), (f"+{args.latency_ms:g} ms", proxy.port)):
                    endpoint = f"http://127.0.0.1:{port}"
                    options = {**server.storage_options, "AWS_ENDPOINT_URL": endpoint}
                    os.environ.update(options)  # the env is what a CLI user sets; options say the same
                    conn = (f"127.0.0.1:{port}", server.key_id, server.secret, S3_REGION)
                    runs = [("S3 -> S3", functools.partial(lakeimg_ingest, f"s3://{bucket}/src/", f"s3://{bucket}/lake-{port}",
                                                           args.workers, options, n)),
                            ("bare S3 loop", functools.partial(bare_s3_loop, keys, f"{bucket}/bare-{port}", conn, args.workers,
                                                               args.get_threads))]
                    if not args.no_sequential:
                        runs.append(("bare S3, 1 GET", functools.partial(bare_s3_loop, keys, f"{bucket}/bare1-{port}", conn,
                                                                         args.workers, 1)))
                    proxy_process = psutil.Process(proxy.process.pid)
                    for name, run in runs:
                        proxy.take_counts()
                        server_cpu, proxy_cpu, own_cpu = _cpu_seconds(server_process), _cpu_seconds(proxy_process), tree_cpu()
                        results[f"{name} {label}"] = seconds = run()
                        server_cpu = _cpu_seconds(server_process) - server_cpu
                        cpu[f"{name} {label}"] = (server_cpu + (tree_cpu() - own_cpu)
                                                  + (_cpu_seconds(proxy_process) - proxy_cpu if port == proxy.port else 0.0))
                        counted = proxy.take_counts()
                        if port == proxy.port:
                            requests[f"{name} {label}"] = counted
                        extra = ("  requests: " + ", ".join(f"{m} {c}" for m, c in sorted(counted.items()))
                                 + f" ({sum(counted.values()) / n:.2f}/file)") if counted else ""
                        print(f"  {name + ' ' + label:<22} {seconds:7.2f} s  ({args.server} CPU {server_cpu:5.2f} s){extra}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    for name, seconds in results.items():
        print(f"{name:<24} {seconds:7.2f} s  {n / seconds:7.1f} files/s")
    latency = f"+{args.latency_ms:g} ms"
    checks = [
        ("S3 -> S3 / bare S3 loop, as is", results["bare S3 loop as is"] / results["S3 -> S3 as is"], 0.8),
        (f"S3 -> S3 / bare S3 loop, {latency}", results[f"bare S3 loop {latency}"] / results[f"S3 -> S3 {latency}"], 0.8),
        (f"S3 -> S3 {latency} / local -> local", results["local -> local"] / results[f"S3 -> S3 {latency}"], 0.5),
    ]
    print()
    missed = False
    for name, ratio, target in checks:
        ok = ratio >= target
        missed |= not ok
        print(f"{name:<40} {ratio:5.2f}x (target >= {target}x) {'OK' if ok else 'MISSED'}")
    # Wall clock cannot beat (CPU seconds of every busy process) / cores: the S3 server and the
    # proxy run on the same cores as the ingest, so this bounds the ratio any client could reach.
    cores = os.cpu_count() or 1
    floor = cpu[f"S3 -> S3 {latency}"] / cores
    print(f"CPU floor of S3 -> S3 {latency}: {cpu[f'S3 -> S3 {latency}']:.1f} CPU s (lakeimg, {args.server}, proxy) / {cores} cores "
          f"= {floor:.2f} s, so at best {results['local -> local'] / floor:.2f}x local -> local "
          f"({cpu['local -> local']:.1f} CPU s); the bare loop's: {cpu[f'bare S3 loop {latency}']:.1f} CPU s")
    print(f"(informational) S3 -> S3 as is / local -> local: {results['local -> local'] / results['S3 -> S3 as is']:.2f}x; "
          f"local -> local / bare local: {results['bare local'] / results['local -> local']:.2f}x")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
