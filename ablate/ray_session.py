"""Connecting to Ray: a cluster's address, or a fresh local Ray sized for the work."""

from __future__ import annotations

import os


def start_ray(address: str | None, cpus: int) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, set inside `ray job submit`), or start local
    Ray advertising at least ``cpus`` CPUs."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return
    ray.init(
        # "local" always starts a fresh local Ray, even if an earlier `ray start` on this
        # machine left its address behind (ray.init would otherwise try to join that).
        address="local",
        num_cpus=max(os.cpu_count() or 1, cpus),
        logging_level="WARNING",
        include_dashboard=False,
    )
