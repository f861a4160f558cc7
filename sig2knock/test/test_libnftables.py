"""
Tests for sig2knock.firewall.libnftables: the in-process runner around a fake library, a fake
pool and a fake clock (errors, the worker thread, shutdown, time limit), and the runner's choice.
The real library is exercised by tests/test_libnftables.py (as root, in its own namespace).
"""

import ctypes
import threading
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import reactor as globalReactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sig2knock.firewall import FirewallError, FirewallSettings, libnftables, nftables
from sig2knock.firewall.libnftables import (
    SONAME,
    LibnftablesRunner,
    choose_runner,
    load_library,
    shared_runner,
    worker_pool,
)
from sig2knock.firewall.nftables import NftablesFirewall
from sig2knock.firewall.nftables_rules import render_ruleset
from sig2knock.firewall.runner import MESSAGE_LIMIT, IToolRunner, run_tool


ARGV = ["/usr/sbin/nft", "-f", "-"]
EXISTS = (
    b"Error: Could not process rule: File exists\n"
    b"create element inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 5000ms }\n"
    b"                                       ^^^^^^^^^^^^^^^^^^^^\n"
)
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


class RunnerTests(SynchronousTestCase):
    """
    ``LibnftablesRunner`` around a fake library, a fake pool and a fake clock.
    """

    def setUp(self) -> None:
        self.library = FakeLibrary()
        self.pools: List[FakePool] = []
        self.reactor = FakeReactor()
        self.runner = LibnftablesRunner(self.library, make_pool=self.makePool)

    def makePool(self) -> FakePool:
        pool = FakePool()
        self.pools.append(pool)
        return pool

    def call(self, script: bytes = b"flush set inet sig2knock grants4\n") -> Any:
        """
        One call, its work done by the worker; the Deferred.
        """
        result = self.runner(self.reactor, ARGV, stdin=script)
        self.pools[-1].runAll()
        return result

    def test_interface(self) -> None:
        """
        Both runners provide ``IToolRunner``.
        """
        self.assertTrue(verifyObject(IToolRunner, self.runner))
        self.assertTrue(verifyObject(IToolRunner, run_tool))

    def test_output(self) -> None:
        """
        The script goes to the library as it is; the call fires with the buffered output.
        """
        self.library.answers.append((0, b"table inet sig2knock {\n}\n", b""))
        result = self.call(b"list table inet sig2knock\n")
        self.assertEqual(self.successResultOf(result), b"table inet sig2knock {\n}\n")
        self.assertEqual(self.library.scripts, [b"list table inet sig2knock\n"])

    def test_oneContext(self) -> None:
        """
        The first call makes the context (nft's default flags, output and errors buffered);
        every call then runs on it and reads both buffers (reading one empties it).
        """
        self.successResultOf(self.call())
        self.successResultOf(self.call())
        per_call = [
            "nft_run_cmd_from_buffer",
            "nft_ctx_get_output_buffer",
            "nft_ctx_get_error_buffer",
        ]
        self.assertEqual(
            self.library.names(),
            ["nft_ctx_new", "nft_ctx_buffer_output", "nft_ctx_buffer_error"] + per_call * 2,
        )
        self.assertEqual(self.library.calls[0], ("nft_ctx_new", 0))
        self.assertEqual({argument for _, argument in self.library.calls[1:]}, {CONTEXT})

    def test_error(self) -> None:
        """
        A refusal fails with FirewallError carrying nft's error text on one line, with
        "File exists" where nft says it (the backend's replace path looks for it).
        """
        self.library.answers.append((-1, b"", EXISTS))
        failure = self.failureResultOf(self.call(), FirewallError)
        message = str(failure.value)
        self.assertEqual(
            message,
            "libnftables: status -1: Error: Could not process rule: File exists create element"
            " inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 5000ms } ^^^^^^^^^^^^^^^^^^^^",
        )
        self.assertNotIn("\n", message)

    def test_errorWithoutText(self) -> None:
        """
        A refusal with no error text still fails, saying so.
        """
        self.library.answers.append((1, b"", b""))
        failure = self.failureResultOf(self.call(), FirewallError)
        self.assertEqual(str(failure.value), "libnftables: status 1: no message")

    def test_errorBounded(self) -> None:
        """
        A long error text is cut like the process runner cuts a tool's standard error.
        """
        self.library.answers.append((-1, b"", b"Error: " + b"x" * 5000 + b"\n"))
        message = str(self.failureResultOf(self.call(), FirewallError).value)
        self.assertEqual(len(message), len("libnftables: status -1: ") + MESSAGE_LIMIT)

    def test_nothingInTheCallersThread(self) -> None:
        """
        A call only queues its work: the library is not touched until the worker runs it.
        """
        result = self.runner(self.reactor, ARGV, stdin=b"flush ruleset\n")
        self.assertNoResult(result)
        self.assertEqual(self.library.calls, [])
        self.pools[0].runAll()
        self.successResultOf(result)

    def test_poolStartsWithTheFirstCall(self) -> None:
        """
        No pool before the first call; it makes one pool, started, and a trigger for the
        reactor's shutdown; later calls use the same pool.
        """
        self.assertEqual(self.pools, [])
        self.successResultOf(self.call())
        self.successResultOf(self.call())
        self.assertEqual(len(self.pools), 1)
        self.assertEqual(self.pools[0].started, 1)
        self.assertEqual(
            [(phase, event) for phase, event, _ in self.reactor.triggers], [("during", "shutdown")]
        )

    def test_shutdown(self) -> None:
        """
        At shutdown the context is freed in the worker and the pool stopped; calls after that
        fail without touching the library.
        """
        self.successResultOf(self.call())
        [(_, _, close)] = self.reactor.triggers
        close()
        pool = self.pools[0]
        self.assertEqual(pool.stopped, 1)
        self.assertNotIn("nft_ctx_free", self.library.names())
        pool.runAll()
        self.assertEqual(self.library.calls[-1], ("nft_ctx_free", CONTEXT))
        calls = len(self.library.calls)
        failure = self.failureResultOf(self.runner(self.reactor, ARGV, stdin=b"x"), FirewallError)
        self.assertIn("shutting down", str(failure.value))
        self.assertEqual(len(self.library.calls), calls)
        self.assertEqual(len(self.pools), 1)

    def test_closeUnused(self) -> None:
        """
        Closing a runner never called makes no pool and frees nothing.
        """
        self.runner.close()
        self.assertEqual((self.pools, self.library.calls), ([], []))

    def test_closeWhileACallIsInTheLibrary(self) -> None:
        """
        A call still inside the library at shutdown (past its time limit) is not waited for:
        the pool is not stopped (its thread is a daemon thread) and the context is left alone.
        """
        self.library.during_run = self.runner.close
        self.successResultOf(self.call())
        self.assertEqual(self.pools[0].stopped, 0)
        self.assertNotIn("nft_ctx_free", self.library.names())

    def test_timeLimit(self) -> None:
        """
        No answer within the time limit fails the call; the late answer is then ignored.
        """
        result = self.runner(self.reactor, ARGV, stdin=b"flush ruleset\n")
        self.reactor.advance(self.runner.timeout - 0.001)
        self.assertNoResult(result)
        self.reactor.advance(0.001)
        failure = self.failureResultOf(result, FirewallError)
        self.assertEqual(str(failure.value), "libnftables: no answer after 10 s")
        self.pools[0].runAll()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_answerCancelsTheTimer(self) -> None:
        """
        An answer in time leaves no timer behind.
        """
        self.successResultOf(self.call())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_nulRefused(self) -> None:
        """
        A script with a NUL byte (the library would read only up to it) is refused unrun.
        """
        failure = self.failureResultOf(
            self.runner(self.reactor, ARGV, stdin=b"flush ruleset\0\n"), FirewallError
        )
        self.assertIn("NUL", str(failure.value))
        self.assertEqual(self.pools, [])

    def test_noContext(self) -> None:
        """
        A context the library cannot create fails the call, and the next call tries again.
        """
        self.library.context = None
        failure = self.failureResultOf(self.call(), FirewallError)
        self.assertEqual(str(failure.value), "libnftables: cannot create an nft context")
        self.library.context = CONTEXT
        self.successResultOf(self.call())

    def test_otherErrors(self) -> None:
        """
        Anything else going wrong in the worker is a FirewallError too.
        """

        def broken() -> None:
            raise ctypes.ArgumentError("argument 2: wrong type")

        self.library.during_run = broken
        failure = self.failureResultOf(self.call(), FirewallError)
        self.assertEqual(str(failure.value), "libnftables: argument 2: wrong type")


