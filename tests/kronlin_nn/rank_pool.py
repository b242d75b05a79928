"""A pool of processes in one gloo process group that runs the distributed tests' jobs.

Starting a process costs seconds (it imports torch), so the tests share one pool of
:data:`WORLD` processes, started on first use through a ``forkserver`` that has imported torch
and kronlin_nn once. Each job runs on the first ``ranks`` processes, in a group of its own
(``torch.distributed.new_group``; the whole world for ``ranks = WORLD``). A job that fails on
one rank leaves the others waiting in a collective until gloo's timeout: the pool is then
closed and the next job starts a new one.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

WORLD = 4
TIMEOUT = 60  # seconds: gloo's collectives, and the wait for a job's results


class RankPool:
    """``world`` processes, ranks of one gloo process group, waiting for jobs."""

    def __init__(self, world: int = WORLD):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "kronlin_nn"])
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.world = world
        self._inboxes = [ctx.Queue() for _ in range(world)]
        self._results = ctx.Queue()
        self._processes = [ctx.Process(target=_serve, daemon=True,
                                       args=(rank, world, port, self._inboxes[rank], self._results))
                           for rank in range(world)]
        for p in self._processes:
            p.start()
        self.broken = False

    def run(self, job: Callable[..., Any], *args: Any, ranks: int) -> list[Any]:
        """``job(group, *args)`` on ranks ``0 … ranks-1``; their return values in rank order.

        Raises:
            RuntimeError: the job raised on some rank (with its traceback), or timed out.

        """
        for inbox in self._inboxes:
            inbox.put((job, args, ranks))
        results, errors = {}, []
        try:
            for _ in range(self.world):
                rank, ok, value = self._results.get(timeout=2 * TIMEOUT)
                if ok:
                    results[rank] = value
                else:
                    errors.append(f"rank {rank}:\n{value}")
        except queue.Empty:
            errors.append(f"no result within {2 * TIMEOUT} s")
        if errors:
            self.broken = True
            raise RuntimeError("\n".join(errors))
        return [results[r] for r in range(ranks)]

    def close(self) -> None:
        """Stop the processes."""
        for inbox in self._inboxes:
            inbox.put(None)
        for p in self._processes:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


def _serve(rank: int, world: int, port: int, inbox, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT))
    groups: dict[int, dist.ProcessGroup] = {}
    while (task := inbox.get()) is not None:
        job, args, ranks = task
        try:
            if ranks not in groups:  # every rank takes part in creating every group
                groups[ranks] = (dist.group.WORLD if ranks == world
                                 else dist.new_group(list(range(ranks))))
            results.put((rank, True, job(groups[ranks], *args) if rank < ranks else None))
        except BaseException:  # noqa: BLE001 - the traceback goes to the test
            results.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()
