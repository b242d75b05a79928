r"""Data-parallel K-FAC on ``torch.distributed``: every collective call of the optimizer is here.

In an initialized process group (gloo on CPU, NCCL on CUDA; ``torchrun`` starts the processes),
each rank steps on its own *shard* of the batch (``opt.step(inputs, targets)``, or its own forward
and backward passes then ``opt.step()``, or ``opt.step(closure)``), and the iteration is defined
as the single-process iteration on the *union* of the shards (docs: "Distributed K-FAC"). The
optimizer stays generic: it asks a :class:`Replicas` for the few collectives that make the
union's quantities, and a single process gets the same calls as no-ops.

The union batch. Shards may differ in size. The union is ordered by a fixed rule
(:func:`union_order`): case ``i`` of a shard of ``m_r`` cases sits at ``(i + ½)/m_r``, ties by
rank, so equal shards interleave case by case, and the shards ``batch[r::W]`` of a batch (as
``DistributedSampler`` deals them) give back the batch in its own order. The sub-batches of
the algorithm are prefixes of that order: :math:`S_1` (the statistics, :math:`\lceil\tau_1 M\rceil`
cases of the union's :math:`M`) and :math:`S_2` (the quadratic model) are, on each rank, the
first cases of its shard, in proportion to its size (:class:`Shards`).

What is reduced, and when:

- the objective and the gradient: each rank's loss and gradient, weighted by its share of the
  union's reduction (:math:`m_r/M` for ``reduction="mean"``, with case weights its sum of what
  the mean divides by over the union's; 1 for ``"sum"``), summed in one all-reduce with the
  finiteness check of the statistics, every step; weight decay is added after the sum. The
  user's backward through a ``DistributedDataParallel`` model has averaged ``.grad`` already:
  that mean is the union's gradient (times :math:`W` for ``"sum"``) when the shares are equal,
  and is refused otherwise, never reduced twice;
- with case weights (class weights, ``ignore_index``, label smoothing), every rank's sums of
  them, one all-reduce of a table per step: the shares and the sub-batches' weights are the
  union's;
- the factor statistics: each rank keeps the moving average of *its share* of each batch's
  statistics (its :math:`S_1` cases' sums over the union's :math:`|S_1|`). The average is
  linear and every rank uses the same :math:`\epsilon_k`, so the sum of the ranks' averages
  *is* the average of the union's statistics, exactly, at any step: it is formed only when
  needed, at refresh steps, by a reduction to the rank that refreshes each unit. The paper's
  per-step EMA is kept without a per-step reduction (kfac-jax, too, reduces its estimator state
  only when it inverts it; with unequal shards, averaging the ranks' own averages would weight
  them wrongly);
- the quadratic model's Gram entries :math:`u_k^\top F u_l` (one all-reduce of ``K²`` numbers)
  and :math:`h(\theta+\delta)` for ρ (one number), so α, μ, λ and γ are the same everywhere;
- the first step's batch statistics (for the λ₀ search and the bounds of λ), once;
- the sampled targets are not communicated: every rank draws the union's :math:`S_1` sample from
  the optimizer's generator (same seed everywhere) and keeps its own cases' rows, so the
  sample of a case does not depend on the world size and the generators stay in lockstep.

The inverse work split. Each unit of the damped inverse (:mod:`kronlin_nn.units`: a curvature
block, or the block-tridiagonal chain) is refreshed, all its γ candidates, on one rank, chosen by
greedy longest-processing-time over the units' ``n³`` costs (:func:`lpt`). Then, as KAISA's
gradient-worker fraction ``f`` says (:class:`Assignment`), ranks form a grid of
``g = f·W`` rows and ``W/g`` columns: the refreshed inverse is broadcast in its owner's column,
whose ranks apply it, and each of them broadcasts the unit's part of the proposals along its
row. ``f = 1``: every rank holds every inverse, no per-step traffic beyond the gradient (the
default); ``f = 1/W``: each inverse stays on its owner, which broadcasts its units' proposals at
every step (the least memory).

Bytes. Collectives are bucketed (one flat tensor per collective and source or destination) and
symmetric matrices travel as their upper triangles. :class:`Traffic` counts the bytes by kind
(``"gradient"``, ``"factors"``, ``"inverses"``, ``"directions"``, ``"scalars"``, ``"setup"``,
``"checkpoint"``); the docs give the closed form of each.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "KINDS",
    "Assignment",
    "Replicas",
    "Shards",
    "Traffic",
    "join_torchrun",
    "lpt",
    "union_order",
    "union_positions",
]

KINDS = ("gradient", "factors", "inverses", "directions", "scalars", "setup", "checkpoint")

# Bytes each rank sends per payload byte under ring and tree algorithms, for a group of ``n``
# ranks (the "bus bandwidth" factors of nccl-tests).
_BUS = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "reduce": lambda n: 1.0,
    "broadcast": lambda n: 1.0,
    "all_gather_object": lambda n: (n - 1) / n,
}


def join_torchrun(device: str = "cpu") -> torch.device:
    """Join the process group that ``torchrun``'s environment describes; this rank's device.

    gloo for CPU, NCCL for CUDA with each rank on the GPU of its ``LOCAL_RANK``. Without
    ``torchrun`` (no ``WORLD_SIZE``, or 1) no group is made: a single process.

    Args:
        device: ``"cpu"`` or ``"cuda"``.

    """
    if device == "cuda":
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(where)
    else:
        where = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    return where


# -- the union batch --------------------------------------------------------------------------
def union_positions(sizes: Sequence[int], rank: int) -> np.ndarray:
    r"""Where each case of shard ``rank`` sits in the union's order (see :func:`union_order`).

    Case ``i`` of shard ``r`` has the key :math:`(2i+1)/(2m_r)`; the union is ordered by key,
    then rank. Its position is the number of cases of every shard before it, counted in exact
    integer arithmetic: :math:`O(W)` vector operations for the whole shard.

    Args:
        sizes: the shard sizes :math:`m_0, …, m_{W-1}`.
        rank: the shard.

    Returns:
        Increasing int64 positions, shape ``(m_rank,)``.

    """
    m_r = sizes[rank]
    i = np.arange(m_r, dtype=np.int64)
    positions = i.copy()  # the shard's own earlier cases
    for q, m_q in enumerate(sizes):
        if q == rank:
            continue
        X = (2 * i + 1) * m_q  # case j of shard q is before ⟺ (2j+1)·m_r < X (≤ X if q < rank)
        before = (X // m_r + 1) // 2 if q < rank else -(-X // m_r) // 2
        positions += np.minimum(before, m_q)
    return positions


def union_order(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """The union of the shards in order: ``(rank, index in its shard)`` for each case.

    Case ``i`` of a shard of ``m_r`` cases sits at ``(i + ½)/m_r``, ties broken by rank: equal
    shards interleave case by case, and the shards ``batch[r::W]`` of a batch of ``M`` cases
    give back the batch's own order. A single-process K-FAC step on the union in this order is
    what a distributed step computes.
    """
    order: list[tuple[int, int] | None] = [None] * sum(sizes)
    for rank in range(len(sizes)):
        for index, position in enumerate(union_positions(sizes, rank).tolist()):
            order[position] = (rank, index)
    return order  # type: ignore[return-value]


@dataclass(frozen=True)
class Shards:
    """One step's shard sizes and this rank's place in their union.

    Attributes:
        sizes: the cases of every rank's shard, in rank order.
        rank: this rank.

    """

    sizes: tuple[int, ...]
    rank: int

    @property
    def total(self) -> int:
        """``M``, the cases of the union."""
        return sum(self.sizes)

    @property
    def local(self) -> int:
        """The cases of this rank's shard."""
        return self.sizes[self.rank]

    @cached_property
    def _positions(self) -> list[np.ndarray]:
        return [union_positions(self.sizes, r) for r in range(len(self.sizes))]

    def count(self, n: int, name: str) -> int:
        """How many of the union's first ``n`` cases are this rank's (its first ones).

        Args:
            n: the size of the union's sub-batch (``1 ≤ n ≤ M``).
            name: the option that sets ``n``, named in the error.

        Raises:
            ValueError: some rank gets none of the ``n`` cases (its shard is too small).

        """
        counts = [int(np.searchsorted(p, n)) for p in self._positions]
        if min(counts) == 0:
            empty = counts.index(0)
            raise ValueError(
                f"{name}: rank {empty} gets none of the union's first {n} cases (shard sizes "
                f"{list(self.sizes)}); every rank needs a case of each sub-batch: give it more "
                f"cases or raise {name}"
            )
        return counts[self.rank]

    def positions(self, n: int) -> np.ndarray:
        """The union positions of this rank's cases among the union's first ``n``."""
        mine = self._positions[self.rank]
        return mine[: int(np.searchsorted(mine, n))]


