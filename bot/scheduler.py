"""Who runs the schedule: verification jobs (APScheduler 3.x, SQLAlchemy job store in the bot's database)
and the bot's own periodic probe run on one replica at a time, the leader.

APScheduler 3.x cannot share a job store between running schedulers, so only the leader's scheduler runs;
the others add jobs through a paused scheduler on the same store, and the leader wakes up often enough to
see them. Leadership is a Kubernetes Lease in a cluster, or a row lock in the database otherwise. A replica
that loses leadership stops its scheduler and probe at once; the next leader picks the persisted jobs up.
Jobs that fell due while no leader ran are run when one starts, exactly once (misfire_grace_time=None:
APScheduler 3.x would otherwise skip a job more than one second late).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor

from bot import metrics
from bot.config import Settings
from bot.errors import UserFacingError
from bot.incidents.models import Incident
from bot.incidents.store import Store
from bot.integrations.kube import Kube

log = logging.getLogger(__name__)
LOCK_NAME = "registry-bot-leader"
Verify = Callable[[int], Coroutine[Any, Any, None]]


def verification_job(incident_id: int) -> None:
    """The reference a verification job is stored under, so it survives restarts. The LoopExecutor runs it
    on the bot's event loop through the runner; it is never called itself."""
    raise RuntimeError(f"verification of incident {incident_id} must run through the LoopExecutor")


class LoopExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs due verification jobs as coroutines on the bot's event loop, from the scheduler's own thread.

    The scheduler runs in a thread (BackgroundScheduler) so that its job-store queries never block the event
    loop that answers Slack and /healthz; only the verification itself comes back to the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, verify: Verify) -> None:
        super().__init__()
        self.loop = loop
        self.verify = verify

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        future = asyncio.run_coroutine_threadsafe(self.verify(*job.args), self.loop)

        def done(finished: concurrent.futures.Future[None]) -> None:
            error = finished.exception()
            if error is None:
                self._run_job_success(job.id, [])
            else:
                self._run_job_error(job.id, error, error.__traceback__)

        future.add_done_callback(done)


class Leadership:
    """Leader election, the leader's scheduler and probe; the VerificationScheduler every replica uses."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        kube: Kube | None,
        replica: str,
        verify: Verify,
        probe: Callable[[], Awaitable[Any]],
        deep_scan: Callable[[], Awaitable[Any]] | None = None,
        prune: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.replica = replica
        self.verify = verify
        self.probe = probe
        self.deep_scan = deep_scan
        self.prune = prune  # PRUNE_SCHEDULE: posts a plan for an approver, never applies it
        self.is_leader = False
        self.lease_seconds = max(settings.leader_lease_seconds, 3.0)
        self._runner: Any = None  # the leader's running scheduler
        self._writer: Any = None  # a paused scheduler every replica uses to add jobs
        self._probe: asyncio.Task[None] | None = None
        self._deep: asyncio.Task[None] | None = None
        self._prune: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        mode = settings.leader_election
        if mode == "auto":
            mode = "lease" if kube is not None and _in_cluster() else "database"
        self.mode = mode
        self._lease = KubeLease(kube, replica, settings.pod_namespace, LOCK_NAME, self.lease_seconds) if kube else None

    def role(self) -> str:
        return "leader" if self.is_leader else "standby"

    async def start(self) -> None:
        self._writer = await self._scheduler(paused=True)
        self._loop_task = asyncio.create_task(self._loop(), name="leader election")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self._step_down()
        with contextlib.suppress(Exception):
            if self.mode == "database":
                await asyncio.to_thread(self.store.release_lead, LOCK_NAME, self.replica)
            elif self._lease is not None:
                await self._lease.release()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.shutdown, False)

    # --- jobs ----------------------------------------------------------------------------------------

    async def _scheduler(self, paused: bool) -> Any:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        # Its own engine: the job store disposes the engine it holds when its scheduler shuts down.
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=self.settings.database)},
            executors={"default": LoopExecutor(asyncio.get_running_loop(), self.verify)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=UTC,
        )
        await asyncio.to_thread(scheduler.start, paused=paused)
        return scheduler

    async def schedule_verification(self, incident: Incident, delay: float | None = None) -> datetime:
        """Verify `incident` after VERIFY_DELAY (or `delay`), on whichever replica leads then."""
        when = datetime.now(UTC) + timedelta(seconds=self.settings.verify_delay if delay is None else delay)
        await asyncio.to_thread(
            self._writer.add_job,
            verification_job,
            "date",
            run_date=when,
            args=[incident.id],
            id=f"verify-{incident.id}",
            replace_existing=True,
            name=f"verify incident {incident.id}",
        )
        if self._runner is not None:
            self._runner.wakeup()
        return when

    # --- the election loop --------------------------------------------------------------------------------

    async def _loop(self) -> None:
        renew_every = self.lease_seconds / 3
        while True:
            try:
                leading = await self._try_lead()
            except Exception as exc:  # an outage of the database or the API server: not leading is safe
                log.warning("leader election failed (%s); acting as standby", _short(exc))
                leading = False
            if leading and not self.is_leader:
                await self._step_up()
            elif not leading and self.is_leader:
                log.warning("lost leadership: stopping the scheduler and the probe")
                await self._step_down()
            if self.is_leader and self._runner is not None:
                self._runner.wakeup()  # see jobs other replicas added
            await asyncio.sleep(renew_every)

    async def _try_lead(self) -> bool:
        ttl = timedelta(seconds=self.lease_seconds)
        if self.mode == "database" or self._lease is None:
            return bool(await asyncio.to_thread(self.store.try_lead, LOCK_NAME, self.replica, ttl))
        return await self._lease.try_acquire()

    async def _step_up(self) -> None:
        log.info("this replica is now the leader (%s)", self.mode)
        self.is_leader = True
        metrics.IS_LEADER.set(1)
        self._runner = await self._scheduler(paused=False)
        if self.settings.scan_interval > 0:
            self._probe = asyncio.create_task(self._every(self.settings.scan_interval, self.probe), name="probe")
        if self.settings.deep_scan_interval > 0 and self.deep_scan is not None:
            interval = self.settings.deep_scan_interval
            self._deep = asyncio.create_task(self._every(interval, self.deep_scan, first=interval), name="deep scan")
        if self.settings.prune_schedule and self.prune is not None:
            self._prune = asyncio.create_task(self._on_schedule(self.settings.prune_schedule, self.prune), name="prune")

    async def _step_down(self) -> None:
        self.is_leader = False
        metrics.IS_LEADER.set(0)
        for task in (self._probe, self._deep, self._prune):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._probe = self._deep = self._prune = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await asyncio.to_thread(runner.shutdown, False)
        metrics.clear_probe_gauges()

    async def _every(self, interval: float, work: Callable[[], Awaitable[Any]], first: float = 0.0) -> None:
        """The leader's periodic work (the probe, the deep scan): one run at a time, `interval` apart."""
        await asyncio.sleep(first)
        while True:
            started = time.monotonic()
            try:
                await work()
            except UserFacingError as exc:
                log.warning("the bot's periodic scan could not run: %s", exc)
            except Exception:
                log.exception("the bot's periodic scan failed")
            await asyncio.sleep(max(interval - (time.monotonic() - started), 1.0))

    async def _on_schedule(self, crontab: str, work: Callable[[], Awaitable[Any]]) -> None:
        """The leader's work at each time a cron schedule names (UTC); a time missed while not leading is not
        made up (a prune plan is a suggestion, and the next one comes)."""
        from apscheduler.triggers.cron import CronTrigger

        trigger = CronTrigger.from_crontab(crontab, timezone=UTC)
        previous = None
        while True:
            now = datetime.now(UTC)
            due = trigger.get_next_fire_time(previous, now)
            if due is None:
                return
            await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0))
            previous = due
            try:
                await work()
            except UserFacingError as exc:
                log.warning("the scheduled prune plan could not be made: %s", exc)
            except Exception:
                log.exception("the scheduled prune plan failed")


