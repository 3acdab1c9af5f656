"""A pool of warm sandboxed fork-servers, and `run_program` for single runs."""

from __future__ import annotations

import atexit
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from opencodegen.execution.sandbox import (
    ExecutionResult,
    Isolation,
    SandboxError,
    WorkerProcess,
    normalize_job,
    resolve_isolation,
)

# Jobs sent to a worker at once: fewer round trips to the host; more would hold up more jobs
# behind a slow one at the end of a run.
BATCH = 4
LOOKAHEAD = 256  # jobs per worker that `map` submits ahead of the result it waits for (a long job
# must not starve the other workers)
Job = tuple[dict[str, Any], "Future[ExecutionResult]"]


def default_workers() -> int:
    """One worker per CPU this process may use."""
    return len(os.sched_getaffinity(0)) or 1


class _Worker(threading.Thread):
    """Feeds jobs from the pool's queue to one worker process, replacing it when it dies."""

    def __init__(self, pool: ExecutionPool, index: int):
        super().__init__(name=f"opencodegen-exec-{index}", daemon=True)
        self.pool, self.index = pool, index
        self.process: WorkerProcess | None = None
        self.started_ok = threading.Event()
        self.start_error: BaseException | None = None

    def run(self) -> None:
        try:
            self.process = self._spawn()
        except BaseException as exc:
            self.start_error = exc
            return
        finally:
            self.started_ok.set()
        while (batch := self._next_batch()) is not None:
            self._execute([(job, future) for job, future in batch if future.set_running_or_notify_cancel()])
        self._discard()

    def _next_batch(self) -> list[Job] | None:
        """One job (waiting for it), plus queued ones up to BATCH, so jobs run back to back."""
        first = self.pool._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < BATCH:
            try:
                item = self.pool._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: leave the stop mark for this or another thread
                self.pool._queue.put(None)
                break
            batch.append(item)
        return batch

    def _spawn(self) -> WorkerProcess:
        return WorkerProcess(self.pool.isolation, self.index, self.pool.preload)

    def _discard(self, wait: float = 2.0) -> None:
        if self.process is not None:
            self.process.close(wait)
            self.process = None

    def _execute(self, todo: list[Job]) -> None:
        """Run the jobs, replacing the worker process whenever it dies or hangs."""
        retried: set[int] = set()
        while todo:
            try:
                if self.process is None:
                    self.process = self._spawn()
            except BaseException as exc:
                for _, future in todo:
                    future.set_exception(exc)
                return
            for reply in self.process.run_batch([job for job, _ in todo]):
                if reply is None:
                    break
                todo.pop(0)[1].set_result(ExecutionResult(**reply))
            else:
                if self.process.retiring:  # it quit: the jobs left go to a new one
                    self._discard(wait=0)
                continue
            hung = self.process.alive()
            self._discard(wait=0)
            job, future = todo[0]
            if hung:
                todo.pop(0)
                future.set_result(ExecutionResult("timeout", None, "", "", job["timeout"], "SandboxError",
                                                  "the worker stopped answering; it was replaced"))
            elif id(future) in retried:  # a job that takes its worker down gets one retry
                todo.pop(0)
                future.set_result(ExecutionResult("crashed", None, "", "", 0.0, "SandboxError",
                                                  "the worker died twice while running this job"))
            else:
                retried.add(id(future))


class ExecutionPool:
    """Warm sandboxed workers (default: one per CPU) that run jobs in parallel.

    A job is a dict of `run_program` keyword arguments. Each job runs in a fresh forked child of
    a worker; whatever one job does (crash, hang, memory or fork bomb) does not change another
    job's result. Use as a context manager, or call `close()`.

    isolation: "bwrap" (the sandbox, or `IsolationUnavailable`), "none" (an explicit opt-out: no
    isolation) or "auto" ($OPENCODEGEN_ISOLATION if set, else "bwrap"). preload: modules each worker imports once before forking jobs (e.g. numpy, pandas),
    so jobs that import them start fast; each fork then costs a little more.
    """

    def __init__(self, workers: int | None = None, *, isolation: str = "auto", preload: Iterable[str] = ()):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.isolation: Isolation = resolve_isolation(isolation)
        self.preload = tuple(preload)
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._workers = [_Worker(self, i) for i in range(workers or default_workers())]
        self._closed = False
        for worker in self._workers:
            worker.start()
        for worker in self._workers:
            worker.started_ok.wait()
        errors = [w.start_error for w in self._workers if w.start_error is not None]
        if errors:
            self.close()
            raise SandboxError(f"execution workers failed to start: {errors[0]}") from errors[0]

    @property
    def size(self) -> int:
        return len(self._workers)

    def process_ids(self) -> list[int]:
        """Host pids of the live worker processes (the bubblewrap process when sandboxed)."""
        return [w.process.pid for w in self._workers if w.process is not None]

    def submit(self, **job: Any) -> Future[ExecutionResult]:
        """Queue one job; the future holds its ExecutionResult."""
        if self._closed:
            raise SandboxError("the execution pool is closed")
        future: Future[ExecutionResult] = Future()
        self._queue.put((normalize_job(job), future))
        return future

    def run(self, source: str, **options: Any) -> ExecutionResult:
        """Run one program and wait for its result."""
        return self.submit(source=source, **options).result()

    def map(self, jobs: Iterable[Mapping[str, Any]]) -> Iterator[ExecutionResult]:
        """Results of `jobs` in their order, computed in parallel with a bounded look-ahead."""
        window: deque[Future[ExecutionResult]] = deque()
        pending = iter(jobs)
        ahead = LOOKAHEAD * self.size
        try:
            while True:
                while len(window) < ahead and (job := next(pending, None)) is not None:
                    window.append(self.submit(**job))
                if not window:
                    return
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def close(self) -> None:
        """Stop all workers and their sandboxes."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()

    def __enter__(self) -> ExecutionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: ExecutionPool | None = None
_shared_lock = threading.Lock()


def _shared_pool() -> ExecutionPool:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ExecutionPool(workers=1)
            atexit.register(_shared.close)
        return _shared


def run_program(
    source: str,
    *,
    stdin: str = "",
    timeout: float = 10.0,
    memory_mb: int = 1024,
    output_limit: int = 1 << 20,
    files: Mapping[str, str | bytes] | None = None,
) -> ExecutionResult:
    """Run one Python program in the sandbox (a shared one-worker pool, started on first use).

    `files` (relative name -> text or bytes) are placed in the job's private working directory.
    """
    return _shared_pool().run(source, stdin=stdin, timeout=timeout, memory_mb=memory_mb,
                              output_limit=output_limit, files=dict(files or {}))
