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
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot import metrics
from bot.errors import UserFacingError

if TYPE_CHECKING:
    from bot.flows import RegistryBot
    from bot.incidents.models import Incident

log = logging.getLogger(__name__)
LOCK_NAME = "registry-bot-leader"
_CURRENT: RegistryBot | None = None  # the process's bot, for jobs loaded from the store


async def verification_job(incident_id: int) -> None:
    """The job APScheduler runs (by reference, so it survives restarts): verify one incident."""
    bot = _CURRENT
    if bot is None:
        log.error("verification of incident %s fell due before the bot was ready", incident_id)
        return
    await bot.run_verification(incident_id, requested_by=None)


class Leadership:
    def __init__(self, bot: RegistryBot) -> None:
        global _CURRENT
        _CURRENT = bot
        self.bot = bot
        self.settings = bot.settings
        self.is_leader = False
        self.lease_seconds = max(self.settings.leader_lease_seconds, 3.0)
        self._runner: Any = None  # the leader's running scheduler
        self._writer: Any = None  # a paused scheduler every replica uses to add jobs
        self._probe: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._lease: Any = None
        mode = self.settings.leader_election
        if mode == "auto":
            mode = "lease" if bot.kube is not None and _in_cluster() else "database"
        self.mode = mode

    def role(self) -> str:
        return "leader" if self.is_leader else "standby"

    async def start(self) -> None:
        self._writer = self._scheduler(paused=True)
        self._loop_task = asyncio.create_task(self._loop(), name="leader election")
        self.bot.on_fixed = self.schedule_verification
        self.bot.is_leader = lambda: self.is_leader

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self._step_down()
        with contextlib.suppress(Exception):
            if self.mode == "database":
                await asyncio.to_thread(self.bot.store.release_lead, LOCK_NAME, self.bot.replica)
            elif self._lease is not None:
                await self._lease.release()
        if self._writer is not None:
            self._writer.shutdown(wait=False)

    # --- jobs ----------------------------------------------------------------------------------------

    def _scheduler(self, paused: bool) -> Any:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        # Its own engine: the job store disposes the engine it holds when its scheduler shuts down.
        scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=self.settings.database)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=UTC,
        )
        scheduler.start(paused=paused)
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
        await self.bot.announce_verification(incident, when)
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
        if self.mode == "database":
            return bool(await asyncio.to_thread(self.bot.store.try_lead, LOCK_NAME, self.bot.replica, ttl))
        if self._lease is None:
            self._lease = KubeLease(self.bot, self.settings.pod_namespace, LOCK_NAME, self.lease_seconds)
        return bool(await self._lease.try_acquire())

    async def _step_up(self) -> None:
        log.info("this replica is now the leader (%s)", self.mode)
        self.is_leader = True
        metrics.IS_LEADER.set(1)
        self._runner = self._scheduler(paused=False)
        if self.settings.scan_interval > 0:
            self._probe = asyncio.create_task(self._probe_loop(), name="the bot's probe")

    async def _step_down(self) -> None:
        self.is_leader = False
        metrics.IS_LEADER.set(0)
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self._runner is not None:
            self._runner.shutdown(wait=False)
            self._runner = None
        metrics.clear_probe_gauges()

    async def _probe_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.bot.probe_once()
            except UserFacingError as exc:
                log.warning("the bot's probe could not run: %s", exc)
            except Exception:
                log.exception("the bot's probe failed")
            await asyncio.sleep(max(self.settings.scan_interval - (time.monotonic() - started), 1.0))


class KubeLease:
    """A coordination.k8s.io/v1 Lease held by renewing it; taken over when it expires."""

    def __init__(self, bot: RegistryBot, namespace: str, name: str, seconds: float) -> None:
        self.bot = bot
        self.namespace = namespace
        self.name = name
        self.seconds = int(seconds)

    async def try_acquire(self) -> bool:
        assert self.bot.kube is not None
        replica, seconds, namespace, name = self.bot.replica, self.seconds, self.namespace, self.name

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

        return bool(await self.bot.kube.call(f"renewing the {name} Lease", attempt))

    async def release(self) -> None:
        assert self.bot.kube is not None
        replica, namespace, name = self.bot.replica, self.namespace, self.name

        def give_up(api: Any) -> None:
            from kubernetes import client

            leases = client.CoordinationV1Api(api)
            lease = leases.read_namespaced_lease(name, namespace)
            if lease.spec.holder_identity == replica:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                leases.replace_namespaced_lease(name, namespace, lease)

        await self.bot.kube.call("releasing the Lease", give_up)


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _short(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