class KubeLease:
    """A coordination.k8s.io/v1 Lease held by renewing it; taken over when it expires."""

    def __init__(self, kube: Kube, replica: str, namespace: str, name: str, seconds: float) -> None:
        self.kube = kube
        self.replica = replica
        self.namespace = namespace
        self.name = name
        self.seconds = int(seconds)

    async def try_acquire(self) -> bool:
        replica, seconds, namespace, name = self.replica, self.seconds, self.namespace, self.name

        def attempt(api: Any) -> bool:
            from kubernetes import client
            from kubernetes.client.exceptions import ApiException

            leases = client.CoordinationV1Api(api)
            now = datetime.now(UTC)
            spec = client.V1LeaseSpec(
                holder_identity=replica, lease_duration_seconds=seconds, renew_time=now, acquire_time=now
            )
            try:
                lease = leases.read_namespaced_lease(name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body = client.V1Lease(metadata=client.V1ObjectMeta(name=name, namespace=namespace), spec=spec)
                try:
                    leases.create_namespaced_lease(namespace, body)
                    return True
                except ApiException as create_exc:
                    if create_exc.status == 409:
                        return False
                    raise
            held = lease.spec.holder_identity
            renewed = lease.spec.renew_time
            duration = lease.spec.lease_duration_seconds or seconds
            expired = renewed is None or renewed + timedelta(seconds=duration) < now
            if held != replica and not expired:
                return False
            if held == replica:
                spec.acquire_time = lease.spec.acquire_time or now
            lease.spec = spec
            try:
                leases.replace_namespaced_lease(name, namespace, lease)  # resourceVersion: optimistic lock
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
            return True

        return bool(await self.kube.call(f"renewing the {name} Lease", attempt))

    async def release(self) -> None:
        replica, namespace, name = self.replica, self.namespace, self.name

        def give_up(api: Any) -> None:
            from kubernetes import client

            leases = client.CoordinationV1Api(api)
            lease = leases.read_namespaced_lease(name, namespace)
            if lease.spec.holder_identity == replica:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                leases.replace_namespaced_lease(name, namespace, lease)

        await self.kube.call("releasing the Lease", give_up)


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _short(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
