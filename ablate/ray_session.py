"""Connecting to Ray: a cluster's address, or a fresh local Ray sized for the work; and where
Ray's own output goes (``RayOutput``: a log file instead of the console)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

# Ray's loggers that print on their own: "ray" (Ray's handler) and "ray.data" (Ray Data
# installs its own console handler next to its file in Ray's session folder).
RAY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "ray.air")
# Set in the driver (and so in the local Ray it starts) while Ray's output goes to a file:
# Tune's legacy output engine prints nothing at ``verbose=0`` (its new one prints an experiment
# box, "Number of trials 9223372036854775807", and a TensorBoard hint whatever the verbosity);
# the workers' lines copied into the file carry no colour codes.
QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "RAY_COLOR_PREFIX": "0"}

_OUTPUT: RayOutput | None = None


class RayOutput:
    """Ray's own output in this driver process, sent to ``path`` instead of the console.

    Python logging: the console handlers of Ray's loggers (``RAY_LOGGERS``) are replaced by one
    file handler, so Ray, Ray Tune, Ray Train and Ray Data log there (Ray Data keeps its own
    file in Ray's session folder too). Worker output: what Ray copies to the driver's console
    from every worker process (trials, Ray Train's controller and workers, Ray Data's
    coordinators) and the raylet's messages (worker start-up warnings, a worker that died) go
    to the same file, through Ray's one printing function for them
    (``ray._private.worker.print_worker_logs``); if a later Ray lacks it, ``start_ray`` asks
    Ray not to copy worker output at all (``log_to_driver=False``), and the workers' logs stay
    in Ray's session folder. Tune: ``QUIET_ENV``. ``start_ray`` logs Ray at INFO into the file
    (WARNING on the console otherwise).

    Made before ``ray.init``; ``close`` puts everything back, after shutting down the Ray that
    ``start_ray`` started (or connected to) meanwhile.
    """

    def __init__(self, path: str | Path) -> None:
        import ray.data  # noqa: F401  (each configures its loggers when first imported)
        import ray.train  # noqa: F401
        import ray.tune  # noqa: F401

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setLevel(logging.INFO)  # Ray Data's DEBUG stays in its own file
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- "
                              "%(message)s")
        )
        self._env = {name: os.environ.get(name) for name in QUIET_ENV}
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        self._removed: list[tuple[logging.Logger, logging.Handler]] = []
        self._levels: dict[str, int] = {}
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if _is_console(handler):
                    logger.removeHandler(handler)
                    self._removed.append((logger, handler))
            if name == "ray" or logger.handlers or not logger.propagate:
                logger.addHandler(self.handler)
            # INFO reaches the file whatever level an earlier ``ray.init`` left the logger at
            # (the console handlers are gone, so nothing more reaches the console).
            self._levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        self._print_worker_logs = _route_worker_output(self.handler)
        self.started_ray = False  # set by start_ray
        global _OUTPUT
        _OUTPUT = self

    @property
    def worker_output_copied(self) -> bool:
        """Whether the workers' output reaches the file (else it stays in Ray's session logs)."""
        return self._print_worker_logs is not None

    def close(self) -> None:
        """Put Ray's console output back; the Ray ``start_ray`` started meanwhile is shut
        down (disconnected from a cluster) first, so its last words (workers exiting, a late
        raylet warning) land in the file too."""
        import ray

        global _OUTPUT
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
        self.started_ray = False
        for name in RAY_LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._levels.clear()
        for logger, handler in self._removed:
            logger.addHandler(handler)
        self._removed.clear()
        if self._print_worker_logs is not None:
            from ray._private import worker

            worker.print_worker_logs = self._print_worker_logs
            self._print_worker_logs = None
        for name, value in self._env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.handler.close()
        if _OUTPUT is self:
            _OUTPUT = None


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to a stream, not a file: Ray's own write to stderr."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


def _route_worker_output(handler: logging.FileHandler) -> Any:
    """Make Ray print the workers' and raylet's lines into ``handler``'s file; returns Ray's
    own printing function (to put back), or None where this Ray has none."""
    try:
        from ray._private import worker
    except ImportError:  # pragma: no cover - a Ray without it
        return None
    original = getattr(worker, "print_worker_logs", None)
    if not callable(original):
        return None

    def into_file(data: dict, print_file: Any, ignore_prefix: bool = False) -> None:
        handler.acquire()
        try:
            original(data, handler.stream, ignore_prefix)
            handler.stream.flush()
        finally:
            handler.release()

    worker.print_worker_logs = into_file
    return original


def ray_output() -> RayOutput | None:
    """Where Ray's output goes in this process: a ``RayOutput``, or None for the console."""
    return _OUTPUT


def start_ray(address: str | None, cpus: int) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, set inside `ray job submit`), or start local
    Ray advertising at least ``cpus`` CPUs. Ray logs at WARNING on the console, or at INFO
    into the file of a ``RayOutput`` made before."""
    import ray

    if ray.is_initialized():
        return
    output = ray_output()
    options: dict[str, Any] = {"logging_level": "INFO" if output else "WARNING"}
    if output is not None and not output.worker_output_copied:
        options["log_to_driver"] = False
    address = address or os.environ.get("RAY_ADDRESS")
    if output is not None:
        output.started_ray = True
    if address:
        ray.init(address=address, **options)
        return
    ray.init(
        # "local" always starts a fresh local Ray, even if an earlier `ray start` on this
        # machine left its address behind (ray.init would otherwise try to join that).
        address="local",
        num_cpus=max(os.cpu_count() or 1, cpus),
        include_dashboard=False,
        **options,
    )
