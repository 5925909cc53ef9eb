"""How many segments wait for a pool: what admission (``--max-backlog``) and eager endpointing
(``--eager-max-backlog``) decide on.

Transcribers acknowledge and then trim their stream up to the group's oldest pending entry
(``services.transcriber.worker``), so the stream's length also counts acknowledged entries held
behind one still being transcribed. What waits is the group's ``pending`` (being transcribed)
plus its ``lag`` (not yet read by any transcriber); where Redis cannot tell the lag (null on a
replica promoted by a failover, until the group reads up), the stream's length stands in.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis

from services import keys


async def waiting(client: redis.Redis, stream: str) -> int:
    """Segments of ``stream`` that no transcriber has finished: pending plus not yet read."""
    try:
        groups: Any = await client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet: nothing was ever queued
        return 0
    group = keys.our_group(groups)
    if group is None or group.get("lag") is None:
        return int(await client.xlen(stream))
    return int(group["pending"]) + int(group["lag"])
