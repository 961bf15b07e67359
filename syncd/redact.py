"""Keep secrets out of logs, printed config and error messages.

This is the one place that knows what in a URL is secret: the password of
the user-info (``redis://:pw@host``, ``postgresql://user:pw@host``) and every
query parameter whose name says it is a credential (``?password=``, libpq's
``sslpassword``, ``?auth_token=``, ...): redis-py and libpq accept both forms.
Everything that shows a URL, or an error that may quote one, goes through
`mask_url` or `scrub`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"

#: Query parameter names (lower case) that carry a credential: anything that
#: mentions a password, secret, token or credentials, and a few exact names.
_SECRET_PARAM = re.compile(r"pass|secret|token|credential|auth|apikey|api_key|private")


def is_secret_param(name: str) -> bool:
    """Whether a URL query parameter called ``name`` holds a credential."""
    return bool(_SECRET_PARAM.search(name.lower()))


def mask_url(url: str) -> str:
    """``url`` with its password and credential-like parameters as ``***``.

    The rest (scheme, user, host, port, path, other parameters) stays as it
    was written. Anything that does not parse as a URL is masked whole.
    """
    try:
        parts = urlsplit(url)
        # A cluster URL lists several host:port (redis+cluster://a:1,b:2),
        # which urlsplit cannot read as one port: its hosts are kept as written.
        port = None if parts.scheme.endswith("+cluster") else parts.port
    except ValueError:
        return MASK
    head, qmark, tail = url.partition("?")
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        if port is not None:
            host = f"{host}:{port}"
        if parts.scheme.endswith("+cluster"):
            host = parts.netloc.rpartition("@")[2]
        head = head.replace(parts.netloc, f"{parts.username or ''}:{MASK}@{host}", 1)
    if qmark:
        query, hash_, fragment = tail.partition("#")
        tail = _mask_query(query) + hash_ + fragment
    return head + qmark + tail


def _mask_query(query: str) -> str:
    if not query:
        return query
    out = []
    for field in query.split("&"):
        name, sep, _value = field.partition("=")
        if sep and is_secret_param(unquote(name)):
            field = f"{name}={MASK}"
        out.append(field)
    return "&".join(out)


def url_secrets(url: str) -> list[str]:
    """The secret values in ``url`` (raw and percent-decoded), longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: set[str] = set()
    raw_password = parts.netloc.rpartition("@")[0].partition(":")[2]
    if raw_password:
        found |= {raw_password, unquote(raw_password)}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and is_secret_param(name):
            found |= {value, quote(value, safe=""), quote(value)}
    # Shorter values would mask every digit or letter they share with a
    # message; a secret that short is no secret worth the garbled message.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def scrub(message: str, *urls: str) -> str:
    """``message`` with each of ``urls`` masked and every secret in them replaced.

    For errors a library built from a URL: it may quote the URL whole, or
    only a value from it (``invalid value for 'password': ...``).
    """
    for url in urls:
        if not url:
            continue
        if url in message:
            message = message.replace(url, mask_url(url))
        for secret in url_secrets(url):
            message = message.replace(secret, MASK)
    return message
