"""A metric as an operator's Prometheus sees it: scraped from every replica of a service
and summed over them."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cxmesh_server.stack.mesh import Mesh


def metric(mesh: Mesh, service: str, name: str, **labels: str) -> float:
    """The sum over `service`'s replicas of the sample `name` with exactly `labels`."""
    total = 0.0
    for instance in (i for i in mesh.instances if i.name == service):
        text = httpx.get(f"http://127.0.0.1:{instance.metrics_port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            total += sum(
                sample.value
                for sample in family.samples
                if sample.name == name and sample.labels == labels
            )
    return total
