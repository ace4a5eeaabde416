"""What every transport reads from the environment once: the CA bundle and the proxy.

The blocking client on ``requests`` reads ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``
and the ``*_PROXY`` variables itself; the other transports (aiohttp, ``http.client``)
take the same settings from here, so that every client trusts the same authorities
and goes through the same proxy whichever library carries its requests.
"""

from __future__ import annotations

import logging
import os
import ssl
from urllib.parse import urlsplit

import certifi
import requests

from .config import TaskManagerConfig
from .exceptions import TaskManagerConfigError
from .redact import mask_url

logger = logging.getLogger("taskmanager.client")


def warn_if_unverified(config: TaskManagerConfig) -> None:
    """Said once, when a client is built, by whichever library carries its requests."""
    if not config.verify_tls:
        logger.warning("TLS certificate verification is OFF for %s", mask_url(config.api_url))


def env_proxy(api_url: str) -> str | None:
    """The proxy ``requests`` would use for ``api_url`` (``HTTPS_PROXY``, ``NO_PROXY``...)."""
    proxies = requests.utils.get_environ_proxies(api_url)
    return proxies.get(urlsplit(api_url).scheme) or proxies.get("all")


def ssl_setting(config: TaskManagerConfig) -> ssl.SSLContext | bool:
    """Verification as the blocking client does it: off when configured off, else the
    CA bundle ``requests`` would use (``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, a file
    or a folder, else certifi's), so all clients trust the same authorities."""
    if not config.verify_tls:
        return False
    bundle = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    )
    try:
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        raise TaskManagerConfigError(f"CA bundle {bundle!r} cannot be read: {exc}") from None
