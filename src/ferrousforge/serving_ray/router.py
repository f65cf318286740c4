"""The cache-aware request router: Ray Serve's request-router extension point.

A request whose route key shares at least one block with a recent request goes to the
replica that served the longest such prefix (its KV cache, or its host-RAM prompt cache,
still holds it), unless that replica's load exceeds the least loaded one's by more than
``imbalance``; otherwise, and for new prefixes, the least loaded replica gets it. Load is
the requests a replica has running or waiting: Serve's own count of the requests it sent
there, else the engines' counters (``record_routing_stats``).

The router lives in the ingress replica's process (it routes the ingress's handle calls).
"""

from __future__ import annotations

import logging
import random

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from ferrousforge.serving_ray.prefix_index import DEFAULT_MAX_BLOCKS, PrefixIndex

log = logging.getLogger(__name__)

DEFAULT_IMBALANCE = 4  # requests: about half a replica's default --parallel


def route_hashes(pending_request: PendingRequest | None) -> list[bytes]:
    """The block hashes the ingress computed for this request (keyword ``route``)."""
    if pending_request is None:
        return []
    hashes = pending_request.kwargs.get("route")
    return hashes if isinstance(hashes, list) else []


class CacheAwareRouter(RequestRouter):
    """Prefix affinity within a load bound, else least loaded (see the module docstring).

    No FIFOMixin: it would hand the replica chosen for one request to whichever request is
    first in the queue, and the affinity would be lost.
    """

    def initialize_state(
        self, imbalance: int = DEFAULT_IMBALANCE, max_blocks: int = DEFAULT_MAX_BLOCKS
    ) -> None:
        self._imbalance = imbalance
        self._index = PrefixIndex(max_blocks)

    def load(self, replica: RunningReplica) -> int:
        """Requests running or waiting on the replica."""
        queued = self._replica_queue_len_cache.get(replica.replica_id)
        if queued is not None:
            return queued
        stats = replica.routing_stats or {}
        return int(stats.get("running", 0)) + int(stats.get("waiting", 0))

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Our ranks already cover every replica: back off before trying them again.
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        # shuffled first: equally loaded replicas share new prefixes instead of the first
        # one taking them all
        by_load = sorted(random.sample(candidate_replicas, len(candidate_replicas)), key=self.load)
        hashes = route_hashes(pending_request)
        if hashes:
            by_id = {r.replica_id: r for r in candidate_replicas}
            owner_id, _ = self._index.longest_owner(hashes, alive=set(by_id))
            if owner_id is not None:
                owner = by_id[owner_id]
                if self.load(owner) - self.load(by_load[0]) <= self._imbalance:
                    return [[owner], [r for r in by_load if r is not owner]]
        return [by_load]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        hashes = route_hashes(pending_request)
        if hashes:
            self._index.record(hashes, replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._index.forget([replica_id])

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        before = set(self._replica_id_set)
        super().update_replicas(replicas)
        self._index.forget(before - set(self._replica_id_set))
