"""Every answer the world's services give during the session, by operation: what the declared-statuses test checks
against each operation's OpenAPI document."""

import re
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from fastapi.routing import APIRoute, iter_route_contexts


@dataclass
class StatusLog:
    """(service, method, path template) -> {status: the content types it came with}."""

    seen: dict[tuple[str, str, str], dict[int, set[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    _templates: dict[str, list[tuple[re.Pattern, str]]] = field(default_factory=dict)

    def attach(self, service: str, app, client: httpx.AsyncClient) -> None:
        """Records every response ``client`` gets from ``app``."""
        self._templates[service] = [
            (re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(c.path)) + "$"), c.path)
            for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]

        async def record(response: httpx.Response) -> None:
            template = self.template_of(service, response.request.url.path)
            if template is not None:
                content_type = response.headers.get("content-type", "").split(";")[0]
                self.seen[service, response.request.method, template][response.status_code].add(content_type)

        client.event_hooks["response"].append(record)

    def template_of(self, service: str, path: str) -> str | None:
        # Literal segments beat parameters (e.g. /cases/search before /cases/{case_id}).
        matches = [template for regex, template in self._templates[service] if regex.match(path)]
        return min(matches, key=lambda t: t.count("{"), default=None)
