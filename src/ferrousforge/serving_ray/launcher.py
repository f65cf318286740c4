"""`ferrousforge serve --ray`: start (or join) Ray, deploy the ingress and the engine
replicas behind the cache-aware router, and serve until interrupted."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings

log = logging.getLogger(__name__)

APP_NAME = "ferrousforge"
BOARD_NAME = "ferrousforge-metrics"

ROUTER_CLASS = "ferrousforge.serving_ray.router:CacheAwareRouter"
ROUTING_STATS_PERIOD_S = 1.0
INGRESS_MAX_ONGOING = 1024  # the ingress only forwards: its limit is the engines'


@dataclass(slots=True)
class ReplicaPlan:
    """How many engine replicas, how they scale, and what each one may use."""

    replicas: int
    min_replicas: int | None
    max_replicas: int | None
    target_ongoing_requests: float
    threads: int | None  # per replica; None: all cores of its machine
    max_ongoing_requests: int
    upscale_delay_s: float | None = None  # None: Ray Serve's default
    downscale_delay_s: float | None = None

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return max(self.replicas, self.max_replicas or 0)


def is_local() -> bool:
    """No RAY_ADDRESS: Ray starts on this machine and the replicas share its cores."""
    return not os.environ.get("RAY_ADDRESS")


def replica_settings(settings: ServerSettings) -> ServerSettings:
    """``settings`` as each replica uses them: on a local Ray instance without --threads,
    each replica gets cores / replicas threads (they share the machine)."""
    if settings.threads is not None or not is_local():
        return settings
    threads = max(1, (os.cpu_count() or 1) // max(1, settings.replicas))
    return settings.model_copy(update={"threads": threads})


def plan_replicas(settings: ServerSettings) -> ReplicaPlan:
    """The replica plan for ``settings`` (after replica_settings)."""
    lo, hi = settings.min_replicas, settings.max_replicas  # validated by the settings
    return ReplicaPlan(
        replicas=settings.replicas,
        min_replicas=lo,
        max_replicas=hi,
        target_ongoing_requests=settings.target_ongoing_requests or float(settings.parallel),
        threads=settings.threads,
        # a replica takes what its engine would queue; more wait in Serve's router
        max_ongoing_requests=settings.parallel + settings.max_waiting,
        upscale_delay_s=settings.upscale_delay,
        downscale_delay_s=settings.downscale_delay,
    )


def build_app(settings: ServerSettings, specs: list[ModelSpec], plan: ReplicaPlan) -> Any:
    """The Serve application: Ingress bound to the EngineReplica deployment."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from ferrousforge.serving_ray.deployments import EngineReplica, Ingress

    for spec in specs:
        spec.config.progress_callback = None  # a terminal bar means nothing in a replica
    options: dict[str, Any] = {
        "max_ongoing_requests": plan.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": plan.threads or 1},
        "request_router_config": RequestRouterConfig(
            request_router_class=ROUTER_CLASS,
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
        ),
        # a model load on a busy machine takes a while; Serve must not give up on it
        "health_check_timeout_s": 120,
        "graceful_shutdown_timeout_s": 10,
    }
    if plan.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": plan.min_replicas if plan.min_replicas is not None else 1,
            "max_replicas": plan.max_replicas or max(plan.replicas, plan.min_replicas or 1),
            "initial_replicas": plan.replicas,
            "target_ongoing_requests": plan.target_ongoing_requests,
        }
        for key in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(plan, key) is not None:
                options["autoscaling_config"][key] = getattr(plan, key)
    else:
        options["num_replicas"] = plan.replicas
    engine = serve.deployment(EngineReplica, name="Engine").options(**options)
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress").options(
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": 0},
    )
    board = BOARD_NAME if settings.metrics else None
    return ingress.bind(engine.bind(settings, specs, board), settings, board)


def _start_ray(plan: ReplicaPlan, local: bool) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves this machine
    if not local:
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return
    cpus = max(os.cpu_count() or 1, plan.most_replicas * (plan.threads or 1))
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 << 20,  # responses stream through; nothing big is stored
    )


def serve_on_ray(settings: ServerSettings, specs: list[ModelSpec]) -> int:
    """Run the server on Ray Serve until SIGINT/SIGTERM; the exit code. ``settings`` come
    from replica_settings, and ``specs`` were built from them."""
    import ray
    from ray import serve

    from ferrousforge.serving_ray.deployments import BOARD_NAMESPACE
    from ferrousforge.serving_ray.metrics_board import MetricsBoard

    local = is_local()
    plan = plan_replicas(settings)
    _start_ray(plan, local)
    try:
        board = None  # held here: Ray destroys an actor whose last handle goes away
        if settings.metrics:
            board = (
                ray.remote(num_cpus=0)(MetricsBoard)
                .options(name=BOARD_NAME, namespace=BOARD_NAMESPACE, get_if_exists=True)
                .remote()
            )
            ray.get(board.collect.remote())  # created before any replica looks it up
        host, port = settings.hosts[0], settings.port
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        log.info(
            "starting %d engine replica(s)%s on Ray (%s thread(s) each)",
            plan.replicas,
            f", autoscaling {plan.min_replicas}..{plan.max_replicas}" if plan.autoscaling else "",
            plan.threads or "all",
        )
        serve.run(build_app(settings, specs, plan), name=APP_NAME, route_prefix="/")
        log.info("ready: http://%s:%d (Ray Serve, app %r)", host, port, APP_NAME)
        _wait_for_signal()
    except (RuntimeError, ValueError) as e:
        log.error("%s", e)
        return 1
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
