"""
nft scripts run in-process through libnftables (``libnftables.so.1``, Debian's libnftables1,
which the nftables package depends on) instead of one ``nft -f -`` process per change: the
fork, exec and dynamic loading of nft are most of the time a grant takes.

A small ctypes binding of the few functions needed; one nft context, used only by one dedicated
worker thread (a library call blocks on netlink, so it must not run in the reactor thread), so
calls are serialized and the context never meets two threads. The thread starts with the first
call and stops when the reactor shuts down.

``LibnftablesRunner`` has ``run_tool``'s call shape (``IToolRunner``) and its kind of errors:
one ``FirewallError`` whose message carries nft's own error text, the same text nft prints.
``choose_runner`` picks it for ``NftablesFirewall`` when the library loads and no command
prefix is given, else ``run_tool``.
"""

import ctypes
import ctypes.util
import functools
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from sig2knock.firewall import FirewallError
from sig2knock.firewall.runner import TOOL_TIMEOUT, IToolRunner, run_tool, tool_message

SONAME = "libnftables.so.1"
# nft_ctx_new's flags: NFT_CTX_DEFAULT, what nft itself uses.
NFT_CTX_DEFAULT = 0

_PROTOTYPES = {
    "nft_ctx_new": (ctypes.c_void_p, [ctypes.c_uint32]),
    "nft_ctx_free": (None, [ctypes.c_void_p]),
    "nft_ctx_buffer_output": (ctypes.c_int, [ctypes.c_void_p]),
    "nft_ctx_buffer_error": (ctypes.c_int, [ctypes.c_void_p]),
    "nft_ctx_get_output_buffer": (ctypes.c_char_p, [ctypes.c_void_p]),
    "nft_ctx_get_error_buffer": (ctypes.c_char_p, [ctypes.c_void_p]),
    "nft_run_cmd_from_buffer": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
}


def _declared(path: str) -> Any:
    library = ctypes.CDLL(path)
    for function, (restype, argtypes) in _PROTOTYPES.items():
        getattr(library, function).restype = restype
        getattr(library, function).argtypes = argtypes
    return library


def load_library(name: str = SONAME) -> Tuple[Optional[Any], str]:
    """
    libnftables with the functions used here declared, and its name; or ``None`` and why not.
    ``name`` is tried first, then (it runs ldconfig) what ``ctypes.util.find_library`` finds.
    """
    try:
        return _declared(name), name
    except (OSError, AttributeError) as error:
        reason = tool_message(str(error).encode())[:200]
    found = ctypes.util.find_library("nftables")
    if found is None or found == name:
        return None, reason
    try:
        return _declared(found), found
    except (OSError, AttributeError) as error:
        return None, f"{reason}; {tool_message(str(error).encode())[:200]}"


def worker_pool() -> ThreadPool:
    """
    The pool of one thread the nft context lives in. The thread is a daemon thread: a call stuck
    in the library (past its time limit) does not keep the process from exiting.
    """
    pool = ThreadPool(1, 1, "sig2knock-libnftables")
    pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore
    return pool


def _as_firewall_error(reason: Failure) -> Failure:
    if reason.check(FirewallError):
        return reason
    return Failure(FirewallError(f"libnftables: {reason.getErrorMessage()}"))


