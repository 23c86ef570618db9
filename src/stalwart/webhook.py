"""Posting alerts to an HTTP webhook (standard library only: no extra dependency)."""

from __future__ import annotations

import json
from typing import Any


def post_json(url: str, payload: dict[str, Any], *, timeout: float = 10.0) -> None:
    """POST ``payload`` as JSON; raises on a network error or a non-2xx answer."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"alert webhook must be an http(s) URL, got {url!r}")
    import urllib.request  # lazily: it pulls in http.client and ssl (~16 ms at import)

    request = urllib.request.Request(
        url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "stalwart-alert"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status >= 300:
            raise RuntimeError(f"alert webhook answered HTTP {response.status}")
