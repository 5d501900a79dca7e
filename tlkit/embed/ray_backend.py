"""The Ray distributor: shards of the pending images on actors that hold the frozen backbone.

Plan: the pending images, sorted by path, are cut into ``--shards``
contiguous shards. One actor per worker slot (``max(1, --workers)`` CPUs and
``--gpus-per-worker`` GPUs each) builds the backbone once, from a state dict
shipped once through Ray's object store, then embeds shard after shard with
the same runner as the local backend, into part files named
``shard-KKKKK-NNNNNN.h5`` in ``<cache>.parts/``. The driver then publishes
them exactly like local parts (:func:`tlkit.embed.pipeline.embed`).

Failures: Ray restarts a killed actor (``max_restarts``) and re-runs its
shard on it (``max_task_retries``). Part files are atomic and written as the
shard goes, so the retry skips the rows its earlier attempt already wrote
and no row is written twice. A re-run of the command plans only images that
no part file holds, so finished shards are never redone.

Ray is imported when this module is: importing it is the first thing
``--backend ray`` does, and the local backend never imports it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tlkit.cache.parts import PARTS_MANIFEST, SHARD_PREFIX, part_files, scan_parts, shard_prefix
from tlkit.device import select_device
from tlkit.embed.job import EmbedJob
from tlkit.embed.mapper import FeatureMapper
from tlkit.embed.runner import ShardStats, WorkItem, run_shard
from tlkit.embed.writer import PartWriter
from tlkit.errors import CacheError, DataError, TlkitError
from tlkit.signals import reclaim as reclaim_signals


class RayBackendError(TlkitError):
    """Ray is not installed, or the cluster cannot run this embed."""


try:
    import ray
    from ray.exceptions import RayError, RayTaskError
except ImportError as exc:
    raise RayBackendError(
        f"--backend ray needs Ray, which is not installed ({exc}): pip install 'tlkit[ray]'"
    ) from None

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # restarts of a dead actor, and re-runs of the shard it was embedding
POLL_SECONDS = 0.2  # how often the driver refreshes the progress bar while shards run
LISTING_TIMEOUT = 90.0  # seconds to wait for the workers' part files to show in the driver's listing
ACTOR_NAME = "tlkit-embed"  # actors are named f"{ACTOR_NAME}-{run id}-{slot}" (see `ray list actors`)


def split_shards(items: list[WorkItem], n_shards: int) -> list[list[WorkItem]]:
    """Contiguous, near-equal slices of the items sorted by path: the same input gives the same shards.

    Members of tar shards go one tar file per Ray shard (each actor reads whole files; ``--shards`` does not apply).
    """
    ordered = sorted(items, key=lambda it: it.path)
    if ordered and hasattr(ordered[0].file, "shard"):
        by_tar: dict[str, list[WorkItem]] = {}
        for it in ordered:
            by_tar.setdefault(it.file.shard, []).append(it)
        return list(by_tar.values())
    n = max(1, min(n_shards, len(ordered)))
    bounds = [round(i * len(ordered) / n) for i in range(n + 1)]
    return [ordered[a:b] for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class ShardReport:
    """What one shard took, as its actor measured it."""

    shard: int
    images: int
    embedded: int
    skipped: int
    seconds: float  # wall time of the shard on its actor, model already loaded
    node: str
    pid: int
    restarted: bool  # True when this attempt ran on an actor Ray restarted after a failure
    parts: tuple[str, ...]  # names of the shard's part files


@dataclass
class RayStats(ShardStats):
    shards: list[ShardReport] = field(default_factory=list)


@ray.remote(num_cpus=0, max_restarts=MAX_RETRIES)
class ProgressBoard:
    """Rows done per shard, as the actors report them; the driver reads it for the progress bar."""

    def __init__(self):
        self.rows: dict[int, int] = {}

    def report(self, shard: int, rows: int) -> None:
        self.rows[shard] = rows

    def snapshot(self) -> dict[int, int]:
        return dict(self.rows)


# "status" is a second thread, so the driver (or an operator) can ask a busy actor what it is doing.
@ray.remote(max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES, concurrency_groups={"status": 1})
class ShardEmbedder:
    """One worker slot: the frozen backbone, built once, embedding shard after shard.

    The constructor takes no object references (Ray cannot always restart an
    actor whose constructor arguments live in the object store, ray-project/ray#53727):
    the weights come with each shard and are loaded on the first one, and the
    progress board is looked up by name.
    """

    def __init__(self, job: EmbedJob, board_name: str):
        self.job = job
        self.board_name = board_name
        self.board = None
        self.mapper: FeatureMapper | None = None
        self.shard: int | None = None
        self.rows = 0

    def _load(self, state: list) -> None:
        import torch

        # Ray reserves CPUs per actor; use exactly those for the convolutions.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.mapper = FeatureMapper(ray.get(state[0]), select_device(self.job.device), self.job.precision, self.job.calibration,
                                    self.job.backbone)
        try:
            self.board = ray.get_actor(self.board_name)
        except ValueError:  # the board is gone for good: the bar stalls, the embedding goes on
            self.board = None

    def embed_shard(self, k: int, items: list[WorkItem], state: list) -> ShardReport:
        """Embed shard ``k``; ``state`` is ``[ObjectRef of the state dict]`` (a list, so Ray passes the reference)."""
        if self.mapper is None:
            self._load(state)
        start = time.perf_counter()
        self._check_shared_filesystem(items)
        prefix = shard_prefix(k)
        # A retry after a crash finds the parts its earlier attempt finished: skip their rows.
        earlier = scan_parts(self.job.parts_dir, prefix)
        embedded, skipped = earlier.embedded, {path for path, _, _ in earlier.skipped}
        todo = [it for it in items if it.path not in embedded and it.path not in skipped]
        self.shard, self.rows = k, len(items) - len(todo)
        self._report()
        writer = PartWriter(self.job.parts_dir, self.job.class_names, prefix=prefix, rows_per_part=self.job.rows_per_part)
        stats = run_shard(
            todo, self.mapper, writer, self.job.spec, self.job.batch_size, self.job.workers,
            self.job.max_pixels, on_progress=self._advance, views=self.job.views,
        )
        names = {it.path for it in items}
        return ShardReport(
            shard=k,
            images=len(items),
            embedded=stats.embedded + len(embedded & names),
            skipped=stats.skipped + len(skipped & names),
            seconds=time.perf_counter() - start,
            node=socket.gethostname(),
            pid=os.getpid(),
            restarted=bool(ray.get_runtime_context().was_current_actor_reconstructed),
            parts=tuple(p.name for p in part_files(self.job.parts_dir, prefix)),
        )

    def _advance(self, n: int) -> None:
        self.rows += n
        self._report()

    def _report(self) -> None:
        if self.board is not None:
            self.board.report.remote(self.shard, self.rows)

    def _check_shared_filesystem(self, items: list[WorkItem]) -> None:
        """Fail loudly on a node that does not see the driver's folders, instead of skipping every image."""
        host = socket.gethostname()
        if not (self.job.parts_dir / PARTS_MANIFEST).is_file():
            raise CacheError(
                f"Ray node {host} cannot see {self.job.parts_dir / PARTS_MANIFEST}: the cache's folder must be on a "
                f"filesystem that every node mounts at the same path"
            )
        if items and not any(os.path.exists(getattr(it.file, "shard", it.file)) for it in items[:64]):
            raise DataError(
                f"Ray node {host} cannot see the images (e.g. {items[0].file}): the data folder must be on a "
                f"filesystem that every node mounts at the same path"
            )

    @ray.method(concurrency_group="status")
    def status(self) -> dict:
        return {"pid": os.getpid(), "node": socket.gethostname(), "shard": self.shard, "rows": self.rows}


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_reachable(address: str | None) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host or "localhost", int(port)), timeout=5).close()
    except OSError as exc:
        raise RayBackendError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is `ray start --head` running there?"
        ) from None


