"""The one place that picks real implementations and builds an agent from the configuration."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.address_mover import AddressMover, NetlinkAddressMover
from agent.api import ApiContext, build_api
from agent.backups import BackupKeeper, SubprocessBackups, slots_to_back_up
from agent.clock import Clock
from agent.config import ClusterConfig
from agent.daemon import AgentParts, next_incarnation, store_incarnation
from agent.driver import ProcessDriver, RestartPolicy, ServerDriver
from agent.driver_docker import DockerDriver, docker_settings
from agent.edge import Edge
from agent.event_publisher import EventPublisher
from agent.events import resource_event
from agent.heartbeat import Heartbeat
from agent.lease import LeaseKeeper
from agent.loop import DecisionLoop
from agent.metrics import AgentMetrics
from agent.mqtt import HttpReportPoster, LeaderListening, MqttLink, ReportPublisher
from agent.reports import Aggregator, IntakeStats, ReportIntake, report_key, traffic_handler
from agent.resource_levels import Change
from agent.resources import PsutilSampler, ResourceWatch, Sampler
from agent.sdnotify import Notifier
from agent.tenantcmd import provision
from agent.traffic import TrafficCounter
from agent.vips import VipKeeper, configured_vips, leased_slots
from agent.voters import VoterKeeper, VoterSettings, read_voters
from agent.watch import Watch
from consensus.protocol import Consensus
from consensus.syncobj_consensus import RaftSettings, SyncObjConsensus


def journal_dir(config: ClusterConfig, server: str) -> Path:
    """Where `server` keeps its Raft journal (`raft.journal`) and dump."""
    return config.data_dir / "servers" / server / "raft"


def raft_settings(config: ClusterConfig, server: str, voters: tuple[str, ...] = ()) -> RaftSettings:
    """Raft settings for `server`; `voters` (the last committed membership this server saw)
    overrides the configured voters, which only describe the cluster as it was first built."""
    timing = config.timing
    known = {s.name for s in config.servers}
    members = voters if voters and set(voters) <= known else config.voters
    return RaftSettings(
        server=server,
        voters={name: config.server(name).raft_address for name in members},
        peers={s.name: s.raft_address for s in config.servers},
        password=config.secrets.raft_password.get_secret_value(),
        journal_dir=journal_dir(config, server),
        election_min_s=timing.raft_election_min_s,
        election_max_s=timing.raft_election_max_s,
        leader_fallback_s=timing.leader_fallback_s,
    )


def build_agent(
    config: ClusterConfig,
    server: str,
    clock: Clock,
    *,
    consensus: Consensus | None = None,
    driver: ServerDriver | None = None,
    notifier: tuple[Notifier, float | None] | None = None,
    mover: AddressMover | None = None,
    sampler: Sampler | None = None,
) -> AgentParts:
    """Wire one agent. Tests pass their own consensus or driver; production passes neither.
    `notifier` (with systemd's watchdog interval) defaults to what systemd set in the
    environment, which is taken out of it so that app instances do not inherit it."""
    me = config.server(server)
    traffic = TrafficCounter(config.throttle.max_tracked)
    voters_file = journal_dir(config, server) / "voters.json"
    consensus = consensus or SyncObjConsensus(
        raft_settings(config, server, read_voters(voters_file)), clock
    )
    driver = driver or server_driver(config, server, clock, overload_reason(config, traffic))
    reports = _reports(config, server, consensus, clock, traffic)
    metrics = AgentMetrics(consensus.snapshot)
    metrics.start_at_zero(slot.name for slot in config.slots)
    events = (
        EventPublisher(config.mqtt, config.cluster, server, consensus, clock)
        if config.mqtt is not None
        else None
    )
    if events is not None:
        metrics.watch_mqtt(events.status)
    resources = _resource_watch(config, server, consensus, clock, events, sampler)
    metrics.watch_resources(resources.status)
    incarnation_file = config.data_dir / "servers" / server / "incarnation"
    incarnation = next_incarnation(incarnation_file)
    leases = LeaseKeeper(
        server=server,
        consensus=consensus,
        driver=driver,
        clock=clock,
        lease_s=config.timing.lease_s,
        renew_s=config.timing.lease_renew_s,
    )
    vips = VipKeeper(
        vips=configured_vips(config, server),
        mover=mover or NetlinkAddressMover(clock),
        serving=lambda: leased_slots(leases.leases, driver.instances(), clock.monotonic()),
        clock=clock,
        interval_s=config.timing.tick_s,
        failed=lambda slot: metrics.vip_errors.labels(slot).inc(),
    )
    for slot in vips.slots:
        metrics.vip_errors.labels(slot)
    watch = Watch(
        config, server, consensus, clock, incarnation, round_trip=metrics.probe_round_trip
    )
    metrics.watch_detector(watch.stats)
    metrics.watch_counters(
        "moonwatch_traffic_reports",
        "Traffic reports of this agent: built, sent by MQTT or HTTP, received, rejected",
        reports.stats,
    )
    metrics.watch_counters(
        "moonwatch_edge_events",
        "Edge and app protection events: subdomains evicted from the counters, instances "
        "not restarted because their own tenant saturates them",
        lambda: {
            "counter_evictions": traffic.evicted,
            "overload_holds": getattr(driver, "overload_holds", 0),
        },
    )
    backups = BackupKeeper(
        settings=config.backups,
        backup_dir=config.backup_dir,
        runner=SubprocessBackups(config, clock),
        serving=lambda: slots_to_back_up(consensus.snapshot().state, server, driver.instances()),
        clock=clock,
        metrics=metrics,
    )
    loop = DecisionLoop(
        config=config,
        server=server,
        incarnation=incarnation,
        consensus=consensus,
        driver=driver,
        clock=clock,
        metrics=metrics,
        leases=leases,
        prober=watch,
        persist_incarnation=lambda n: store_incarnation(incarnation_file, n),
        rates=reports.aggregator.rates,
    )
    api = build_api(
        ApiContext(
            cluster=config.cluster,
            server=server,
            pid=os.getpid(),
            consensus=consensus,
            loop=loop,
            clock=clock,
            metrics=metrics,
            stall_after_s=max(5.0, 20 * config.timing.tick_s),
            api_token=config.secrets.api_token.get_secret_value(),
            traffic=reports.handler,
            provision=functools.partial(provision, config),
            backups=backups.statuses,
            mqtt=events.status if events is not None else None,
            resources=resources.status,
            instances=lambda: [dataclasses.asdict(i) for i in driver.instances().values()],
        )
    )
    keeper = VoterKeeper(
        VoterSettings(
            server=server,
            replace_voters=config.healing.replace_voters,
            voters_file=voters_file,
            peer_status_urls={
                s.name: f"http://{s.host}:{s.agent_port}/v1/status"
                for s in config.servers
                if s.name != server
            },
            refresh_after_s=max(3.0, 3 * config.timing.raft_election_max_s),
        ),
        consensus,
        clock,
    )
    heartbeat = _heartbeat(notifier or Notifier.from_environ(os.environ), loop, consensus, clock)
    edge = Edge(
        config.base_domain,
        lambda: consensus.snapshot().state,
        server,
        throttle=config.throttle,
        counter=traffic,
        wall=clock.wall,
        monotonic=clock.monotonic,
        answered=metrics.edge_response,
    ).application()
    return AgentParts(
        server=server,
        host=me.host,
        agent_port=me.agent_port,
        edge_port=me.edge_port,
        consensus=consensus,
        driver=driver,
        loop=loop,
        api=api,
        edge=edge,
        clock=clock,
        shutdown_timeout_s=config.timing.shutdown_timeout_s,
        background=[
            leases.run,
            watch.runner.run,
            keeper.run,
            *([vips.run] if vips.slots else []),
            *reports.loops,
            *([events.run] if events is not None else []),
            *([backups.run] if config.backups.enabled else []),
            *([resources.run] if config.resources.enabled else []),
            *([heartbeat.run] if heartbeat is not None else []),
        ],
        backups=backups,
        on_stopping=[heartbeat.stopping] if heartbeat is not None else [],
    )


def _resource_watch(
    config: ClusterConfig,
    server: str,
    consensus: Consensus,
    clock: Clock,
    events: EventPublisher | None,
    sampler: Sampler | None,
) -> ResourceWatch:
    """This server's own health (disk of the data directory, memory, open files, CPU steal,
    load); its level changes go to the log and, with a broker, to MQTT as events."""
    settings = config.resources

    def notify(change: Change, evidence: Mapping[str, Any]) -> None:
        if events is not None:
            document = resource_event(
                server, config.cluster, clock.wall(), change.degraded, evidence
            )
            events.publish_local(document["kind"], document)

    return ResourceWatch(
        settings=settings,
        server=server,
        sampler=sampler
        or PsutilSampler(
            config.disk_path, settings.timeout_s, journal_dir(config, server) / "raft.journal"
        ),
        consensus=consensus,
        clock=clock,
        notify=notify,
    )


def _heartbeat(
    notifier: tuple[Notifier, float | None], loop: DecisionLoop, consensus: Consensus, clock: Clock
) -> Heartbeat | None:
    """systemd's view of this agent: ready once it takes part in the cluster (the condition of
    /readyz), alive while its decision loop reports; None when systemd is not listening."""
    manager, watchdog_s = notifier
    if not manager.enabled:
        return None
    return Heartbeat(
        manager,
        clock,
        report=lambda: loop.last_report,
        ready=lambda: loop.joined() and consensus.snapshot().raft.leader is not None,
        watchdog_s=watchdog_s,
    )


@dataclass(frozen=True, slots=True)
class _Reports:
    aggregator: Aggregator
    handler: Callable[[web.Request], Awaitable[web.Response]]
    loops: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]]
    stats: Callable[[], dict[str, int]]


def _reports(
    config: ClusterConfig, server: str, consensus: Consensus, clock: Clock, traffic: TrafficCounter
) -> _Reports:
    """Traffic reports: this edge's counts to every agent over MQTT (to the leader's API when
    the broker fails), and the aggregation the leader's throttle rule reads."""
    interval = config.throttle.report_interval_s
    key = report_key(config.secrets.raft_password.get_secret_value())
    aggregator = Aggregator(
        clock.monotonic, 3 * interval, [s.name for s in config.servers], wall=clock.wall
    )
    stats = IntakeStats()
    intake = ReportIntake(aggregator, key, config.cluster, stats)
    link = (
        MqttLink(config.mqtt, config.cluster, server, intake.offer, clock)
        if config.mqtt is not None
        else None
    )
    urls = {s.name: s.agent_url for s in config.servers}

    def leader_url() -> str | None:
        leader = consensus.snapshot().raft.leader
        return urls.get(leader) if leader is not None and leader != server else None

    poster = HttpReportPoster()
    publisher = ReportPublisher(
        cluster=config.cluster,
        server=server,
        key=key,
        interval_s=interval,
        take=traffic.take,
        aggregator=aggregator,
        clock=clock,
        link=LeaderListening(link, lambda: consensus.snapshot().raft.leader) if link else None,
        poster=poster,
        leader_url=leader_url,
    )

    async def publish(stopping: asyncio.Event) -> None:
        try:
            await publisher.run(stopping)
        finally:
            await poster.close()  # its HTTP session, opened when this agent was a follower

    loops: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = [publish]
    if link is not None:
        loops.append(link.run)
    handler = traffic_handler(aggregator, key, config.cluster, stats)

    def counters() -> dict[str, int]:
        sent = dataclasses.asdict(publisher.stats)
        mqtt = {f"mqtt_{k}": v for k, v in dataclasses.asdict(link.stats).items()} if link else {}
        rejected = {f"rejected_{k}": v for k, v in stats.rejected.items()}
        return {**sent, **mqtt, "accepted": stats.accepted, "ignored": stats.ignored, **rejected}

    return _Reports(aggregator, handler, loops, counters)


def server_driver(
    config: ClusterConfig, server: str, clock: Clock, busy: Callable[[str], str | None]
) -> ServerDriver:
    """What runs this server's app instances: child processes, or containers."""
    policy = RestartPolicy(
        health_interval_s=config.timing.app_health_interval_s,
        start_grace_s=config.timing.app_start_timeout_s,
    )
    if config.app.driver == "docker":
        return DockerDriver(docker_settings(config, server), clock, policy, busy)
    return ProcessDriver(clock, policy, busy)


def overload_reason(config: ClusterConfig, traffic: TrafficCounter) -> Callable[[str], str | None]:
    """Why a slot's app is saturated by one of its own tenants at this edge, or None."""
    tenants = {slot.name: slot.tenants for slot in config.slots}
    limits = config.throttle

    def busy(slot: str) -> str | None:
        for tenant in tenants.get(slot, ()):
            override = limits.tenants.get(tenant)
            cap = (override.concurrent if override else None) or limits.limits.concurrent
            inflight = traffic.inflight(tenant)
            if cap is not None and inflight >= cap:
                return f"tenant {tenant} has {inflight} requests in flight (cap {cap})"
        return None

    return busy
