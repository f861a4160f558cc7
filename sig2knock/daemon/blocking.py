"""
Blocking work (a write and its fsync) kept off the reactor thread: ``ThreadWorker`` runs each
job, in the order given, in one thread of its own; ``InlineWorker`` runs it at once in the
caller's thread, for tools and tests that have no reactor running.
"""

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer


class IBlockingWorker(Interface):
    """
    Runs blocking jobs one at a time, in the order they are given.
    """

    def run(job: Callable[[], Any]) -> Deferred:
        """
        Run ``job``; a Deferred that fires with its result, or fails with its exception, in the
        reactor thread.
        """

    def start() -> None:
        """
        Begin running jobs (those given before wait until now).
        """

    def stop() -> None:
        """
        End, once the jobs given have run.
        """


@implementer(IBlockingWorker)
class ThreadWorker:
    """
    One thread of its own (named ``name``) for ``reactor``'s blocking jobs. A job given before
    ``start`` waits for it; ``stop`` returns once the jobs given have run.
    """

    def __init__(self, reactor: Any, name: str) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name=name)

    def run(self, job: Callable[[], Any]) -> Deferred:
        """
        Run ``job`` in the worker's thread (see ``IBlockingWorker``).
        """
        return deferToThreadPool(self.reactor, self.pool, job)

    def start(self) -> None:
        """
        Start the thread.
        """
        self.pool.start()

    def stop(self) -> None:
        """
        Let the thread finish what it was given, and end it.
        """
        self.pool.stop()


@implementer(IBlockingWorker)
class InlineWorker:
    """
    Runs each job at once, in the caller's thread: the Deferred has fired when ``run`` returns.
    """

    def run(self, job: Callable[[], Any]) -> Deferred:
        """
        Run ``job`` now (see ``IBlockingWorker``).
        """
        return maybeDeferred(job)

    def start(self) -> None:
        """
        Nothing to start.
        """

    def stop(self) -> None:
        """
        Nothing to stop.
        """
