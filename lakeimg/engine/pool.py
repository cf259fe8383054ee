"""Running kernels in a process pool that survives bad inputs.

`map_kernel` maps a mapInArrow-shaped kernel over an Arrow table in worker processes: a batch
whose worker crashes (a segfaulting C decoder) or hangs past its time limit is split and its
rows retried one by one, and a row that still fails becomes an output row through `on_failure`.
The embedded engine runs every kernel this way; the Spark engine wraps kernels in
`isolated_kernel` so the same isolation happens inside each executor task, where a crash would
otherwise fail the task and the job. No Spark, no Delta here.

Example:
    >>> import pyarrow as pa
    >>> double = lambda batches: (pa.RecordBatch.from_pydict({"x": [v * 2 for v in b["x"].to_pylist()]}) for b in batches)
    >>> pa.Table.from_batches(list(map_kernel(double, pa.table({"x": [1, 2]}))))["x"].to_pylist()
    [2, 4]
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import multiprocessing.context
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pyarrow as pa

from lakeimg.errors import ErrorClass, LakeImgError, PoolError
from lakeimg.image._settings import configure_worker
from lakeimg.storage import delete_file, keep_alarm_handler, open_input, open_output, remove_prefix

__all__ = ["isolated_kernel", "map_kernel", "remove_stale_spools"]


_SPOOLS: dict[str, Any] = {}  # per worker process: spool path -> its open Arrow IPC file reader


def _spool_reader(path: str):
    reader = _SPOOLS.get(path)
    if reader is None:
        if len(_SPOOLS) >= 4:  # a run spools chunk after chunk; keep only the latest few open
            del _SPOOLS[next(iter(_SPOOLS))]
        reader = _SPOOLS[path] = pa.ipc.open_file(open_input(path, memory_map=True))
    return reader


class _KernelRaised(Exception):
    """Worker side: the kernel itself raised on a task's rows (the rows' failure, not the pool's)."""

    def __init__(self, error_type: str, message: str):
        super().__init__(error_type, message)
        self.error_type, self.message = error_type, message


_KERNELS: dict[bytes, Any] = {}  # per worker process: pickled kernel -> the kernel


def _load_kernel(blob: bytes):
    kernel = _KERNELS.get(blob)
    if kernel is None:
        import pickle

        try:
            kernel = pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - the pool's failure: no input could run
            raise PoolError(
                f"a worker process could not load the kernel ({type(exc).__name__}: {exc}); kernels run "
                "in worker processes must be importable from a module, not defined in __main__"
            ) from None
        _KERNELS.clear()  # one kernel per pool
        _KERNELS[blob] = kernel
    return kernel


def _run_kernel_on_spooled(blob: bytes, path: str, index: int, offset: int, length: int) -> bytes:
    """Worker side: the kernel over rows [offset, offset+length) of spooled batch `index`
    (memory-mapped, not copied); its output goes back as one Arrow IPC stream.

    Only an exception of the kernel itself is the rows' failure (`_KernelRaised`); one loading
    the kernel or reading the spool is the pool's, and fails the run.
    """
    kernel = _load_kernel(blob)
    try:
        batch = _spool_reader(path).get_batch(index).slice(offset, length)
    except Exception as exc:  # noqa: BLE001 - a missing or damaged spool file
        raise PoolError(f"a worker could not read its spooled inputs {path}: {type(exc).__name__}: {exc}") from None
    sink = pa.BufferOutputStream()
    writer = None
    try:
        for out in kernel(iter([batch])):
            if writer is None:
                writer = pa.ipc.new_stream(sink, out.schema)
            writer.write_batch(out)
    except Exception as exc:  # noqa: BLE001 - reported as these rows' failure
        raise _KernelRaised(type(exc).__name__, str(exc)) from None
    if writer is None:
        return b""
    writer.close()
    return sink.getvalue().to_pybytes()


def _probe() -> int:
    """A task that needs nothing but a working pool."""
    return os.getpid()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Have glibc keep freed memory in this process for reuse (workers call it as they start).

    glibc's defaults hand each image's buffers back to the kernel, so the next image pays fresh
    page faults; a worker keeps up to 64 MiB of freed memory (blocks over 32 MiB are still
    mapped on their own). Does nothing where the C library has no mallopt (not glibc).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)


