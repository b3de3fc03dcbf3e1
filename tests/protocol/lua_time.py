"""Run a Lua script at a chosen Redis time (conformance-vector runners only, never production).

A script reads the clock with ``redis.call('TIME')``. :func:`at_time` returns the
same script preceded by a shim that shadows ``redis`` with a local table whose
``call`` answers ``TIME`` with the given reply and passes every other command to
the real ``redis.call``. Locals are allowed in Redis 7 scripts (globals are not),
so the script itself runs unchanged. Each distinct time is a distinct source, so
a distinct SHA1, loaded on first use.
"""

from __future__ import annotations

from controlplane.protocol.scripts import LuaScript

SHIM: str = (
    "local __real = redis\n"
    "local redis = setmetatable({{call = function(c, ...)\n"
    "  if string.upper(c) == 'TIME' then return {{'{seconds}', '{microseconds}'}} end\n"
    "  return __real.call(c, ...)\n"
    "end}}, {{__index = __real}})\n"
)


def time_shim(seconds: int, microseconds: int) -> str:
    """The Lua text that makes ``redis.call('TIME')`` reply ``{seconds, microseconds}``."""
    if seconds < 0 or not 0 <= microseconds < 1_000_000:
        raise ValueError(f"not a TIME reply: {seconds}, {microseconds}")
    return SHIM.format(seconds=seconds, microseconds=microseconds)


def at_time(script: LuaScript, seconds: int, microseconds: int) -> LuaScript:
    """``script`` with its Redis time fixed at ``seconds`` + ``microseconds`` µs."""
    return LuaScript(time_shim(seconds, microseconds) + script.source, script.name)
