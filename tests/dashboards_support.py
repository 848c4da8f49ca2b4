"""What the live dashboard tests share: a Prometheus that scraped a served app, and the
check that every panel query of a dashboard returns data from it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dashboards import live

#: ``$__rate_interval``: longer than the whole run, so every rate() sees all of it.
WINDOW = "30s"


@dataclass
class Scraped:
    """A running Prometheus and the metrics endpoint it scraped."""

    prometheus: live.Prometheus
    metrics_target: str

    def variables(self, route: str | None) -> dict[str, str]:
        """The dashboard variables for ``route`` (None: every job, instance and route)."""
        picked = {
            "job": live.JOB,
            "instance": self.metrics_target.replace(".", "\\\\."),
            "route": route or "",
        }
        everything = {"job": ".*", "instance": ".*", "route": ".*"}
        chosen = picked if route is not None else everything
        return {**chosen, "__rate_interval": WINDOW, "__interval": "1s", "__range": WINDOW}

    def values(self, expr: str, variables: dict[str, str]) -> list[float]:
        result = self.prometheus.query(live.substitute(expr, variables))
        return [float(sample["value"][1]) for sample in result]

    def label_values(self, expr: str, label: str) -> set[str]:
        result = self.prometheus.query(live.substitute(expr, self.variables(None)))
        return {sample["metric"].get(label, "") for sample in result}


def check_every_query(
    scraped: Scraped, dashboard: str, route: str, leave_out: Sequence[str] = ()
) -> int:
    """Every panel query of ``dashboard`` (but those reading a series named in
    ``leave_out``) returns a finite value, for all routes and for ``route``; returns how
    many queries were checked."""
    board = live.load_dashboards()[dashboard]
    queries = [
        query
        for query in live.panel_queries(board)
        if not any(series in query.expr for series in leave_out)
    ]
    empty = []
    for variables in (scraped.variables(None), scraped.variables(route)):
        for query in queries:
            values = scraped.values(query.expr, variables)
            if not any(math.isfinite(value) for value in values):
                empty.append(f"{query.title} {query.ref_id} ({variables['route']}): {values}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    return len(queries)
