"""The page served at ``/``: a placeholder until the dashboard lands."""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_home"]

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>interest-stream</title>
<style>
 body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
        color: #1d1d1f; }}
 code, pre {{ background: #f3f3f5; padding: .1rem .3rem; border-radius: 4px; }}
 .ok {{ color: #0a7d28; }} .wait {{ color: #b25e00; }}
 table {{ border-collapse: collapse; }} td {{ padding: .2rem .8rem .2rem 0; }}
</style>
</head>
<body>
<h1>interest-stream <small>{version}</small></h1>
<p class="{cls}">{status}</p>
<table>
<tr><td>users in the index</td><td><b>{users}</b></td></tr>
<tr><td>items in the catalogue</td><td><b>{items}</b></td></tr>
<tr><td>model version</td><td><code>{model}</code></td></tr>
<tr><td>output topic</td><td><code>{topic}</code></td></tr>
</table>
<p>The live dashboard is coming. Meanwhile:</p>
<ul>
<li><a href="/docs">API documentation (OpenAPI)</a></li>
<li><a href="/metrics">Prometheus metrics</a></li>
<li><a href="/readyz">readiness</a> &middot; <a href="/healthz">liveness</a></li>
</ul>
<pre>{info}</pre>
</body>
</html>
"""


def render_home(
    *, version: str, ready: bool, info: dict[str, Any], model_version: str | None, topic: str
) -> str:
    """The placeholder HTML page (every value escaped)."""
    return _PAGE.format(
        version=html.escape(version),
        cls="ok" if ready else "wait",
        status="ready" if ready else html.escape(f"not ready: {info.get('status')}"),
        users=int(info.get("users", 0)),
        items=int(info.get("items", 0)),
        model=html.escape(model_version or "none loaded"),
        topic=html.escape(topic),
        info=html.escape(json.dumps(info, indent=2, default=str)),
    )
