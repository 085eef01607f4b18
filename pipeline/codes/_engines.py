"""Stage 1, who computes the partitions: this process (``local``) or a Ray actor pool (``ray``).

The only module that knows an engine. Either way each worker is built from the same
:class:`~pipeline.codes._worker.WorkSpec` and writes the same part files, so the code set does not
depend on the engine or on the number of workers.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import threading
import time
from typing import Callable

from tqdm import tqdm

from pipeline.codes._plan import Partition
from pipeline.codes._worker import PartitionResult, Worker, WorkSpec
from pipeline.errors import ParameterError, UserError

logger = logging.getLogger(__name__)

# Deferred on purpose: Ray is imported inside the functions that use it, so that commands and workers
# that never need it start without loading it.


@dataclasses.dataclass
class ComputeStats:
    images: int
    seconds: float                 # from the first batch to the last part written (models already built)
    results: list[PartitionResult]


def compute(spec: WorkSpec, partitions: list[Partition], *, progress: bool = True,
            on_ready: Callable[[str], None] = lambda d: None) -> ComputeStats:
    """Compute ``partitions`` on the model workers of the spec's engine (its options checked by
    :meth:`ComputeOptions.check`). ``on_ready`` is told where the forward pass runs once the
    models are built, before the clock starts."""
    images = sum(len(p) for p in partitions)
    bar = _Progress(images, progress, f"codes {spec.identity.backbone}")

    def ready(description):  # the bar starts once the models are built
        on_ready(description)
        bar.start()

    try:
        run = _local if spec.compute.engine == "local" else _ray
        return run(spec, partitions, images, bar=bar, on_ready=ready)
    finally:
        bar.close()


class _Progress:
    """A progress bar over images, shown from :meth:`start` on, with the unreadable ones counted."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.total, self.enabled, self.desc, self.bar, self.failed = total, enabled, desc, None, 0

    def start(self):
        self.bar = tqdm(total=self.total, unit="img", disable=not self.enabled, smoothing=0.1, desc=self.desc)

    def update(self, n: int):
        if self.bar is not None:
            self.bar.update(n)

    def done(self, result: PartitionResult):
        self.failed += len(result.failed)
        if self.failed and self.bar is not None:
            self.bar.set_postfix(unreadable=self.failed)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _local(spec, partitions, images, *, bar, on_ready) -> ComputeStats:
    pool = [Worker(spec, images) for _ in range(min(spec.compute.workers, len(partitions)))]
    on_ready(pool[0].description + (f", {len(pool)} workers" if len(pool) > 1 else ""))
    results: list[PartitionResult] = []
    t0 = time.perf_counter()
    if len(pool) == 1:  # one stream of batches over every partition: no pause between them
        for r in pool[0].run(partitions, on_batch=bar.update):
            results.append(r)
            bar.done(r)
        return ComputeStats(sum(r.images for r in results), time.perf_counter() - t0, results)

    todo: queue.Queue = queue.Queue()
    for p in partitions:
        todo.put(p)
    stop, lock, errors = threading.Event(), threading.Lock(), []

    def tick(n):
        if stop.is_set():
            raise KeyboardInterrupt  # unwinds this worker's writers
        with lock:
            bar.update(n)

    def serve(worker):
        try:
            while not stop.is_set():
                try:
                    p = todo.get_nowait()
                except queue.Empty:
                    return
                for r in worker.run([p], on_batch=tick):
                    with lock:
                        results.append(r)
                        bar.done(r)
        except KeyboardInterrupt:
            pass
        except BaseException as exc:  # the first error ends the others, then is raised in the driver
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in pool]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]
    return ComputeStats(sum(r.images for r in results), time.perf_counter() - t0, results)


class _RayWorker:
    """A Ray actor holding one :class:`Worker` (its model stays loaded between partitions)."""

    def __init__(self, spec: WorkSpec, images: int):
        self.worker = Worker(spec, images)

    def description(self) -> str:
        return self.worker.description

    def run(self, partition: Partition) -> PartitionResult:
        return next(iter(self.worker.run([partition])))


def _ray(spec, partitions, images, *, bar, on_ready) -> ComputeStats:
    workers, ray_address = spec.compute.workers, spec.compute.ray_address
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ParameterError("engine", "ray needs Ray: pip install 'cnn-codes[ray]'") from None
    started = not ray.is_initialized()
    if started:
        on_term = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if threading.current_thread() is threading.main_thread() and callable(on_term):
                signal.signal(signal.SIGTERM, on_term)  # Ray's own handler dumps a stack trace and exits 1
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"could not start or join Ray (--ray-address {ray_address or 'none: a local instance'})"
                            f": {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    actors = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus and workers > gpus:
            logger.info(f"note: {workers} workers asked for, {gpus} GPU(s) in the cluster: one worker per GPU")
            workers = gpus
        options = {"num_gpus": 1} if gpus else {"num_cpus": min(1.0, resources.get("CPU", 1) / workers)}
        actor = ray.remote(**options)(_RayWorker)
        actors = [actor.remote(spec, images) for _ in range(min(workers, len(partitions)))]
        try:
            descriptions = ray.get([a.description.remote() for a in actors])
            on_ready(f"{descriptions[0]} in each of {len(actors)} Ray worker(s)")
            results: list[PartitionResult] = []
            t0 = time.perf_counter()
            for r in ActorPool(actors).map_unordered(lambda a, p: a.run.remote(p), partitions):
                results.append(r)
                bar.update(r.images)
                bar.done(r)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (UserError, OSError)):
                raise cause from None
            raise
        return ComputeStats(sum(r.images for r in results), time.perf_counter() - t0, results)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
