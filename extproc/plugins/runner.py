"""Where a plugin call runs: on the event loop, or on one of a bounded set of plugin threads.

A call that is known to be short runs on the loop: a thread handoff costs more than such a call. A
call that may be long (a body plugin on a large body, a plugin that waits on the network, one that
was once slow) runs on a plugin thread, so the loop keeps serving other streams meanwhile. Extism
releases the GIL while Wasm runs, so such a call also uses another core.

A call on a plugin thread can be abandoned: if its stream ends first, a call still queued never
starts, and a running one is interrupted through its instance's cancel handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any, Final

import extism

from extproc.config import ServerConfig
from extproc.plugins.host import PluginHost

_STOP: Final = None


@dataclass(slots=True, eq=False)
class Instance:
    """One Extism plugin instance and the handle that interrupts a call running in it.

    Each instance is compiled on its own: Extism interrupts a call (timeout or cancel) by advancing
    its engine's epoch, which would interrupt every instance sharing that engine.
    """

    plugin: extism.Plugin
    cancel_handle: Any  # extism.CancelHandle; the binding has no type for it


@dataclass(slots=True)
class RawResult:
    """What one call of an instance gave: its output (None when larger than allowed) and that output's size,
    or the Extism error that ended it, and a state backend failure met by a fail_closed plugin (which fails
    the call even though the guest returned)."""

    output: bytes | None
    output_size: int
    error: extism.Error | None
    state_failure: Exception | None


def invoke(instance: Instance, export: str, data: bytes, host: PluginHost, max_output_bytes: int) -> RawResult:
    """Run one export in `instance`; host functions see `host` as their caller. An output over
    `max_output_bytes` is left where the guest wrote it, never copied into the server."""
    host.begin_call()
    try:
        # parse=None: the output as a view of the instance's memory, only valid until its next call.
        view = instance.plugin.call(export, data, parse=None, host_context=host)
    except extism.Error as exc:
        return RawResult(None, 0, exc, host.end_call())
    size = len(view)
    return RawResult(bytes(view) if size <= max_output_bytes else None, size, None, host.end_call())


class ThreadedCall:
    """One call handed to a plugin thread and awaited on the loop.

    `settle` runs on the loop once the call is over, whether anybody still waits for it or not, so
    the instance always goes back to its pool there. `abandoned`: the caller went away; `interrupted`:
    the instance was told to stop, so it may stop whatever it runs next, and must not be reused.
    """

    __slots__ = (
        "abandoned",
        "data",
        "export",
        "host",
        "instance",
        "interrupted",
        "loop",
        "max_output_bytes",
        "new_instance",
        "result",
        "settle",
        "started",
        "waiter",
    )

    def __init__(
        self,
        instance: Instance | None,
        new_instance: Callable[[], Instance],
        export: str,
        data: bytes,
        host: PluginHost,
        max_output_bytes: int,
        settle: Callable[[ThreadedCall], None],
    ) -> None:
        self.instance = instance
        self.new_instance = new_instance  # called on the thread when `instance` is None (a new pool slot)
        self.settle = settle
        self.export = export
        self.data = data
        self.host = host
        self.max_output_bytes = max_output_bytes
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[RawResult | None] = self.loop.create_future()
        self.started = False
        self.abandoned = False
        self.interrupted = False
        self.result: RawResult | BaseException | None = None

    def run(self) -> None:
        """On a plugin thread."""
        self.started = True
        # Read after writing `started`: abandon() writes `abandoned` and then reads `started`, so at
        # least one side sees the other (the GIL orders the two threads' steps).
        if not self.abandoned:
            try:
                self.result = self._call()
            except BaseException as exc:  # handed to the loop, where the caller raises it
                self.result = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is left to tell
            self.loop.call_soon_threadsafe(self._finish)

    def _call(self) -> RawResult | None:
        instance = self.instance
        if instance is None:
            try:
                instance = self.instance = self.new_instance()
            except extism.Error as exc:
                # The module's failure (a trapping start function, memory that cannot be reserved), so
                # it is reported as the call's, where the plugin's on_error and breaker apply.
                return RawResult(None, 0, extism.Error(f"cannot instantiate: {exc}"), None)
        if self.abandoned:
            return None
        return invoke(instance, self.export, self.data, self.host, self.max_output_bytes)

    def abandon(self) -> None:
        """On the loop: the caller no longer waits. A queued call never starts; a running one is interrupted."""
        self.abandoned = True
        instance = self.instance
        if self.started and instance is not None:
            self.interrupted = True
            instance.cancel_handle.cancel()

    def _finish(self) -> None:
        self.settle(self)
        waiter = self.waiter
        if not waiter.done():
            result = self.result
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)


class PluginThreads:
    """Up to `max_threads` threads, started as calls need them, fed from one queue."""

    def __init__(self, max_threads: int, name: str = "extproc-plugin") -> None:
        self._max = max_threads
        self._name = name
        self._jobs: SimpleQueue[ThreadedCall | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Threads waiting for a call; a new thread starts only when queued calls outnumber them.
        self._idle = 0
        self._idle_lock = threading.Lock()

    @property
    def max_threads(self) -> int:
        return self._max

    async def run(self, call: ThreadedCall) -> RawResult | None:
        """Run `call` on a plugin thread; None when it was abandoned before it ran."""
        self._jobs.put(call)
        threads = self._threads
        if len(threads) < self._max and self._jobs.qsize() > self._idle:
            self._start_thread()
        try:
            return await call.waiter
        except asyncio.CancelledError:
            call.abandon()
            raise

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        jobs = self._jobs
        lock = self._idle_lock
        while True:
            with lock:
                self._idle += 1
            call = jobs.get()
            with lock:
                self._idle -= 1
            if call is _STOP:
                return
            call.run()
            # Waiting for the next job must not keep this one's input, output and instance alive.
            del call

    def close(self) -> None:
        """Stop the threads once the calls queued before this have run."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        self._threads.clear()


_shared: PluginThreads | None = None
_shared_lock = threading.Lock()


def shared_threads() -> PluginThreads:
    """Plugin threads for tools that load plugins outside a server (the test harness, the plugin bench).
    Threads start only when a call needs one."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PluginThreads(ServerConfig().plugin_threads)
        return _shared
