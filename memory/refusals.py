"""Redis's error replies, named by family (memory/errors.py), each with one line saying what to do.

Redis answers a refused write with an error code: `OOM`, `MISCONF`, `READONLY`, `WRONGTYPE`, `NOSCRIPT`,
`NOPERM`, ... redis-py turns some codes into classes and strips the code from the message; inside a Lua
script Redis 7 keeps the code in front and Redis 6.2 puts it after "Error running script ...: ". So the
family is read from the class first, then from the code or the telltale phrase anywhere in the text.
Nothing here ever guesses "out of order": a reply this module does not know is a `RedisRefusedError`
with Redis's own words.
"""

from __future__ import annotations

import re

from redis import exceptions as rx

from flashlive.memory.errors import (
    AccessDeniedError,
    MemoryFullError,
    MemoryStoreError,
    MemoryUnavailableError,
    PersistenceError,
    ReadOnlyError,
    RedisBusyError,
    RedisRefusedError,
    ScriptMissingError,
    WrongTypeError,
)

# connection-level failures: the clip never reached Redis, or its reply never came back
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    rx.ConnectionError,  # also BusyLoadingError: a restarted Redis still reading its AOF
    rx.TimeoutError,
    ConnectionError,
    OSError,
)

_CODES = ("OOM", "MISCONF", "READONLY", "WRONGTYPE", "NOSCRIPT", "NOPERM", "NOAUTH", "WRONGPASS", "BUSY",
          "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "LOADING")  # fmt: skip
_CODE = re.compile(r"(?:^|[\s:])(" + "|".join(_CODES) + r")\b")
_PHRASES = {
    "used memory > 'maxmemory'": "OOM",
    "read only replica": "READONLY",
    "wrong kind of value": "WRONGTYPE",
    "no matching script": "NOSCRIPT",
    "stop-writes-on-bgsave-error": "MISCONF",
    "errors writing to the aof": "MISCONF",
}
_CLASSES: tuple[tuple[type[BaseException], str], ...] = (
    (rx.OutOfMemoryError, "OOM"),
    (rx.ReadOnlyError, "READONLY"),
    (rx.NoScriptError, "NOSCRIPT"),
    (rx.NoPermissionError, "NOPERM"),
    (rx.AuthenticationError, "NOAUTH"),
    (rx.TryAgainError, "TRYAGAIN"),
    (rx.MasterDownError, "MASTERDOWN"),
    (rx.ClusterDownError, "CLUSTERDOWN"),
)


def error_code(exc: BaseException) -> str | None:
    """The Redis error code behind `exc` (OOM, READONLY, ...), or None when it names none we know."""
    for cls, code in _CLASSES:
        if isinstance(exc, cls):
            return code
    text = str(exc)
    found = _CODE.search(text)
    if found:
        return found.group(1)
    lower = text.lower()
    for phrase, code in _PHRASES.items():
        if phrase in lower:
            return code
    return None


def _message(exc: BaseException) -> str:
    # Redis adds "script: <sha>, on @user_script:12." to errors raised inside scripts: noise for a user
    text = re.sub(r"\s*script: [0-9a-f]{40}, on @user_script:\d+\.?", "", str(exc)).strip()
    return text or type(exc).__name__


def refusal(exc: BaseException, *, what: str, where: str, detail: str = "") -> MemoryStoreError:
    """The named memory error for a redis-py exception raised while doing `what` ("storing the clip of
    'cam' at 12.0 s") against the Redis at `where`; `detail` adds what the caller found out (which key
    holds the wrong type)."""
    if isinstance(exc, MemoryStoreError):
        return exc
    if isinstance(exc, CONNECTION_ERRORS) and not isinstance(exc, rx.AuthenticationError):
        return MemoryUnavailableError(
            f"cannot reach Redis at {where} while {what} ({_message(exc)}): check that it runs and that "
            "memory.redis.url (or --redis) points at it"
        )
    code = error_code(exc)
    said = _message(exc)
    extra = f" ({detail})" if detail else ""
    if code == "OOM":
        return MemoryFullError(
            f"Redis at {where} is out of memory (maxmemory reached and nothing may be evicted) and refused "
            f"{what}: raise its maxmemory, free memory, or set memory.retention limits"
        )
    if code == "MISCONF":
        return PersistenceError(
            f"Redis at {where} cannot write its data to disk and refuses {what} (MISCONF): free disk space "
            "or fix its data directory, then check its log"
        )
    if code == "READONLY":
        return ReadOnlyError(
            f"Redis at {where} is a read-only replica and refused {what}: point memory.redis.url "
            "(or --redis) at the primary"
        )
    if code == "WRONGTYPE":
        return WrongTypeError(
            f"Redis at {where} refused {what}: a key of the memory holds another type of value{extra}; "
            "another program writes under this key prefix: use another memory.redis.prefix, or delete "
            "that key"
        )
    if code == "NOSCRIPT":
        return ScriptMissingError(
            f"Redis at {where} lost the memory's Lua script while {what} and it could not be loaded "
            "again: retry; if it repeats, check that the Redis user may run SCRIPT LOAD and EVALSHA"
        )
    if code in ("NOPERM", "NOAUTH", "WRONGPASS"):
        return AccessDeniedError(
            f"Redis at {where} denied {what} ({said}): check the user and password in the Redis URL and "
            "that the user's ACL allows the memory's commands and keys"
        )
    if code in ("BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "LOADING"):
        return RedisBusyError(f"Redis at {where} is busy and refused {what} ({said})")
    return RedisRefusedError(f"Redis at {where} refused {what}: {said}")
