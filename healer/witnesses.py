"""Who checks a suspicion: a small, deterministic set of witnesses, the same on every agent."""

from __future__ import annotations

import hashlib
from typing import Final

from consensus.state import ClusterState, Suspicion

# Enough independent probes for a majority to mean something, few enough that a suspicion costs
# the same at 1,000 servers as at 10. Clusters with at most this many other up servers ask all.
WITNESSES: Final = 7


def witnesses(
    state: ClusterState, suspicion: Suspicion, k: int | None = WITNESSES
) -> tuple[str, ...]:
    """The up servers (never the target) that probe `suspicion.target` for this suspicion.

    `k` None means every up server. Otherwise the `k` servers ranked first by a hash of the
    suspicion's identity (target, incarnation, since) and their name, servers that are
    themselves suspected ranked last: every agent computes the same set from committed state, a
    reopened suspicion gets a fresh set, and a change of membership moves at most the members
    it touches (rendezvous hashing). Sorted by name.
    """
    up = [s.name for s in state.up_servers() if s.name != suspicion.target]
    if k is None or len(up) <= k:
        return tuple(sorted(up))
    if k < 1:
        raise ValueError("k must be at least 1")
    suspected = {s.target for s in state.suspicions}
    key = f"{suspicion.target}\0{suspicion.incarnation}\0{suspicion.since!r}\0".encode()

    def rank(name: str) -> tuple[bool, bytes]:
        digest = hashlib.blake2b(key + name.encode(), digest_size=8).digest()
        return name in suspected, digest

    return tuple(sorted(sorted(up, key=rank)[:k]))
