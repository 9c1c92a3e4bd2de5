"""Credentials in URLs: mask them in URLs and in text that may quote them (FFmpeg errors repeat the
URL), and put them into a URL for the process that connects.

Every log line, error message, memory meta field and metric label that names a source goes through
`redact`, so a camera password never leaves the process that needs it. It lives in memory, the lowest
layer, because the memory stores sources (`VideoMemory.set_state`) and every other layer may use it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

# A query parameter whose name contains one of these (any case) carries a secret: password, passwd,
# pwd, token, access_token, api_key, apikey, sig, signature, X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, auth, client_secret... A harmless one caught too (`keyframe`) loses only its value.
SECRET_PARTS = ("pass", "pwd", "secret", "token", "key", "sig", "auth", "credential")

# scheme://user[:password]@ anywhere in free text; the user part stops at the first '@', '/' or space.
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in SECRET_PARTS)


def redact(url: str) -> str:
    """`url` with user and password replaced by `***` and secret query values masked.

    Strings that are not URLs (plain file paths) come back unchanged.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not parseable as a URL: mask anything that looks like userinfo rather than risk a leak.
        return _USERINFO_IN_TEXT.sub(lambda m: f"{m['scheme']}{MASK}:{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{MASK}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_param(k) for k, _ in pairs):
            query = urlencode([(k, MASK if is_secret_param(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with any embedded URL credentials masked and every given secret string replaced.

    Use it on messages that come from libraries (FFmpeg, aiortc) and may quote a URL or a password.
    """
    out = _USERINFO_IN_TEXT.sub(lambda m: f"{m['scheme']}{MASK}:{MASK}@", text)
    for secret in secrets:
        if not secret:
            continue
        # Secrets also appear percent-encoded inside URLs.
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if form:
                out = out.replace(form, MASK)
    return out


class RedactFilter(logging.Filter):
    """A logging filter that masks URL credentials in every record it sees.

    Our own code logs only redacted URLs. FFmpeg's log lines (off unless `av.logging.set_level` is
    called) can quote a full URL; add this filter to the log *handlers* (filters on a logger do not
    apply to its children's records) when FFmpeg logging is turned on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def url_secrets(url: str) -> list[str]:
    """The user name, password and secret query values inside `url` (for `redact_text`)."""
    if "://" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
    if parts.username:
        found.append(parts.username)
    found.extend(v for k, v in parse_qsl(parts.query, keep_blank_values=True) if is_secret_param(k))
    # Longest first, so a password containing the user name is not half-replaced.
    return sorted({s for s in found if s}, key=len, reverse=True)


def with_credentials(url: str, user: str | None, password: str | None) -> str:
    """`url` with `user`/`password` put in its userinfo (percent-encoded), replacing any already there."""
    if user is None and password is None:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if user is None:
        user = unquote(parts.username or "")
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))
