"""The service that owns the appliance's worker thread pools.

- `cpu`: CPU-heavy work kept off the reactor thread: argon2 password checks (auth),
  DKIM signing (delivery.dkim_signer), re-encoding submitted mail (delivery.intake) and
  building campaign messages (massmail.sender). Two threads: the GIL lets little more
  run at once, and the reactor thread needs its share.
- `dns`: blocking DNS queries (delivery.mx's MX lookups, the DNS watcher's checks, the
  web's DNS pages). Threads mostly wait on the network, so there are more of them. (The
  exchange with the ACME CA, minutes long, has a thread of its own: certificates.renewal.)

The store's thread pool is the store's own (store.pool). Both pools start and stop with
this service; whoever needs one is given it when built.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from atollon_mail import affinity

CPU_THREADS = 2
DNS_THREADS = 4


class WorkersStopped(RuntimeError):
    """Work given to a pool that has stopped (the appliance is stopping): a stopped
    Twisted ThreadPool takes the work and never runs it, so the caller would wait for
    ever; it is told at once instead (an SMTP session then answers 451)."""


class Workers(service.Service):
    name = "workers"

    def __init__(self, reactor, cpu_threads: int = CPU_THREADS, dns_threads: int = DNS_THREADS):
        self._reactor = reactor
        self.cpu = ThreadPool(minthreads=1, maxthreads=cpu_threads, name="atollon-mail-cpu")
        # Not held to the CPU of the appliance's other threads (affinity): what it runs
        # is largely done outside the interpreter lock, on another CPU where there is one.
        self.cpu.threadFactory = affinity.UnpinnedThread
        self.dns = ThreadPool(minthreads=0, maxthreads=dns_threads, name="atollon-mail-dns")

    def startService(self) -> None:
        self.cpu.start()
        self.dns.start()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        # Joins the threads: a DNS query in flight can hold this up to its timeout.
        self.dns.stop()
        self.cpu.stop()

    def in_cpu(self, function, *args):
        """Deferred result of function(*args) run in the CPU pool (WorkersStopped once
        the pools stopped)."""
        return self._in(self.cpu, function, args)

    def in_dns(self, function, *args):
        """Deferred result of function(*args) run in the DNS pool (WorkersStopped once
        the pools stopped)."""
        return self._in(self.dns, function, args)

    def _in(self, pool: ThreadPool, function, args):
        if pool.joined:
            return defer.fail(WorkersStopped(f"the {pool.name} pool has stopped"))
        return deferToThreadPool(self._reactor, pool, function, *args)
