"""
Stand-ins for libnftables and its worker pool: a library that records the scripts it is given
and answers as a test tells it, a pool whose work runs when the test says, and a clock that
records calls from threads; shared by the tests of the runner and of the nftables backend.
"""

import threading
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.task import Clock


# The context handle the fake library hands out.
CONTEXT = 0x5EED


class FakeLibrary:
    """
    Stands for libnftables: one context at a time, buffered output and error text, answers
    from ``answers`` ((status, output, error text) per script, else success with no output).
    Records every call with the thread it came from.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any]] = []
        self.threads: List[int] = []
        self.scripts: List[bytes] = []
        self.answers: List[Tuple[int, bytes, bytes]] = []
        self.context: Optional[int] = CONTEXT
        self.during_run: Callable[[], None] = lambda: None
        self._output = b""
        self._error = b""

    def _record(self, name: str, argument: Any) -> None:
        self.calls.append((name, argument))
        self.threads.append(threading.get_ident())

    def nft_ctx_new(self, flags: int) -> Optional[int]:
        self._record("nft_ctx_new", flags)
        return self.context

    def nft_ctx_buffer_output(self, context: int) -> int:
        self._record("nft_ctx_buffer_output", context)
        return 0

    def nft_ctx_buffer_error(self, context: int) -> int:
        self._record("nft_ctx_buffer_error", context)
        return 0

    def nft_run_cmd_from_buffer(self, context: int, script: bytes) -> int:
        self._record("nft_run_cmd_from_buffer", context)
        self.scripts.append(script)
        self.during_run()
        status, self._output, self._error = (
            self.answers.pop(0) if self.answers else (0, b"", b"")
        )
        return status

    def nft_ctx_get_output_buffer(self, context: int) -> Optional[bytes]:
        self._record("nft_ctx_get_output_buffer", context)
        output, self._output = self._output, b""
        return output or None

    def nft_ctx_get_error_buffer(self, context: int) -> Optional[bytes]:
        self._record("nft_ctx_get_error_buffer", context)
        error, self._error = self._error, b""
        return error or None

    def nft_ctx_free(self, context: int) -> None:
        self._record("nft_ctx_free", context)

    def names(self) -> List[str]:
        """
        The functions called, in order.
        """
        return [name for name, _ in self.calls]


class FakePool:
    """
    Stands for the worker pool: work waits until ``runAll`` runs it (the worker thread's turn).
    """

    def __init__(self) -> None:
        self.work: List[Tuple[Optional[Callable[..., None]], Callable[..., Any], tuple]] = []
        self.started = 0
        self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1

    def callInThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.work.append((None, function, args))

    def callInThreadWithCallback(
        self, onResult: Callable[..., None], function: Callable[..., Any], *args: Any
    ) -> None:
        self.work.append((onResult, function, args))

    def runAll(self) -> None:
        """
        Run the queued work in order, reporting each result like a thread pool does.
        """
        while self.work:
            onResult, function, args = self.work.pop(0)
            try:
                result = function(*args)
            except BaseException as error:  # noqa: BLE001 - reported, as the pool does
                if onResult is not None:
                    from twisted.python.failure import Failure

                    onResult(False, Failure(error))
            else:
                if onResult is not None:
                    onResult(True, result)


class FakeReactor(Clock):
    """
    A clock that also takes calls from threads (run at once) and system event triggers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.triggers: List[Tuple[str, str, Callable[[], Any]]] = []

    def callFromThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    def addSystemEventTrigger(
        self, phase: str, event: str, function: Callable[[], Any]
    ) -> Tuple[str, str]:
        self.triggers.append((phase, event, function))
        return (phase, event)
