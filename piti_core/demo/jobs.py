"""One generation at a time: a FIFO of jobs served by a single worker thread, with visible positions."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Any, Callable


class Job:
    """A queued generation: its state is what the page polls (``/api/jobs/<id>``)."""

    def __init__(self, job_id: str, payload: dict):
        self.id, self.payload = job_id, payload
        self.state = "queued"  # queued -> running -> done | error
        self.progress: dict[str, Any] = {}
        self.error: str | None = None
        self.result: dict[str, Any] | None = None


class JobQueue:
    """Runs ``work(job, progress)`` for each submitted job in order, one at a time, in a daemon thread.

    A job whose ``work`` raises ends in state ``error`` with the exception's first line; the queue goes on.
    Only the last ``keep`` finished jobs are kept (``on_drop(job)`` is called for the older ones).
    """

    def __init__(self, work: Callable[[Job, Callable[[dict], None]], dict], *, keep: int = 20,
                 on_drop: Callable[[Job], None] | None = None):
        self._work, self._keep, self._on_drop = work, keep, on_drop
        self._lock = threading.Condition()
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._finished: deque[Job] = deque()
        self._ids = itertools.count(1)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="piti-demo-worker", daemon=True)
        self._thread.start()

    def submit(self, payload: dict) -> Job:
        with self._lock:
            job = Job(str(next(self._ids)), payload)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._lock.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 while running or finished, else 1 + the number of jobs ahead of it in the queue."""
        with self._lock:
            try:
                return self._pending.index(job) + 1
            except ValueError:
                return 0

    def close(self, wait: float | None = None) -> None:
        """Stop taking jobs (queued ones are dropped); wait up to ``wait`` seconds for a running one to end."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._pending.popleft()
                job.state = "running"
            try:
                result = self._work(job, lambda event: job.progress.update(event))
            except Exception as exc:  # noqa: BLE001 - any failure is shown on the page; the server keeps serving
                text = str(exc).strip().splitlines()
                job.error = text[0] if text else type(exc).__name__
                job.state = "error"
            else:
                job.result, job.state = result, "done"
            with self._lock:
                self._finished.append(job)
                while len(self._finished) > self._keep:
                    old = self._finished.popleft()
                    self._jobs.pop(old.id, None)
                    if self._on_drop is not None:
                        self._on_drop(old)