@implementer(IToolRunner)
class LibnftablesRunner:
    """
    Runs nft scripts in-process with ``library`` (from ``load_library``), one at a time on the
    worker thread of a pool from ``make_pool``, started by the first call; a reactor
    ``during shutdown`` trigger frees the context and stops the pool. Calls after that fail.
    """

    log = Logger()

    def __init__(
        self,
        library: Any,
        name: str = SONAME,
        make_pool: Callable[[], ThreadPool] = worker_pool,
        timeout: float = TOOL_TIMEOUT,
    ) -> None:
        self.library = library
        self.name = name
        self.timeout = timeout
        self._make_pool = make_pool
        self._pool: Optional[ThreadPool] = None
        self._closed = False
        # Only ever touched by the worker thread.
        self._context: Optional[int] = None
        self._busy = False

    def __call__(
        self,
        reactor: Any,
        argv: Sequence[str],
        stdin: bytes = b"",
        timeout: Optional[float] = None,
    ) -> "Deferred[bytes]":
        """
        Run the nft script ``stdin``; fire with what nft would print on its standard output, or
        fail with ``FirewallError`` carrying nft's error text (no answer after ``timeout``
        seconds is an error too). ``argv`` (the nft command this replaces) is not used.
        """
        if self._closed:
            return fail(FirewallError("libnftables: closed, the reactor is shutting down"))
        script = bytes(stdin)
        if b"\0" in script:
            return fail(FirewallError("libnftables: the script contains a NUL byte"))
        running = deferToThreadPool(reactor, self._started(reactor), self._run, script)
        limit = self.timeout if timeout is None else timeout
        running.addTimeout(limit, reactor, onTimeoutCancel=self._timedOut)
        return running.addErrback(_as_firewall_error)

    def _started(self, reactor: Any) -> ThreadPool:
        if self._pool is None:
            self._pool = self._make_pool()
            self._pool.start()
            reactor.addSystemEventTrigger("during", "shutdown", self.close)
        return self._pool

    @staticmethod
    def _timedOut(result: Any, timeout: float) -> Failure:
        return Failure(FirewallError(f"libnftables: no answer after {timeout:g} s"))

    def close(self) -> None:
        """
        Free the context in the worker thread and stop the pool (waiting for calls queued before
        it); later calls fail. If a call is still inside the library (past its time limit), it
        is not waited for.
        """
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._busy:
            self.log.warn("libnftables: a call is still running at shutdown; not waiting for it")
            return
        pool.callInThread(self._free)
        pool.stop()

    # What follows runs in the worker thread only.

    def _run(self, script: bytes) -> bytes:
        library = self.library
        if self._context is None:
            self._context = self._open()
        self._busy = True
        try:
            status = library.nft_run_cmd_from_buffer(self._context, script)
            # Reading a buffer empties it for the next call: both are always read.
            output = library.nft_ctx_get_output_buffer(self._context) or b""
            errors = library.nft_ctx_get_error_buffer(self._context) or b""
        finally:
            self._busy = False
        if status != 0:
            raise FirewallError(f"libnftables: status {status}: {tool_message(errors)}")
        return output

    def _open(self) -> int:
        """
        A new nft context with its output and error text kept in buffers.
        """
        library = self.library
        context = library.nft_ctx_new(NFT_CTX_DEFAULT)
        if not context:
            raise FirewallError("libnftables: cannot create an nft context")
        if library.nft_ctx_buffer_output(context) or library.nft_ctx_buffer_error(context):
            library.nft_ctx_free(context)
            raise FirewallError("libnftables: cannot buffer the nft context's output")
        return context

    def _free(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            self.library.nft_ctx_free(context)


_shared: List[Tuple[Optional[LibnftablesRunner], str]] = []


def shared_runner() -> Tuple[Optional[LibnftablesRunner], str]:
    """
    The process's one ``LibnftablesRunner`` and the library's name, or ``None`` and why the
    library did not load (it is tried once).
    """
    if not _shared:
        library, name = load_library()
        _shared.append((LibnftablesRunner(library, name) if library is not None else None, name))
    return _shared[0]


def choose_runner(
    command_prefix: Sequence[str], given: Optional[Callable[..., Deferred]] = None
) -> Tuple[Callable[..., Deferred], str]:
    """
    How ``NftablesFirewall`` runs its scripts, and a phrase saying how for its start-up log:
    ``given`` if any; in-process when libnftables loads and there is no command prefix (a prefix
    such as ``ip netns exec NS`` must run nft as a process); else one ``nft -f -`` process each.
    """
    if given is not None:
        return given, "through the runner given"
    if command_prefix:
        return run_tool, "as one nft process each (a command prefix is given)"
    runner, name = shared_runner()
    if runner is None:
        return run_tool, f"as one nft process each (libnftables not loaded: {name})"
    return runner, f"in-process with {name}"
