"""The time-indexed integer program of `geo_optimal`: its variables, rows and objective.

Per job i and slot t of its life (arrival a_i .. H-1, H = the scenario's max_slots), site r and
site r' (see `docs/geo-optimum.md` for the argument that this is the engine, not a relaxation):

  P[t, r]      passes left of the blocks present at r at the start of slot t (t = a .. H)
  z[t, r]      passes trained at r in slot t
  x[t, r]      workers at r (0 .. max_workers_per_site, integer)
  u[t, r]      binary: 1 if the workers bind (z = p x), 0 if the data does (z = P - e out)
  y[t, r]      binary: the PS is at r
  n[t, r, r']  untouched blocks moved r -> r' (integer; 0 on the diagonal)
  v[t, r, r']  workers at r whose PS is at r' (= x[t, r] y[t, r'], linearised)
  c[t]         binary: the job is complete at the end of slot t

P, z and v need no integrality of their own: P[a] is fixed and integral, and z = min(p x, P -
e out) and v = x y follow from integral x, y, n, so HiGHS branches only on x, n, u, y and c.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix

from tapfinger.sim.geo.engine import LINK_TOLERANCE_MB
from tapfinger.sim.geo.model import GeoJob, GeoScenario


class Columns:
    """The program's variables, allocated in named blocks of any shape."""

    def __init__(self):
        self.size = 0
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []

    def new(self, shape: tuple[int, ...], lb: float | np.ndarray, ub: float | np.ndarray,
            integer: bool) -> np.ndarray:
        count = int(np.prod(shape))
        idx = np.arange(self.size, self.size + count).reshape(shape)
        self.size += count
        self.lb.append(np.broadcast_to(np.asarray(lb, dtype=float), shape).ravel())
        self.ub.append(np.broadcast_to(np.asarray(ub, dtype=float), shape).ravel())
        self.integer.append(np.full(count, 1 if integer else 0, dtype=np.uint8))
        return idx

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower bounds, upper bounds, integrality) of every column."""
        return (np.concatenate(self.lb).astype(float), np.concatenate(self.ub).astype(float),
                np.concatenate(self.integer).astype(np.uint8))


class Rows:
    """Sparse rows lb <= A x <= ub, added in vectorised groups."""

    def __init__(self):
        self.count = 0
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []

    def reserve(self, shape: tuple[int, ...], lb: float | np.ndarray, ub: float | np.ndarray) -> np.ndarray:
        count = int(np.prod(shape))
        ids = np.arange(self.count, self.count + count).reshape(shape)
        self.count += count
        self.lb.append(np.broadcast_to(np.asarray(lb, dtype=float), shape).ravel())
        self.ub.append(np.broadcast_to(np.asarray(ub, dtype=float), shape).ravel())
        return ids

    def entries(self, rows: np.ndarray, cols: np.ndarray, coef: float | np.ndarray) -> None:
        """Add coef * column to each row: `cols` has the rows' shape, or that shape plus one
        trailing axis of several columns per row."""
        cols, coef = np.asarray(cols), np.asarray(coef, dtype=float)
        if cols.ndim == rows.ndim:
            cols = cols[..., None]
            coef = coef[..., None] if coef.ndim else coef
        rr = np.broadcast_to(rows[..., None], cols.shape)
        vv = np.broadcast_to(coef, cols.shape)
        self.r.append(rr.ravel())
        self.c.append(cols.ravel())
        self.v.append(vv.ravel())

    def add(self, shape: tuple[int, ...], terms: list[tuple[np.ndarray, float | np.ndarray]],
            lb: float | np.ndarray, ub: float | np.ndarray) -> np.ndarray:
        ids = self.reserve(shape, lb, ub)
        for cols, coef in terms:
            self.entries(ids, cols, coef)
        return ids

    def matrix(self, num_cols: int) -> tuple[csr_matrix, np.ndarray, np.ndarray]:
        A = coo_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                       shape=(self.count, num_cols)).tocsr()
        return A, np.concatenate(self.lb), np.concatenate(self.ub)


@dataclass
class JobColumns:
    """The column indices of one job's variables; the first axis is the slot from its arrival."""

    arrival: int
    P: np.ndarray  # [nt + 1, R]
    z: np.ndarray  # [nt, R]
    x: np.ndarray
    u: np.ndarray
    y: np.ndarray
    n: np.ndarray  # [nt, R, R]
    v: np.ndarray  # [nt, R, R]
    c: np.ndarray  # [nt]