class WorkerThreadTests(TestCase):
    """
    The real pool of one thread, around the fake library and the real reactor.
    """

    def test_pool(self) -> None:
        """
        The pool has exactly one thread, a daemon thread.
        """
        pool = worker_pool()
        self.assertEqual((pool.min, pool.max), (1, 1))
        pool.start()
        self.addCleanup(pool.stop)
        self.assertEqual([thread.daemon for thread in pool.threads], [True])

    async def test_oneThreadNotTheReactors(self) -> None:
        """
        Every library call, context freed at close included, happens in one thread, never the
        reactor's.
        """
        library = FakeLibrary()
        runner = LibnftablesRunner(library)
        for number in range(3):
            await runner(globalReactor, ARGV, stdin=b"flush set inet sig2knock grants%d\n" % number)
        runner.close()
        self.assertEqual(library.names()[-1], "nft_ctx_free")
        self.assertEqual(len(set(library.threads)), 1)
        self.assertNotEqual(library.threads[0], threading.get_ident())


class ChoiceTests(SynchronousTestCase):
    """
    Which runner ``NftablesFirewall`` gets, and the library's loading.
    """

    def test_given(self) -> None:
        """
        A runner given is used as it is.
        """
        given = object()
        self.assertEqual(choose_runner([], given)[0], given)  # type: ignore[arg-type]

    def test_inProcess(self) -> None:
        """
        Without a command prefix, the shared in-process runner, when the library loads.
        """
        runner = LibnftablesRunner(FakeLibrary())
        self.patch(libnftables, "_shared", [(runner, SONAME)])
        self.assertEqual(choose_runner([]), (runner, "in-process with libnftables.so.1"))

    def test_prefixSpawns(self) -> None:
        """
        A command prefix (``ip netns exec NS``) needs nft as a process, library or not.
        """
        self.patch(libnftables, "_shared", [(LibnftablesRunner(FakeLibrary()), SONAME)])
        run, how = choose_runner(["ip", "netns", "exec", "lab"])
        self.assertIs(run, run_tool)
        self.assertIn("command prefix", how)

    def test_noLibrarySpawns(self) -> None:
        """
        Without the library, nft processes, saying why.
        """
        self.patch(libnftables, "_shared", [(None, "libnftables.so.1: cannot open")])
        run, how = choose_runner([])
        self.assertIs(run, run_tool)
        self.assertEqual(
            how, "as one nft process each (libnftables not loaded: libnftables.so.1: cannot open)"
        )

    def test_sharedLoadsOnce(self) -> None:
        """
        The library is loaded once per process, whether it loads or not.
        """
        loads: List[str] = []

        def load(name: str = SONAME) -> Tuple[Any, str]:
            loads.append(name)
            return FakeLibrary(), name

        self.patch(libnftables, "_shared", [])
        self.patch(libnftables, "load_library", load)
        runner, name = shared_runner()
        self.assertIsInstance(runner, LibnftablesRunner)
        self.assertIs(shared_runner()[0], runner)
        self.assertEqual((loads, name), ([SONAME], SONAME))
        self.patch(libnftables, "_shared", [])
        self.patch(libnftables, "load_library", lambda: (None, "not there"))
        self.assertEqual(shared_runner(), (None, "not there"))

    def test_missingLibrary(self) -> None:
        """
        A library that is not there gives ``None`` and the loader's reason.
        """
        self.patch(libnftables.ctypes.util, "find_library", lambda name: None)
        library, reason = load_library("libsig2knock-nosuch.so.0")
        self.assertIsNone(library)
        self.assertIn("libsig2knock-nosuch.so.0", reason)

    def test_foundElsewhere(self) -> None:
        """
        When the usual name does not load, the library ``find_library`` finds is used.
        """
        if load_library()[0] is None:
            raise self.skipTest("libnftables is not installed here")
        self.patch(libnftables.ctypes.util, "find_library", lambda name: SONAME)
        library, name = load_library("libsig2knock-nosuch.so.0")
        self.assertIsNotNone(library)
        self.assertEqual(name, SONAME)

    def test_realLibraryDeclared(self) -> None:
        """
        The real library, where installed, loads with every function's types declared.
        """
        library, name = load_library()
        if library is None:
            raise self.skipTest(f"libnftables is not installed here: {name}")
        self.assertEqual(name, SONAME)
        self.assertEqual(library.nft_run_cmd_from_buffer.restype, ctypes.c_int)
        self.assertEqual(
            library.nft_run_cmd_from_buffer.argtypes, [ctypes.c_void_p, ctypes.c_char_p]
        )
        self.assertEqual(library.nft_ctx_get_error_buffer.restype, ctypes.c_char_p)
        self.assertEqual(library.nft_ctx_new.restype, ctypes.c_void_p)