def _connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (default: the one this process joined, else Ray's default); True if joined here."""
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        # log_to_driver=False keeps the actors' own output off the terminal; their errors still come back.
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RayBackendError(f"cannot join the Ray cluster at {address or 'the default address'}: {_first_line(exc)}") from None
    return True


def _worker_slots(cpus: int, gpus: float) -> int:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs the cluster holds."""
    total = ray.cluster_resources()
    by_cpu = int(total.get("CPU", 0) // cpus)
    if gpus > 0:
        if total.get("GPU", 0) < gpus:
            raise RayBackendError(
                f"--gpus-per-worker {gpus:g}, but the Ray cluster has {total.get('GPU', 0):g} GPUs; "
                f"use --gpus-per-worker 0 to embed on CPUs"
            )
        by_cpu = min(by_cpu, int(total["GPU"] // gpus))
    if by_cpu == 0:
        raise RayBackendError(
            f"each Ray worker reserves max(1, --workers) = {cpus} CPUs, but the cluster has {total.get('CPU', 0):g}; "
            f"lower --workers"
        )
    return by_cpu


def _run_shards(
    actors: list, shards: list[list[WorkItem]], state: list, board, on_progress: Callable[[int], None]
) -> list[ShardReport]:
    """Keep every actor busy with the next shard; report rows as the board sees them."""
    todo = deque(range(len(shards)))
    running: dict = {}  # ObjectRef -> (actor, shard)
    reports: list[ShardReport] = []
    failed: list[tuple[int, str]] = []
    finished: dict[int, int] = {}
    shown = 0

    def submit(actor) -> None:
        k = todo.popleft()
        running[actor.embed_shard.remote(k, shards[k], state)] = (actor, k)

    for actor in actors:
        if todo:
            submit(actor)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
        for ref in ready:
            actor, k = running.pop(ref)
            try:
                report = ray.get(ref)
            except RayTaskError as exc:
                if isinstance(exc.cause, (TlkitError, OSError)):
                    raise exc.cause from None  # the user's problem: one line, as with the local backend
                raise
            except RayError as exc:  # e.g. the actor died more than MAX_RETRIES times: its slot is gone
                failed.append((k, _first_line(exc)))
                continue
            if report.restarted:
                log.warning("shard %d was redone on a restarted Ray worker after its first worker died", k)
            reports.append(report)
            finished[k] = len(shards[k])
            if todo:
                submit(actor)
        try:
            rows = ray.get(board.snapshot.remote(), timeout=10)
        except RayError:  # the bar may lag, but the run goes on: a restarted board hears from the next batch
            rows = {}
        done = sum(finished.get(k, min(rows.get(k, 0), len(shards[k]))) for k in range(len(shards)))
        if done > shown:  # a restarted shard re-counts from its finished parts: never move backwards
            on_progress(done - shown)
            shown = done
    failed += [(k, "not started: no live worker left") for k in todo]
    if failed:
        k, why = failed[0]
        raise RayBackendError(
            f"{len(failed)} of {len(shards)} shards failed after {MAX_RETRIES} retries (shard {k}: {why}); "
            f"finished shards are kept: run the same command again to embed the rest"
        )
    return sorted(reports, key=lambda r: r.shard)


def _wait_until_listed(parts_dir: Path, names: list[str], timeout: float = LISTING_TIMEOUT) -> None:
    """Return once the driver's listing of ``parts_dir`` shows every part the workers wrote.

    Publication lists the folder; an NFS client may serve a cached listing for up to a
    minute (acdirmax), which would publish a cache without the newest shards' rows.
    """
    deadline = time.monotonic() + timeout
    while True:
        missing = set(names) - {p.name for p in part_files(parts_dir, SHARD_PREFIX)}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise CacheError(
                f"the driver cannot see {len(missing)} part files the Ray workers wrote (e.g. {sorted(missing)[0]}): "
                f"{parts_dir} must be on a filesystem that every node mounts at the same path"
            )
        time.sleep(1.0)


def run_ray(job: EmbedJob, items: list[WorkItem], on_progress: Callable[[int], None]) -> RayStats:
    """Embed ``items`` into part files in ``job.parts_dir`` on a Ray cluster (see module docs)."""
    if not items:
        return RayStats()
    joined_here = _connect(job.ray.address)
    actors: list = []
    board = None
    try:
        # ray.init replaced our SIGTERM handler with one that exits at once: take it back, so that SIGTERM
        # unwinds like Ctrl-C through the `finally` below, which stops this job's actors.
        reclaim_signals()
        gpus = float(job.ray.gpus_per_worker)
        cpus = max(1, job.workers)
        slots = _worker_slots(cpus, gpus)
        # Actors start in Ray's own working folder, maybe on another node: give them absolute paths.
        absolute = [it if hasattr(it.file, "shard") else replace(it, file=os.path.abspath(it.file)) for it in items]
        shards = split_shards(absolute, job.ray.shards or 2 * slots)
        remote_job = replace(job, state_dict={}, parts_dir=Path(job.parts_dir).resolve())
        # Shipped once: every actor (and every restart) fetches it from the object store.
        state = [ray.put(job.state_dict)]
        run_id = uuid.uuid4().hex[:8]
        board_name = f"{ACTOR_NAME}-{run_id}-progress"
        board = ProgressBoard.options(name=board_name).remote()
        actors = [
            ShardEmbedder.options(name=f"{ACTOR_NAME}-{run_id}-{i}", num_cpus=cpus, num_gpus=gpus).remote(
                remote_job, board_name
            )
            for i in range(min(slots, len(shards)))
        ]
        reports = _run_shards(actors, shards, state, board, on_progress)
    finally:
        if joined_here:
            ray.shutdown()  # ends this job, and Ray stops its actors (quietly, unlike ray.kill of a busy one)
        else:  # the caller's Ray session goes on: stop ours
            for actor in actors:
                ray.kill(actor)
            if board is not None:
                ray.kill(board)
    _wait_until_listed(Path(job.parts_dir), [name for r in reports for name in r.parts])
    return RayStats(
        embedded=sum(r.embedded for r in reports), skipped=sum(r.skipped for r in reports), shards=reports
    )
