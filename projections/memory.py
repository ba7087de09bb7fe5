"""Whether Redis keeps what it is given (product.md): a read model that Redis may evict from, or
that it has no room to write, answers wrong or not at all, so readiness and the processes' logs
say so. Read from INFO, which managed Redis services allow where they forbid CONFIG."""

from __future__ import annotations

from typing import Any

from redis import Redis, RedisCluster
from redis.exceptions import ResponseError

KEEPING = "noeviction"


def memory_problem(redis: Redis) -> str | None:
    """'evicting (<policy>)', 'out of memory', or None while Redis keeps everything and has room.
    A Redis that does not report its policy (a proxy that refuses INFO or leaves it out, the
    embedded mode's in-process stand-in) is taken at its word. On a cluster, every master
    must keep what it is given: the first that does not is named."""
    if isinstance(redis, RedisCluster):
        # Asked node by node: `info(target_nodes=PRIMARIES)` answers {node: info}, but a single
        # master's INFO itself.
        for node in sorted(redis.get_primaries(), key=lambda node: node.name):
            if problem := _problem(redis.get_redis_connection(node).info("memory")):
                return f"{problem} on {node.name}"
        return None
    try:
        return _problem(redis.info("memory"))
    except ResponseError:
        return None


def _problem(info: dict[str, Any]) -> str | None:
    policy = info.get("maxmemory_policy", KEEPING)
    if policy != KEEPING:
        return f"evicting ({policy})"
    limit = int(info.get("maxmemory", 0))
    if limit and int(info.get("used_memory", 0)) >= limit:
        return "out of memory"
    return None
