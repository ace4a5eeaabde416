"""A URL as messages may show it: with its password replaced by ``***``.

``api_url`` may carry a login for a proxy in front of the server
(``http://user:pw@proxy/api``, which requests and aiohttp send as HTTP Basic auth)
and the bridge's ``db_url`` a database password; both URLs end up in errors, log
lines, status pages and the queue's own rows. This is the one masking for both
(the bridge imports it): the rest of the URL stays readable, as it says which
server or database is meant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***``, or unchanged when
    it has none (a plain file path, a URL without login).

    ``user:***@host`` is how SQLAlchemy shows a database URL, so database URLs read
    as they always did. The text is edited in place, never re-assembled, so nothing
    else in it changes, and it never raises: what cannot be parsed is still shown
    masked. The host starts after the last ``@`` of the authority, as ``urlsplit``
    and requests read it, so a password holding a raw ``@`` is hidden whole.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    ends = [at for at in (rest.find(char) for char in "/?#") if at >= 0]
    end = min(ends, default=len(rest))
    userinfo, at_sign, host = rest[:end].rpartition("@")
    if not at_sign or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}{rest[end:]}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` (a traceback, a log) with every URL's password masked and every one of
    ``secrets`` (an API key, a token) replaced by ``***``."""
    text = _URL.sub(lambda found: mask_url(found.group(0)), text)
    for secret in secrets:
        if secret and len(secret) >= 4:  # shorter "secrets" would mask ordinary words
            text = text.replace(secret, MASK)
    return text
