"""A fenced lock: redis-py's `Lock` with a fence, a fenced hash write and a wake-up on release.

redis-py's Lock already gives what the contract asks for: acquisition is `SET key token NX PX ttl`
and release is a Lua script that deletes the key only when it still holds our token. We add three
things it lacks (see FIELD-NOTES.md):

- a fencing counter, a field of a hash the caller names (HINCRBY), incremented in the same script
  as the SET, so each acquisition has a number that a later, stale holder can be told apart by;
  started from Redis's clock when missing, so that it stays monotonic across the loss of Redis;
- `commit(hash_key, fields)`: write the fields into a hash only if the fence is still ours, then
  release, in one script: the holder's result is published and the lock freed in one round trip;
- a publish on a channel when the holder is done, so that processes that lost the race wake at
  once instead of polling every 100 ms as `Lock.acquire(blocking=True)` does.

Like redis-py's lock it knows nothing of its callers' data: key names, the fence's hash and field,
the fields written and the payload published are the caller's (app/sessions.py keeps the fence in
the session hash it guards, so that a session costs Redis one key, not two).
"""

from __future__ import annotations

import secrets

from redis import Redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

# A missing fence (a new session; or Redis restarted empty, or the hash expired or was evicted)
# starts from Redis's clock in microseconds, not from 0: a fence handed out before the loss is
# then never handed out again, so a holder from before a Redis restart cannot pass the check.
# While the hash lives, HINCRBY only ever moves it up. The hash is given the fence's TTL here
# (HINCRBY on a missing hash makes one without any): nothing of ours outlives its TTL.
_ACQUIRE = """
-- KEYS[1] lock, KEYS[2] fence's hash; ARGV[1] token, ARGV[2] lock ttl ms, ARGV[3] fence ttl ms,
-- ARGV[4] fence's field
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then
        local now = redis.call('TIME')
        redis.call('HSET', KEYS[2], ARGV[4], now[1] .. string.format('%06d', tonumber(now[2])))
    end
    local fence = redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return fence
end
return 0
"""

# Release: the owner check of redis-py's release script, plus the wake-up publish. Waiters are
# woken whether or not the holder succeeded; they look again and learn which.
_RELEASE = """
-- KEYS[1] lock; ARGV[1] token, ARGV[2] channel, ARGV[3] payload
local token = redis.call('GET', KEYS[1])
if not token or token ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# Fenced commit: write the hash only if no one acquired the lock since us (the fence is
# unchanged), then release if we are still the owner, then wake the waiters. One round trip.
# A holder that stalled past the TTL while another process took the lock writes nothing here.
_COMMIT = """
-- KEYS[1] lock, KEYS[2] fence's hash, KEYS[3] hash to write (may be the fence's hash)
-- ARGV[1] token, ARGV[2] fence, ARGV[3] hash (and fence) ttl ms, ARGV[4] channel, ARGV[5] payload,
-- ARGV[6] fence's field, ARGV[7] how many fields to drop first, ARGV[8..] those fields, then
-- field, value, field, value...
local written = 0
if redis.call('HGET', KEYS[2], ARGV[6]) == ARGV[2] then
    local dropping = tonumber(ARGV[7])
    if dropping > 0 then
        redis.call('HDEL', KEYS[3], unpack(ARGV, 8, 7 + dropping))
    end
    redis.call('HSET', KEYS[3], unpack(ARGV, 8 + dropping))
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    written = 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return written
"""


class FencedLock(Lock):
    """A lock at `name` with its fence counter in field `fence_field` of hash `fence_hash`;
    waiters listen on `channel`. Not thread-local: one instance is one holder."""

    # Each subclass caches its own registered scripts (redis-py keeps them on the class).
    lua_release = None
    lua_extend = None
    lua_reacquire = None
    lua_fenced_acquire = None
    lua_fenced_release = None
    lua_commit = None

    def __init__(self, redis: Redis, name: str, *, fence_hash: str, fence_field: str, channel: str,
                 ttl_ms: int, fence_ttl_ms: int):
        super().__init__(redis, name, timeout=ttl_ms / 1000, blocking=False, thread_local=False)
        self.fence_hash = fence_hash
        self.fence_field = fence_field
        self.channel = channel
        self.ttl_ms = ttl_ms
        self.fence_ttl_ms = fence_ttl_ms
        self.fence: int | None = None

    def register_scripts(self) -> None:
        super().register_scripts()
        cls = self.__class__
        if cls.lua_fenced_acquire is None:
            cls.lua_fenced_acquire = self.redis.register_script(_ACQUIRE)
            cls.lua_fenced_release = self.redis.register_script(_RELEASE)
            cls.lua_commit = self.redis.register_script(_COMMIT)

    def acquire(self, **kwargs) -> bool:
        # A random token, not redis-py's default uuid1 (time and MAC address, guessable).
        kwargs.setdefault("token", secrets.token_hex(16))
        return super().acquire(**kwargs)

    @property
    def held(self) -> bool:
        """True from our acquisition until our release or commit (whether or not it expired)."""
        return self.local.token is not None

    def do_acquire(self, token: str) -> bool:
        fence = self.lua_fenced_acquire(
            keys=[self.name, self.fence_hash],
            args=[token, self.ttl_ms, self.fence_ttl_ms, self.fence_field],
            client=self.redis,
        )
        if int(fence):
            self.fence = int(fence)
            return True
        return False

    def do_release(self, expected_token) -> None:
        if not bool(
            self.lua_fenced_release(
                keys=[self.name], args=[expected_token, self.channel, ""], client=self.redis
            )
        ):
            raise LockNotOwnedError("Cannot release a lock that's no longer owned", lock_name=self.name)

    def fence_is_current(self) -> bool:
        """True while no other process has acquired the lock since we did."""
        value = self.redis.hget(self.fence_hash, self.fence_field)
        return value is not None and int(value) == self.fence

    def commit(self, hash_key: str, fields: dict[str, str | int], *, ttl_ms: int, payload: str,
               drop: tuple[str, ...] = ()) -> bool:
        """Write `fields` into `hash_key` (expiring after `ttl_ms`, the fence too) if our fence is
        current, after removing the fields named in `drop`; release, and publish `payload` to the
        waiters. True if written."""
        token = self.local.token
        self.local.token = None
        pairs = [item for field_value in fields.items() for item in field_value]
        return bool(
            self.lua_commit(
                keys=[self.name, self.fence_hash, hash_key],
                args=[token or "", self.fence or 0, ttl_ms, self.channel, payload, self.fence_field,
                      len(drop), *drop, *pairs],
                client=self.redis,
            )
        )
