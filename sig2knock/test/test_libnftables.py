"""
Tests for sig2knock.firewall.libnftables: the in-process runner around a fake library, a fake
pool and a fake clock (errors, the worker thread, shutdown, time limit), and the runner's choice
(the nftables backend's use of it is tested in test_nftables).
The real library is exercised by tests/test_libnftables.py (as root, in its own namespace).
"""

import ctypes
import threading
from typing import Any, List, Tuple

from twisted.internet import reactor as globalReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sig2knock.firewall import FirewallError, libnftables
from sig2knock.firewall.libnftables import (
    SONAME,
    LibnftablesRunner,
    choose_runner,
    load_library,
    shared_runner,
    worker_pool,
)
from sig2knock.firewall.runner import MESSAGE_LIMIT, IToolRunner, run_tool
from sig2knock.test.fake_libnftables import CONTEXT, FakeLibrary, FakePool, FakeReactor


ARGV = ["/usr/sbin/nft", "-f", "-"]
EXISTS = (
    b"Error: Could not process rule: File exists\n"
    b"create element inet sig2knock grants4 { 198.18.0.2 . 45678 timeout 5000ms }\n"
    b"                                       ^^^^^^^^^^^^^^^^^^^^\n"
)


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
