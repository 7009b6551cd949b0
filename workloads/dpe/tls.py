"""The process's one TLS context for outbound HTTPS (the endpoints, the search API, downloads).

Building a verifying context loads the system's CA certificates, about 40 ms of CPU. An HTTP client
built with the default settings builds its own, so each role's chat client and each search client
would pay that on the event loop at its first call, stalling every sample in flight; a context is
safe to share between clients, threads and event loops, so one is built per process and reused.
"""

from __future__ import annotations

import functools
import ssl

import httpx2


@functools.cache
def verified_context() -> ssl.SSLContext:
    """The default verifying context (honouring SSL_CERT_FILE and SSL_CERT_DIR), built on first use."""
    return httpx2.create_ssl_context()