def start_worker() -> None:
    """Set up one of lakeimg's own worker processes (the pool's initializer, forked children):
    keep freed memory, and keep lakeimg's image-library settings and its time-limit handler for
    good in it (the importing process never gets them; see `lakeimg.image._settings`)."""
    keep_freed_memory()
    configure_worker()
    keep_alarm_handler()


def _rechunk(pieces: Iterable[pa.Table | pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Compact batches of exactly `batch_rows` rows (the last may be shorter) from a stream of
    tables or batches of any sizes (a filtered read leaves uneven pieces)."""
    held: list[pa.Table] = []
    rows = 0
    for piece in pieces:
        if piece.num_rows == 0:
            continue
        held.append(piece if isinstance(piece, pa.Table) else pa.Table.from_batches([piece]))
        rows += piece.num_rows
        while rows >= batch_rows:
            table = pa.concat_tables(held)
            yield from table.slice(0, batch_rows).combine_chunks().to_batches()
            rest = table.slice(batch_rows)
            held, rows = ([rest] if rest.num_rows else []), rest.num_rows
    if rows:
        yield from pa.concat_tables(held).combine_chunks().to_batches()


def _spool_chunk(batches: Iterator[pa.RecordBatch], count: int, path: str) -> bool:
    """Write the next `count` batches to an Arrow IPC file at `path` (one task each); False when
    `batches` had none left (no file is written).

    Workers memory-map the file: a task ships (path, batch index) instead of a pickled batch,
    whose pickling would cost the parent and the worker CPU for every image's bytes.
    """
    first = next(batches, None)
    if first is None:
        return False
    with open_output(path) as sink, pa.ipc.new_file(sink, first.schema) as writer:
        writer.write_batch(first)
        for batch in itertools.islice(batches, count - 1):
            writer.write_batch(batch)
    return True


_LAUNCH = threading.local()  # .hide_main: this thread is starting one of lakeimg's workers


def _preparation_data(name: str, _original=None) -> dict[str, Any]:
    """`multiprocessing.spawn.get_preparation_data`, minus the main module for lakeimg's workers.

    A child started by forkserver or spawn re-runs the parent's main script as `__mp_main__`
    (or imports it by name) before it takes a task. For a script without
    `if __name__ == "__main__":` that re-runs the whole ingest inside each worker, which then
    refuses to start a pool of its own; from stdin (`python - < job.py`) it cannot find the file
    `<stdin>`. Every worker died before its first task, and each file was blamed for it.
    lakeimg's kernels live in importable modules, so its workers skip the main module; other
    processes the program starts are prepared exactly as before.
    """
    data = _original(name)
    if getattr(_LAUNCH, "hide_main", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


def _install_preparation_hook() -> None:
    from multiprocessing import spawn

    if getattr(spawn.get_preparation_data, "_lakeimg_hook", False):
        return
    hook = functools.partial(_preparation_data, _original=spawn.get_preparation_data)
    hook._lakeimg_hook = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = hook


class _HideMain:
    """Mixin of a Popen class: its `_launch` prepares the child without the main module."""

    def _launch(self, process_obj):
        _LAUNCH.hide_main = True
        try:
            super()._launch(process_obj)  # type: ignore[misc]
        finally:
            _LAUNCH.hide_main = False


class _ForkServerWorker(multiprocessing.context.ForkServerProcess):
    """A forkserver process that does not import `__main__` (module level: processes pickle)."""

    @staticmethod
    def _Popen(process_obj):
        from multiprocessing.popen_forkserver import Popen

        return type("WorkerPopen", (_HideMain, Popen), {})(process_obj)


class _SpawnWorker(multiprocessing.context.SpawnProcess):
    """A spawned process that does not import `__main__`."""

    @staticmethod
    def _Popen(process_obj):
        from multiprocessing.popen_spawn_posix import Popen

        return type("WorkerPopen", (_HideMain, Popen), {})(process_obj)


class _ForkServerContext(multiprocessing.context.ForkServerContext):
    Process = _ForkServerWorker


class _SpawnContext(multiprocessing.context.SpawnContext):
    Process = _SpawnWorker


def _pool_context():
    """Start method of the decoding pool: forkserver where the platform has it, else spawn.

    Never plain fork: the parent runs delta-rs' threads. The forkserver is a fresh single-threaded
    process that imports the kernels once and forks every worker from there, so workers start
    without re-importing numpy, Pillow, OpenCV, pyarrow and pandas (which pyarrow imports for
    the first timezone-aware timestamp).
    Workers never import the program's main module (see `_preparation_data`): the pool works
    from a script without a main guard, from `python -c`, from stdin and from notebooks.
    """
    _install_preparation_hook()
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return _SpawnContext()
    context = _ForkServerContext()
    context.set_forkserver_preload(["pandas", "lakeimg.engine.pool", "lakeimg.kernels.ingest", "lakeimg.kernels.transform"])
    return context


def start_forkserver() -> None:
    """Start the decoding pool's forkserver, if the platform has one, without waiting for it:
    it imports the kernels (`_pool_context`) in its own process, and the first worker forked
    from it waits for that, not the caller.

    Example:
        >>> start_forkserver()
    """
    context = _pool_context()
    if isinstance(context, _ForkServerContext):
        from multiprocessing import forkserver

        forkserver.ensure_running()


def map_kernel(
    kernel: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    inputs: pa.Table | Iterable[pa.Table | pa.RecordBatch],
    *,
    workers: int = 0,
    batch_rows: int = 16,
    task_timeout_s: float = 600.0,
    on_failure: Callable[[dict[str, Any], str, str], dict[str, Any]] | None = None,
    on_progress: Callable[[int], None] | None = None,
    output_schema: pa.Schema | None = None,
    start_method: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """Map `kernel` over `inputs` in `workers` child processes (0: in this process).

    `inputs` is a table or a stream of tables/batches (read lazily: the parent holds a few
    chunks of it at a time, spooled to Arrow IPC files the workers memory-map, while the
    workers already compute on the earlier ones). Children start from a forkserver (see
    `_pool_context`) unless `start_method` names another.

    A batch whose worker crashes or overruns `task_timeout_s` (scaled by its rows) is split
    and its rows retried one by one; a row that still fails is turned into an output row by
    `on_failure(row, error_class, message)` so one bad input never stops the run. Only a
    failure of the row's own task counts: the kernel raised on it (`corrupt`), its worker died
    (`decoder_crash`) or overran (`timeout`), and a fresh task on the same pool still runs
    afterwards. Anything else is the pool's failure and raises `PoolError`: workers that cannot
    start (BrokenProcessPool), a kernel the workers cannot load, unreadable spool files, a pool
    that no longer runs a trivial task after a crash. With workers, the kernel must be
    importable from a module (workers never import `__main__`, see `_pool_context`).

    Spool files live in `<tempdir>/lakeimg-spool-<pid>-*`, removed when the map ends however it
    ends; folders left by killed processes are removed by the next map.
    """
    batch_rows = max(1, batch_rows)
    batches = _rechunk([inputs] if isinstance(inputs, pa.Table) else inputs, batch_rows)
    if workers <= 0:
        for batch in batches:
            yield from kernel(iter([batch]))
            if on_progress:
                on_progress(batch.num_rows)
        return

    import pickle
    import tempfile

    from pebble import ProcessExpired, ProcessPool

    try:
        blob = pickle.dumps(kernel)
    except Exception as exc:  # noqa: BLE001 - e.g. a lambda or a closure
        raise PoolError(f"the kernel cannot be sent to worker processes ({type(exc).__name__}: {exc})") from exc
    chunk_tasks = 4 * workers  # tasks per spool file; two files stay ahead of the workers
    context = multiprocessing.get_context(start_method) if start_method else _pool_context()
    remove_stale_spools()
    folder = tempfile.mkdtemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-")
    pool = None
    finished_cleanly = False
    try:
        pool = ProcessPool(max_workers=workers, context=context, initializer=start_worker)
        spools: dict[str, Any] = {}  # path -> reader, while tasks of that file are outstanding
        outstanding: dict[str, int] = {}
        pending: dict[Any, tuple[str, int, int, int]] = {}
        suspects: list[tuple[dict[str, Any], tuple[str, str]]] = []  # crashed or hung rows awaiting the probe
        probe = None  # a trivial task: does the pool still run tasks after those failures?

        def submit(task: tuple[str, int, int, int]) -> None:
            pending[pool.schedule(_run_kernel_on_spooled, args=(blob, *task), timeout=task_timeout_s * task[3])] = task
            outstanding[task[0]] += 1

        def spool_next() -> bool:
            path = os.path.join(folder, f"inputs-{len(outstanding)}.arrow")
            if not _spool_chunk(batches, chunk_tasks, path):
                return False
            reader = spools[path] = pa.ipc.open_file(open_input(path, memory_map=True))
            outstanding[path] = 0
            for i in range(reader.num_record_batches):
                submit((path, i, 0, reader.get_batch(i).num_rows))
            return True

        def failed_row(row: dict[str, Any], failure: tuple[str, str]) -> pa.RecordBatch:
            if on_failure is None:
                raise LakeImgError(f"kernel failed on {row}: {failure[1]}")
            out = pa.RecordBatch.from_pylist([on_failure(row, *failure)], schema=output_schema)
            if on_progress:
                on_progress(1)
            return out

        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * chunk_tasks:
                exhausted = not spool_next()
            if not pending and probe is None:
                break
            finished, _ = wait([*pending, *([probe] if probe is not None else [])], return_when=FIRST_COMPLETED)
            for future in finished:
                if future is probe:
                    probe = None
                    try:
                        future.result()
                    except Exception as exc:  # noqa: BLE001 - the pool, not the rows, is broken
                        rows = ", ".join(str(r.get("uri", r)) for r, _ in suspects[:3])
                        raise PoolError(
                            f"the worker pool stopped working ({_describe(exc)}) after tasks failed on {rows}; "
                            "nothing is recorded as those inputs' failure"
                        ) from exc
                    for row, failure in suspects:
                        yield failed_row(row, failure)
                    suspects.clear()
                    continue
                path, index, offset, length = pending.pop(future)
                outstanding[path] -= 1
                try:
                    result = future.result()
                    if result:
                        yield from pa.ipc.open_stream(result)
                    if on_progress:
                        on_progress(length)
                    continue
                except FutureTimeout:
                    failure = (ErrorClass.TIMEOUT, f"decoding ran past the {task_timeout_s:g} s per-file limit; the worker was killed")
                except ProcessExpired as exc:
                    failure = (ErrorClass.DECODER_CRASH, f"the decoding process died ({exc})")
                except _KernelRaised as exc:
                    failure = (ErrorClass.CORRUPT, f"{exc.error_type}: {exc.message}")
                except PoolError:
                    raise
                except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, PoolError, pickling: not the rows'
                    raise PoolError(f"the worker pool failed: {_describe(exc)}") from exc
                if length > 1:  # isolate the culprit: retry the batch's rows one by one
                    for i in range(length):
                        submit((path, index, offset + i, 1))
                    continue
                row = spools[path].get_batch(index).slice(offset, 1).to_pylist()[0]
                if failure[0] == ErrorClass.CORRUPT:
                    yield failed_row(row, failure)
                    continue
                # A dead or killed worker is the row's failure only if the pool still works.
                suspects.append((row, failure))
                if probe is None:
                    probe = pool.schedule(_probe, timeout=120)
            for path in [p for p, n in outstanding.items() if n == 0 and p in spools]:
                del spools[path]  # every task of this file is done: free its disk space
                delete_file(path)
        finished_cleanly = True
    finally:
        if pool is not None:
            if finished_cleanly:
                pool.close()
            else:  # an error, Ctrl-C or an abandoned generator: no waiting for queued tasks
                pool.stop()
            pool.join()
        remove_prefix(folder)


_SPOOL_PREFIX = "lakeimg-spool-"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_spools(folder: str | None = None) -> list[str]:
    """Remove spool folders of processes that are gone (killed mid-run); their paths.

    A spool folder is named `lakeimg-spool-<pid>-...`; it is stale when that pid no longer runs
    on this host (spool folders are local temp folders), never while its process lives.

    Example:
        >>> isinstance(remove_stale_spools(), list)
        True
    """
    import tempfile

    folder = folder or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(_SPOOL_PREFIX):
            continue
        pid_text = name[len(_SPOOL_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        path = os.path.join(folder, name)
        remove_prefix(path)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def isolated_kernel(
    batches: Iterator[pa.RecordBatch],
    *,
    kernel: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    on_failure: Callable[[dict[str, Any], str, str], dict[str, Any]],
    output_schema: pa.Schema,
    task_timeout_s: float,
    batch_rows: int = 8,
    prepare: Callable[[], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """`kernel` over `batches` in forked children, with `map_kernel`'s crash and hang rules.

    For the Spark engine (bind the keywords with functools.partial and hand it to mapInArrow):
    the executor's Python worker only waits, so a decoder that kills or hangs its process costs
    one reject row instead of the Spark task and with it the job. Each batch of `batch_rows`
    runs in a child forked straight from the Python worker's only thread: the child already
    holds the kernel's modules, and no pool threads exist to leave locks held across the fork
    (a pebble pool respawning children from its manager thread deadlocked them here; a
    forkserver child re-imports PySpark's worker as its main module, about a second a task).
    `prepare` runs once here before the first fork, to fill caches every child then inherits.
    """
    if prepare is not None:
        prepare()
    for batch in batches:
        for start in range(0, batch.num_rows, batch_rows):
            piece = batch.slice(start, batch_rows)
            try:
                yield from _run_in_child(kernel, piece, output_schema, task_timeout_s * piece.num_rows)
                continue
            except _ChildFailed:
                pass
            for i in range(piece.num_rows):  # isolate the culprit: the rows one by one
                single = piece.slice(i, 1)
                try:
                    yield from _run_in_child(kernel, single, output_schema, task_timeout_s)
                except _ChildFailed as failed:
                    row = on_failure(single.to_pylist()[0], failed.error_class, failed.message)
                    yield pa.RecordBatch.from_pylist([row], schema=output_schema)


_KERNEL_RAISED = 70  # the child's exit code when the kernel raised (EX_SOFTWARE)


class _ChildFailed(Exception):
    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class, self.message = error_class, message


def _run_in_child(kernel, batch: pa.RecordBatch, schema: pa.Schema, timeout_s: float) -> list[pa.RecordBatch]:
    """Run `kernel` on `batch` in a forked child; its output comes back as an Arrow IPC stream."""
    import os
    import selectors
    import signal
    import time

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, stream the result, leave without running the parent's cleanups
        code = 0
        try:
            os.close(read_fd)
            start_worker()
            with os.fdopen(write_fd, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for out in kernel(iter([batch])):
                    writer.write_batch(out)
        except BaseException:  # noqa: BLE001 - the parent turns a non-zero exit into a failure
            import traceback

            traceback.print_exc()
            code = _KERNEL_RAISED
        os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector, os.fdopen(read_fd, "rb", buffering=0) as source:
        selector.register(source, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise _ChildFailed(ErrorClass.TIMEOUT, f"decoding ran past the {timeout_s:g} s per-file limit; the worker was killed")
            chunk = source.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise _ChildFailed(ErrorClass.DECODER_CRASH, f"the decoding process died (signal {os.WTERMSIG(status)})")
    if os.WEXITSTATUS(status) == _KERNEL_RAISED:
        raise _ChildFailed(ErrorClass.CORRUPT, "the kernel raised an error (its traceback is in the executor's log)")
    if os.WEXITSTATUS(status) != 0:
        raise _ChildFailed(ErrorClass.DECODER_CRASH, f"the decoding process died (exit code {os.WEXITSTATUS(status)})")
    return list(pa.ipc.open_stream(b"".join(chunks)))