class BackendChoiceTests(SynchronousTestCase):
    """
    ``NftablesFirewall`` takes ``choose_runner``'s runner and says which at start.
    """

    def test_chosenAndLogged(self) -> None:
        """
        Without a runner given, the backend runs its scripts with ``choose_runner``'s and logs
        which when it starts, once.
        """
        self.patch(nftables, "find_tool", lambda name: "/usr/sbin/" + name)
        library = FakeLibrary()
        runner = LibnftablesRunner(library, make_pool=FakePool)
        self.patch(libnftables, "_shared", [(runner, SONAME)])
        settings = FirewallSettings(control_port=1001, port_range=(40000, 49999))
        reactor = FakeReactor()
        firewall = NftablesFirewall(reactor, settings)
        self.assertIs(firewall.run, runner)
        self.assertIs(NftablesFirewall(reactor, settings, command_prefix=["ip"]).run, run_tool)
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        starting = firewall.start()
        said = [formatEvent(event) for event in events if "runs" in event]
        self.assertEqual(said, ["nftables: changes run in-process with libnftables.so.1"])
        self.assertEqual(library.calls, [])
        runner._pool.runAll()  # type: ignore[union-attr]
        self.successResultOf(starting)
        self.assertEqual(library.scripts, [render_ruleset(settings).encode()])