# -- the assignment of units to ranks ---------------------------------------------------------
def lpt(costs: Sequence[float], bins: int) -> list[int]:
    r"""Greedy longest-processing-time: each job, costliest first, to the least-loaded bin.

    Graham (1969): the largest load is at most :math:`4/3 - 1/(3\,\text{bins})` times the
    optimum. Ties go to the lower job index and the lower bin, so every rank computes the same
    assignment.

    Args:
        costs: one non-negative cost per job.
        bins: the number of bins (ranks), at least 1.

    Returns:
        The bin of each job.

    """
    loads = [0.0] * bins
    owners = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        rank = min(range(bins), key=lambda r: (loads[r], r))
        owners[job] = rank
        loads[rank] += costs[job]
    return owners


@dataclass(frozen=True)
class Assignment:
    """Which rank refreshes each unit, and which ranks apply it.

    The ranks form a grid of ``workers`` rows and ``columns = size/workers`` columns, rank
    ``r`` at row ``r // columns``, column ``r % columns`` (KAISA's layout). A unit is refreshed
    by its owner and applied by every rank of the owner's column; each row holds one rank of
    every column, which shares its column's part of the proposals with the row.

    Attributes:
        owners: per unit, the rank that refreshes it (:func:`lpt`).
        size: the world size ``W``.
        workers: ranks that apply each unit (``f·W``).
        rank: this rank.

    """

    owners: tuple[int, ...]
    size: int
    workers: int
    rank: int

    @property
    def columns(self) -> int:
        """The number of columns, ``W / workers``."""
        return self.size // self.workers

    def column(self, rank: int) -> int:
        """The column of ``rank``."""
        return rank % self.columns

    def column_ranks(self) -> list[int]:
        """The ranks of this rank's column, in order."""
        column = self.column(self.rank)
        return [column + k * self.columns for k in range(self.workers)]

    def row_ranks(self) -> list[int]:
        """The ranks of this rank's row, in order (one per column)."""
        start = (self.rank // self.columns) * self.columns
        return list(range(start, start + self.columns))

    def applies(self, unit: int) -> bool:
        """Whether this rank holds unit ``unit``'s inverse and applies it."""
        return self.column(self.owners[unit]) == self.column(self.rank)


# -- bytes ------------------------------------------------------------------------------------
@dataclass
class Traffic:
    """Bytes moved by the optimizer's collectives, by kind.

    Attributes:
        step: the last step's payload bytes by kind: the size of the tensors this rank passed
            to collectives (the closed forms of the docs count these).
        wire: the last step's estimate of the bytes this rank sent: payload times the
            collective's bus factor for its group size (``2(n−1)/n`` for an all-reduce, 1 for a
            broadcast or a reduce).
        calls: the last step's number of collectives by kind.
        total: payload bytes by kind since the optimizer was built.

    """

    step: dict[str, int] = field(default_factory=dict)
    wire: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def begin_step(self) -> None:
        """Start counting a new step."""
        self.step, self.wire, self.calls = {}, {}, {}

    def record(self, kind: str, collective: str, nbytes: int, group_size: int) -> None:
        """Count one collective of ``nbytes`` payload on a group of ``group_size`` ranks."""
        self.step[kind] = self.step.get(kind, 0) + nbytes
        self.wire[kind] = self.wire.get(kind, 0.0) + nbytes * _BUS[collective](group_size)
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.total[kind] = self.total.get(kind, 0) + nbytes


# -- the collectives --------------------------------------------------------------------------
class Replicas:
    """The data-parallel replicas of one optimizer: its rank, its world size, its collectives.

    Built by :meth:`of`. With one process every method returns its input (no copy, no
    collective), so a single-process optimizer runs exactly the code it ran before.

    Args:
        group: the process group, or ``None`` for a single process.
        device: where the communicated tensors live (the model's device; NCCL needs CUDA).
        wrapper: the ``DistributedDataParallel`` wrapping the model, if any.

    Attributes:
        rank, size: this process's rank in the group and the group's size.
        wrapper: the ``DistributedDataParallel`` model, whose backward averages ``.grad`` in
            the user's own loop (``None``: not wrapped, or one process).
        traffic: the bytes moved (:class:`Traffic`).

    """

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device,
                 wrapper: DistributedDataParallel | None = None):
        self.group, self.device = group, device
        self.size = 1 if group is None else dist.get_world_size(group)
        self.rank = 0 if group is None else dist.get_rank(group)
        self.traffic = Traffic()
        self._grids: dict[int, tuple] = {}  # workers → (column group, row group)
        self._layouts: dict[int, tuple] = {}  # unit → (dtype, [(shape, symmetric)]) of its inverse
        # a DDP model's backward averages .grad; whether its last forward (since the last step)
        # prepared that reduction (None: no forward through it)
        self.wrapper = None if self.size == 1 else wrapper
        self._synced: bool | None = None
        if self.wrapper is not None:
            me = weakref.ref(self)
            self.wrapper.register_forward_pre_hook(lambda module, _args: _note_sync(me, module))

    @classmethod
    def of(cls, model: nn.Module,
           process_group: dist.ProcessGroup | None = None) -> tuple[nn.Module, Replicas]:
        """The network to train and its replicas.

        Args:
            model: the network, or a ``DistributedDataParallel`` wrapping it. The optimizer
                trains the wrapped module. For ``opt.step(inputs, targets)`` it reduces the
                gradient itself, weighted by the shards' shares (its backward pass is
                ``torch.autograd.grad``, which DDP's reducer does not see); the user's
                backward through the wrapper has averaged ``.grad`` (:meth:`averaged`).
            process_group: the data-parallel group; default: the DDP model's, else the
                default group if one is initialized, else a single process.

        """
        network = model.module if isinstance(model, DistributedDataParallel) else model
        if process_group is None and isinstance(model, DistributedDataParallel):
            process_group = model.process_group
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = dist.group.WORLD
        device = next(network.parameters()).device
        if process_group is not None and dist.get_world_size(process_group) == 1:
            process_group = None
        wrapper = model if isinstance(model, DistributedDataParallel) else None
        return network, cls(process_group, device, wrapper)

    # -- construction ------------------------------------------------------------------------
    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's (parameters at construction, as DDP does)."""
        if self.size == 1 or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        self._broadcast(flat, 0, self.group, "setup")
        with torch.no_grad():
            for t, part in zip(tensors, _split(flat, [t.shape for t in tensors]), strict=True):
                t.copy_(part)

    def agree(self, value: int) -> int:
        """Rank 0's ``value`` (an integer such as a seed), on every rank."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self._broadcast(t, 0, self.group, "setup")
        return int(t)

    def assignment(self, costs: Sequence[float], fraction: float) -> Assignment:
        """Assign units of refresh costs ``costs`` to ranks; ``fraction`` of the ranks apply each.

        Raises:
            ValueError: ``fraction·W`` is not a whole number of ranks that divides ``W``.

        """
        workers = max(1.0, fraction * self.size)
        if abs(workers - round(workers)) > 1e-9 or self.size % round(workers):
            valid = [f"{d}/{self.size}" for d in range(1, self.size + 1) if self.size % d == 0]
            raise ValueError(
                f"grad_worker_fraction: expected a fraction f with f·W a divisor of the world size "
                f"W = {self.size} ({', '.join(valid)}), got {fraction}"
            )
        workers = round(workers)
        self._layouts = {}
        if workers not in self._grids:
            self._grids[workers] = self._grid(workers)
        return Assignment(tuple(lpt(costs, self.size)), self.size, workers, self.rank)

    def _grid(self, workers: int) -> tuple:
        """The column and row groups of this rank (``None`` where no broadcast is needed)."""
        if workers in (1, self.size):  # a column or a row is the whole group, the other one rank
            return (self.group if workers > 1 else None, self.group if workers < self.size else None)
        columns = self.size // workers
        found = [None, None]
        layouts = ([[c + k * columns for k in range(workers)] for c in range(columns)],
                   [list(range(r * columns, (r + 1) * columns)) for r in range(workers)])
        for which, rank_lists in enumerate(layouts):
            for ranks in rank_lists:  # every rank creates every group, in the same order
                group = dist.new_group([dist.get_global_rank(self.group, r) for r in ranks])
                if self.rank in ranks:
                    found[which] = group
        return tuple(found)

    # -- every step --------------------------------------------------------------------------
    def shards(self, m: int) -> Shards:
        """Every rank's shard size (one all-reduce of ``W`` integers); a step's first call.

        It starts the step's count of :attr:`traffic`.

        Raises:
            ValueError: a rank has an empty shard.

        """
        self.traffic.begin_step()
        if self.size == 1:
            return Shards((m,), 0)
        sizes = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        sizes[self.rank] = m
        self._all_reduce(sizes, "scalars")
        shards = Shards(tuple(sizes.tolist()), self.rank)
        if min(shards.sizes) == 0:
            raise ValueError(f"inputs: expected cases on every rank, got shard sizes "
                             f"{list(shards.sizes)}")
        return shards

    def sum_shares(self, tensors: Sequence[Tensor], weight: float, kind: str,
                   unweighted: Sequence[Tensor] = ()) -> list[Tensor]:
        r""":math:`\sum_r w_r t_r` over the ranks of each tensor, ``w`` this rank's ``weight``.

        One all-reduce of all the tensors, and of the ``unweighted`` ones (summed as they are,
        returned after the others); in one process, the tensors themselves.
        """
        if self.size == 1:
            return [*tensors, *unweighted]
        flat = torch.cat([t.detach().reshape(-1) for t in [*tensors, *unweighted]])
        if weight != 1.0:
            flat[: sum(t.numel() for t in tensors)].mul_(weight)
        self._all_reduce(flat, kind)
        return _split(flat, [t.shape for t in [*tensors, *unweighted]])

    def averaged(self, shares: Sequence[float]) -> bool:
        """Whether the user's backward averaged ``.grad`` over the ranks (a DDP model's did).

        Args:
            shares: every rank's share of the union batch's loss: DDP's mean weighs the ranks
                equally, which is the union's gradient only when these are equal.

        Raises:
            ValueError: the model is wrapped in ``DistributedDataParallel`` but the passes since
                the last step did not run through it, the last one ran under ``no_sync()``, or
                the ranks' shares differ.

        """
        if self.wrapper is None:
            return False
        how = ("call the DistributedDataParallel model in your loop, or give KFAC the unwrapped "
               "model (K-FAC then reduces the gradient itself, weighted by the ranks' shares)")
        if self._synced is None:
            raise ValueError(f"opt.step(): the model is wrapped in DistributedDataParallel, but "
                             f"the forward passes since the last step did not run through the "
                             f"wrapper, so .grad is not averaged over the ranks: {how}")
        if not self._synced:
            raise ValueError("opt.step(): the last forward pass through the "
                             "DistributedDataParallel model ran under no_sync(), so .grad is not "
                             "averaged over the ranks: run the last micro-batch outside no_sync()")
        if len(set(shares)) > 1:
            raise ValueError(
                f"opt.step(): DistributedDataParallel averaged .grad over the ranks with equal "
                f"weights, but the ranks' shares of the union batch's loss differ "
                f"({[round(s, 6) for s in shares]}: unequal shard sizes, or case weights of "
                f"another sum); give every rank an equal share, or {how}"
            )
        return True

    def forget_passes(self) -> None:
        """A step consumed the user's passes: the wrapper's next forward pass starts anew."""
        self._synced = None

    def all_ok(self, ok: Tensor) -> Tensor:
        """Elementwise: whether ``ok`` holds on every rank (booleans)."""
        if self.size == 1:
            return ok
        flags = ok.to(torch.int32)
        self._all_reduce(flags, "scalars", dist.ReduceOp.MIN)
        return flags.bool()

    def sum_statistics(self, tensors: Sequence[Tensor], symmetric: Sequence[bool],
                       kind: str = "factors") -> list[Tensor]:
        """The sum over ranks of statistics (new tensors; one all-reduce of upper triangles)."""
        if self.size == 1 or not tensors:
            return list(tensors)
        flat = _pack(tensors, symmetric)
        self._all_reduce(flat, kind)
        return _unpack(flat, [(t.shape, s) for t, s in zip(tensors, symmetric, strict=True)])

    def reduce_statistics(self, stats: Sequence[Sequence[Tensor]],
                          symmetric: Sequence[Sequence[bool]],
                          assignment: Assignment) -> list[list[Tensor] | None]:
        """Each unit's statistics summed over the ranks, on its owner (``None`` elsewhere).

        One reduce per owner of the upper triangles of all its units' statistics.
        """
        if self.size == 1:
            return [list(s) for s in stats]
        out: list[list[Tensor] | None] = [None] * len(stats)
        for owner in range(self.size):
            units = [u for u, o in enumerate(assignment.owners) if o == owner]
            if not units:
                continue
            tensors = [t for u in units for t in stats[u]]
            flags = [s for u in units for s in symmetric[u]]
            flat = _pack(tensors, flags)
            self._reduce(flat, owner)
            if owner == self.rank:
                parts = iter(_unpack(flat, [(t.shape, s) for t, s in zip(tensors, flags,
                                                                         strict=True)]))
                for u in units:
                    out[u] = [next(parts) for _ in stats[u]]
        return out

    def share_inverses(self, ops: list[list], units: Sequence, assignment: Assignment) -> list[list]:
        """Broadcast each unit's inverses (``ops[j][u]``, candidate ``j``) in its owner's column.

        On return every rank that applies a unit holds the same inverses, rebuilt from the
        tensors that were broadcast (on the owner too; a symmetric matrix is rebuilt from its
        upper triangle). In one process, ``ops`` itself.
        """
        if self.size == 1:
            return ops
        self._learn_layouts(ops[0], units, assignment)
        group = self._grids[assignment.workers][0]
        members = assignment.column_ranks() if group is not None else [self.rank]
        for index, src in enumerate(members):
            owned = [u for u, o in enumerate(assignment.owners) if o == src]
            if not owned:
                continue
            if group is None:  # the owner alone applies it: the same tensors a column would get
                for row in ops:
                    for u in owned:
                        row[u] = units[u].operator(_unpack(
                            _pack(units[u].tensors(row[u]), [s for _, s in self._layouts[u][1]]),
                            self._layouts[u][1]))
            else:
                self._move_inverses(ops, units, owned, src, index, group, "inverses")
        return ops

    def share_directions(self, local: list[Tensor | None], sizes: Sequence[int],
                         assignment: Assignment, like: Tensor) -> Tensor:
        """The proposals ``(c, P)`` from each unit's part ``local[u]`` (``(c, sizes[u])``).

        ``local[u]`` is given on the ranks that apply unit ``u`` (``None`` elsewhere); each rank
        of a row broadcasts its column's parts along the row (one broadcast per column). Ranks
        that apply every unit just concatenate. ``like`` (``(c, …)``) gives ``c``, the dtype and
        the device.
        """
        group = self._grids[assignment.workers][1] if self.size > 1 else None
        if group is not None:
            for column, src in enumerate(assignment.row_ranks()):
                mine = [u for u, o in enumerate(assignment.owners) if assignment.column(o) == column]
                if not mine:
                    continue
                if src == self.rank:
                    flat = torch.cat([local[u] for u in mine], dim=1)
                else:
                    flat = like.new_empty(like.shape[0], sum(sizes[u] for u in mine))
                self._broadcast(flat, column, group, "directions")
                for u, part in zip(mine, flat.split([sizes[u] for u in mine], dim=1), strict=True):
                    local[u] = part
        return torch.cat(local, dim=1)

    # -- checkpoints -------------------------------------------------------------------------
    def gather_inverses(self, inverse: Sequence, units: Sequence,
                        assignment: Assignment) -> list[list[Tensor]]:
        """Every unit's inverse tensors on every rank (``inverse[u]`` where this rank applies ``u``)."""
        row = list(inverse)
        if self.size > 1 and assignment.workers < self.size:
            self._learn_layouts(row, units, assignment)
            for src in range(self.size):
                owned = [u for u, o in enumerate(assignment.owners) if o == src]
                if owned:
                    self._move_inverses([row], units, owned, src, src, self.group, "checkpoint")
        return [unit.tensors(op) for unit, op in zip(units, row, strict=True)]

    def keep_share_(self, tensors: Sequence[Tensor]) -> None:
        """Make loaded union statistics rank 0's share: zero them on the other ranks."""
        if self.rank > 0 and tensors:
            torch._foreach_zero_(list(tensors))

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks (e.g. a time budget's clock, so all stop together)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self._all_reduce(t, "scalars", dist.ReduceOp.MAX)
        return float(t)

    # -- internals ---------------------------------------------------------------------------
    def _move_inverses(self, ops: list[list], units: Sequence, owned: list[int], src: int,
                       index: int, group, kind: str) -> None:
        """Broadcast ``src``'s inverses of the ``owned`` units for every candidate of ``ops``."""
        layout = [entry for _ in ops for u in owned for entry in self._layouts[u][1]]
        if src == self.rank:
            tensors = [t for row in ops for u in owned for t in units[u].tensors(row[u])]
            flat = _pack(tensors, [s for _, s in layout])
        else:
            flat = torch.empty(sum(_packed_numel(shape, s) for shape, s in layout),
                               dtype=self._layouts[owned[0]][0], device=self.device)
        self._broadcast(flat, index, group, kind)
        parts = iter(_unpack(flat, layout))
        for row in ops:
            for u in owned:
                row[u] = units[u].operator([next(parts) for _ in self._layouts[u][1]])

    def _learn_layouts(self, row: Sequence, units: Sequence, assignment: Assignment) -> None:
        """Learn, once, every unit's inverse tensors' dtype, shapes and symmetry from its owner.

        ``row[u]`` is the inverse of each unit this rank owns; every rank calls this at the same
        step (the layouts are forgotten together, when units are reassigned).
        """
        if self._layouts:
            return
        mine = {}
        for u, owner in enumerate(assignment.owners):
            if owner == self.rank:
                tensors = units[u].tensors(row[u])
                mine[u] = (tensors[0].dtype, [(tuple(t.shape), s) for t, s in
                                              zip(tensors, units[u].symmetric(tensors), strict=True)])
        found: list = [None] * self.size
        dist.all_gather_object(found, mine, group=self.group)
        for layouts in found:
            self._layouts.update(layouts)
        self.traffic.record("setup", "all_gather_object", 0, self.size)

    def _all_reduce(self, t: Tensor, kind: str, op=dist.ReduceOp.SUM) -> None:
        dist.all_reduce(t, op=op, group=self.group)
        self.traffic.record(kind, "all_reduce", t.numel() * t.element_size(), self.size)

    def _broadcast(self, t: Tensor, index: int, group, kind: str) -> None:
        dist.broadcast(t, group=group, group_src=index)
        self.traffic.record(kind, "broadcast", t.numel() * t.element_size(),
                            dist.get_world_size(group))

    def _reduce(self, t: Tensor, dst: int) -> None:
        dist.reduce(t, group=self.group, group_dst=dst)
        self.traffic.record("factors", "reduce", t.numel() * t.element_size(), self.size)


def _note_sync(replicas: weakref.ref, wrapper: DistributedDataParallel) -> None:
    """The wrapper's forward pre-hook: whether this pass's backward will average ``.grad``."""
    found = replicas()
    if found is not None and torch.is_grad_enabled():  # a pass without gradients is no step's
        found._synced = bool(wrapper.require_backward_grad_sync)


# -- packing ----------------------------------------------------------------------------------
def _packed_numel(shape: Sequence[int], symmetric: bool) -> int:
    if symmetric and _square(shape):
        return shape[0] * (shape[0] + 1) // 2
    return math.prod(shape)


def _square(shape: Sequence[int]) -> bool:
    return len(shape) == 2 and shape[0] == shape[1]


def _pack(tensors: Sequence[Tensor], symmetric: Sequence[bool]) -> Tensor:
    """One flat tensor: symmetric square matrices by their upper triangle, the rest whole."""
    parts = []
    for t, s in zip(tensors, symmetric, strict=True):
        if s and _square(t.shape):
            rows, cols = _triu(t.shape[0], t.device)
            parts.append(t[rows, cols])
        else:
            parts.append(t.reshape(-1))
    return torch.cat(parts)


def _unpack(flat: Tensor, layouts: Sequence[tuple[Sequence[int], bool]]) -> list[Tensor]:
    """The tensors of :func:`_pack` again (symmetric matrices mirrored from their triangle)."""
    sizes = [_packed_numel(shape, s) for shape, s in layouts]
    out = []
    for part, (shape, s) in zip(flat.split(sizes), layouts, strict=True):
        if s and _square(shape):
            rows, cols = _triu(shape[0], flat.device)
            M = flat.new_empty(tuple(shape))
            M[rows, cols] = part
            M[cols, rows] = part
            out.append(M)
        else:
            out.append(part.reshape(tuple(shape)))
    return out


def _split(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    return [part.reshape(shape) for part, shape in
            zip(flat.split([math.prod(s) for s in shapes]), shapes, strict=True)]


_TRIU: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def _triu(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The row and column indices of the upper triangle of an ``n × n`` matrix (cached)."""
    key = (n, str(device))
    if key not in _TRIU:
        rows, cols = torch.triu_indices(n, n, device=device)
        _TRIU[key] = (rows, cols)
    return _TRIU[key]