def variables_per_job(num_sites: int, slots: int) -> int:
    """How many variables one job with `slots` slots of life adds to the program: P ([slots + 1,
    R]), the four per-site arrays z, x, u, y ([slots, R] each), n and v ([slots, R, R] each) and c
    ([slots]), as `_job_columns` allocates them."""
    R = num_sites
    return (slots + 1) * R + slots * (4 * R + 2 * R * R + 1)


def count_variables(scenario: GeoScenario, jobs: tuple[GeoJob, ...]) -> int:
    """The program's column count, without building it (the size check runs before anything)."""
    H = scenario.max_slots
    return sum(variables_per_job(scenario.num_sites, H - j.arrival) for j in jobs)


@dataclass
class GeoProgram:
    """The whole program: columns, rows, objective (cost = objective @ x + constant)."""

    jobs: list[JobColumns]
    cols: Columns
    rows: Rows
    objective: np.ndarray = field(default_factory=lambda: np.zeros(0))
    constant: float = 0.0


def _job_columns(cols: Columns, sc: GeoScenario, job: GeoJob, link: np.ndarray) -> JobColumns:
    R, H, M = sc.num_sites, sc.max_slots, sc.max_workers_per_site
    nt = H - job.arrival
    total = job.total_passes
    cap = np.asarray(sc.sites.capacity, dtype=float)
    need = np.asarray(job.worker, dtype=float)
    # Workers a site can hold at all: a tighter bound than M where a site is small.
    fit = np.min(np.where(need > 0, np.floor(cap / np.where(need > 0, need, 1)), M), axis=1)
    xmax = np.minimum(M, fit)
    P = cols.new((nt + 1, R), 0.0, total, False)
    z = cols.new((nt, R), 0.0, min(total, job.blocks_per_slot * M), False)
    x = cols.new((nt, R), 0.0, xmax, True)
    u = cols.new((nt, R), 0.0, 1.0, True)
    y = cols.new((nt, R), 0.0, 1.0, True)
    # A move is bounded by the job's blocks, and by what its link carries in one slot, with the
    # engine's own slack (a relative slack on the quotient would allow what the engine refuses).
    nmax = np.where(link > 0, np.minimum(job.total_blocks, (link + LINK_TOLERANCE_MB) // job.block_mb),
                    job.total_blocks)
    np.fill_diagonal(nmax, 0)
    n = cols.new((nt, R, R), 0.0, nmax, True)
    v = cols.new((nt, R, R), 0.0, xmax[:, None], False)
    c = cols.new((nt,), 0.0, 1.0, True)
    return JobColumns(job.arrival, P, z, x, u, y, n, v, c)


def _data_rows(rows: Rows, jc: JobColumns, job: GeoJob, R: int, M: int) -> None:
    """Arrival state, moves of untouched blocks only, training z = min(p x, P - e out), balance."""
    e, p, total = job.epochs, job.blocks_per_slot, job.total_passes
    nt = jc.z.shape[0]
    ones = np.ones(R)
    rows.add((R,), [(jc.P[0], 1.0)], np.asarray(job.blocks) * e, np.asarray(job.blocks) * e)
    out, into = jc.n, jc.n.transpose(0, 2, 1)  # [t, r, :] = moves out of r, into r
    # e * sum_r' n[r, r'] <= P[r]: with sequential training the untouched blocks are P // e
    rows.add((nt, R), [(out, e * ones), (jc.P[:-1], -1.0)], -np.inf, 0.0)
    rows.add((nt, R), [(jc.z, 1.0), (jc.x, -p)], -np.inf, 0.0)  # z <= p x
    rows.add((nt, R), [(jc.z, 1.0), (jc.P[:-1], -1.0), (out, e * ones)], -np.inf, 0.0)  # z <= P - e out
    big_x, big_p = float(p * M), float(total)  # bounds on p x and on P
    # The engine trains exactly min(p x, P - e out): z is at least the bound that u selects.
    rows.add((nt, R), [(jc.z, 1.0), (jc.x, -p), (jc.u, -big_x)], -big_x, np.inf)
    rows.add((nt, R), [(jc.z, 1.0), (jc.P[:-1], -1.0), (out, e * ones), (jc.u, big_p)], 0.0, np.inf)
    # Cut: no idle worker (p x <= P - e out + p - 1). Dropping a worker the data cannot use
    # keeps z, frees capacity and saves exchange, so some optimum satisfies it; it prunes HiGHS'
    # search (and the junk placements after a job completes).
    rows.add((nt, R), [(jc.x, float(p)), (jc.P[:-1], -1.0), (out, e * ones)], -np.inf, float(p - 1))
    # P[t+1] = P[t] - z - e out + e in: moved blocks arrive at the end of the slot
    rows.add((nt, R), [(jc.P[1:], 1.0), (jc.P[:-1], -1.0), (jc.z, 1.0), (out, e * ones), (into, -e * ones)],
             0.0, 0.0)


def _placement_rows(rows: Rows, jc: JobColumns, R: int, M: int) -> None:
    """One PS at most; workers need a PS; v[r, r'] = x[r] when the PS is at r', else 0."""
    nt = jc.z.shape[0]
    rows.add((nt,), [(jc.y, np.ones(R))], -np.inf, 1.0)
    # Cut: no PS without a worker (it only takes capacity); some optimum satisfies it.
    rows.add((nt,), [(jc.y, np.ones(R)), (jc.x, -np.ones(R))], -np.inf, 0.0)
    rows.add((nt, R), [(jc.x, 1.0), (np.broadcast_to(jc.y[:, None, :], (nt, R, R)), -M * np.ones(R))],
             -np.inf, 0.0)
    rows.add((nt, R), [(jc.v, np.ones(R)), (jc.x, -1.0)], 0.0, 0.0)
    rows.add((nt, R, R), [(jc.v, 1.0), (np.broadcast_to(jc.y[:, None, :], (nt, R, R)), -float(M))], -np.inf, 0.0)


def _completion_rows(rows: Rows, jc: JobColumns, job: GeoJob, R: int) -> None:
    """c[t] = 1 exactly when no pass is left anywhere at the end of slot t; c is monotone."""
    nt, total = jc.z.shape[0], job.total_passes
    ones = np.ones(R)
    rows.add((nt,), [(jc.P[1:], ones), (jc.c, float(total))], -np.inf, float(total))  # c = 1 -> sum P = 0
    rows.add((nt,), [(jc.P[1:], ones), (jc.c, 1.0)], 1.0, np.inf)  # sum P = 0 -> c = 1 (P integral)
    if nt > 1:
        rows.add((nt - 1,), [(jc.c[:-1], 1.0), (jc.c[1:], -1.0)], -np.inf, 0.0)


def _shared_rows(rows: Rows, sc: GeoScenario, jobs: tuple[GeoJob, ...], jcs: list[JobColumns]) -> None:
    """Per site, resource and slot: capacity; per directed link and slot: the MB it carries."""
    R, H, K = sc.num_sites, sc.max_slots, sc.num_resources
    cap, _, link = sc.sites.arrays()
    cap_rows = rows.reserve((H, R, K), -np.inf, np.broadcast_to(cap, (H, R, K)))
    lr, ls = np.nonzero(link > 0)
    link_rows = rows.reserve((H, lr.size), -np.inf, np.broadcast_to(link[lr, ls], (H, lr.size)))
    for job, jc in zip(jobs, jcs):
        a = job.arrival
        rows.entries(cap_rows[a:], np.broadcast_to(jc.x[:, :, None], (H - a, R, K)), np.asarray(job.worker, float))
        rows.entries(cap_rows[a:], np.broadcast_to(jc.y[:, :, None], (H - a, R, K)), np.asarray(job.ps, float))
        if lr.size:
            rows.entries(link_rows[a:], jc.n[:, lr, ls], job.block_mb)


def _objective(prog: GeoProgram, sc: GeoScenario, jobs: tuple[GeoJob, ...]) -> None:
    """Latency f(1) + sum_t (f(t+2-a) - f(t+1-a)) (1 - c[t]), transfer and exchange costs."""
    _, q, _ = sc.sites.arrays()
    obj = np.zeros(prog.cols.size)
    constant = 0.0
    for job, jc in zip(jobs, prog.jobs):
        nt = jc.z.shape[0]
        f = job.latency
        incr = np.array([f(s + 2) - f(s + 1) for s in range(nt - 1)])  # slot s of life not yet done
        constant += f(1) + float(incr.sum())
        obj[jc.c[:-1]] -= incr
        obj[jc.n] += q[None] * job.block_mb / 100.0
        obj[jc.v] += q[None] * job.exchange_mb / 100.0
    prog.objective, prog.constant = obj, constant


def build_program(sc: GeoScenario, jobs: tuple[GeoJob, ...]) -> GeoProgram:
    cols, rows = Columns(), Rows()
    _, _, link = sc.sites.arrays()
    jcs = [_job_columns(cols, sc, job, link) for job in jobs]
    for job, jc in zip(jobs, jcs):
        _data_rows(rows, jc, job, sc.num_sites, sc.max_workers_per_site)
        _placement_rows(rows, jc, sc.num_sites, sc.max_workers_per_site)
        _completion_rows(rows, jc, job, sc.num_sites)
    _shared_rows(rows, sc, jobs, jcs)
    prog = GeoProgram(jcs, cols, rows)
    _objective(prog, sc, jobs)
    return prog
