"""Caps on concurrent event streams, per user and per client IP, counted in Redis across every web
process: beyond `ARZANI_MAX_STREAMS_PER_USER` or `ARZANI_MAX_STREAMS_PER_IP` a new stream is a 429.

An open stream costs no thread (gevent) but it holds a connection of the web process's
`WEB_CONNECTIONS` and a slot of its hub; one anonymous client opening thousands would take them
all. Each stream holds a slot in two sorted sets, `arzani:streams:user:{UID}` and
`arzani:streams:ip:{IP}`, scored by when the slot expires: renewed at every heartbeat, removed
when the stream ends, and left to expire (`SLOT_TTL_S`) if its web process was killed, so a
crash never leaks slots for long. Each set is its own key (a Redis Cluster puts them in different
slots), taken one after the other: two streams opening at the same instant may both get the last
slot of one cap, never more than one over it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from redis import Redis

from app.errors import TooManyStreams

SLOT_TTL_S = 30.0
"""A slot not renewed for this long is free again (a stream renews it at every heartbeat, 10 s)."""

_TAKE = """
-- KEYS[1]: a cap's sorted set; ARGV[1] now (ms), ARGV[2] the slot's expiry (ms), ARGV[3] slot id,
-- ARGV[4] the cap. Drops expired slots, then takes one if fewer than the cap are held: 1, else 0.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) - tonumber(ARGV[1])))
return 1
"""


def user_key(user_id: int) -> str:
    return f"arzani:streams:user:{{{int(user_id)}}}"


def ip_key(ip: str) -> str:
    return f"arzani:streams:ip:{{{ip}}}"


@dataclass
class Slot:
    """A stream's place under both caps; renew() at every heartbeat, release() when it ends."""

    redis: Redis
    keys: tuple[str, ...]
    slot_id: str

    def renew(self) -> None:
        """One round trip at every heartbeat of every open stream (a pipeline, no transaction:
        each key is in its own cluster slot)."""
        expiry = int((time.time() + SLOT_TTL_S) * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.zadd(key, {self.slot_id: expiry}, xx=True)
            pipe.pexpire(key, int(SLOT_TTL_S * 1000))
        pipe.execute()

    def release(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.zrem(key, self.slot_id)
        pipe.execute()


def take(redis: Redis, user_id: int, ip: str | None, *, per_user: int, per_ip: int) -> Slot:
    """A slot under the user's cap and the address's, or TooManyStreams (nothing held then)."""
    slot_id = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    expiry = now_ms + int(SLOT_TTL_S * 1000)
    caps = [(user_key(user_id), per_user, "this user")]
    if ip:
        caps.append((ip_key(ip), per_ip, "this address"))
    held: list[str] = []
    for key, cap, whose in caps:
        if not redis.eval(_TAKE, 1, key, now_ms, expiry, slot_id, cap):
            Slot(redis, tuple(held), slot_id).release()
            raise TooManyStreams(f"{cap} event streams are open for {whose} already: close some (other tabs) "
                                 "and try again")
        held.append(key)
    return Slot(redis, tuple(held), slot_id)
