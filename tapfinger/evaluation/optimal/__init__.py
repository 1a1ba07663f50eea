"""The exact offline optimum of small episodes, by a time-indexed integer program (HiGHS).

Every task chooses exactly one option (node, start slot, allocation):

* the node lies in a cluster that sees the task, and holds the task type's minimum;
* the start slot is at or after the arrival slot;
* the allocation is at least the minimum and at most `grid_max` and the node's capacity in
  every resource, and stays fixed while the task runs (non-preemptive); it runs for
  d(type, allocation) slots, counted with the engine's own float arithmetic
  (`tapfinger.sim.speed.slot_table`), and holds its resources in slots start .. start + d - 1;
* in every slot, the tasks running on a node fit its capacity in every resource, and a cluster
  runs at most `max_running` tasks (the engine's cap, see `tapfinger.sim.tables`).

The objective is the sum of JCT = start - arrival + d, which is exactly the engine's count of
slot ends in the system.

Three things keep the program small without losing optimality. Dominated allocations (one
no faster than another that uses no more of any resource) are dropped: swapping in the
dominating one keeps any schedule feasible and no worse. Each task's latest finish is capped:
with a feasible schedule of total JCT J (a list schedule built here) and per-task lower bounds
lb, any optimal schedule gives task t a JCT of at most J - sum(lb) + lb[t]; so the per-task
time windows, and the horizon, lose no optimal solution. And reduced-cost fixing from the LP
relaxation (see `solve.solve_with_fixing`) hands HiGHS only the binaries that can appear in a
schedule better than the best known one; on the 12-task instances of `small_scenario` that is
about a quarter.

What is *not* modelled: the environment's pending window (a cluster can start only the first
`window_size` waiting tasks it sees until a slot ends) and the rounds (one start per agent per
round; conflicts). Rounds never restrict which set of tasks can start in a slot, but the window
can. So `optimal` is the exact optimum of the environment whenever no window overflows in the
optimal schedule (`replay_schedule` checks this by playing the schedule in the engine), and in
every case a lower bound on the average JCT of every non-preemptive policy. Preemptive policies
can beat it (they can resize running tasks), never `tapfinger.evaluation.bounds.lower_bound`.

Modules: `model` (the options, the list schedule and the program's binaries and rows),
`solve` (`optimal`: enumerate, fix, solve), `replay` (checking a schedule and playing it in
the engine), `instances` (`small_scenario`, the random instances of the optimality-gap study).
"""

from tapfinger.evaluation.optimal.instances import small_scenario
from tapfinger.evaluation.optimal.replay import WindowOverflowError, check_schedule, replay_schedule
from tapfinger.evaluation.optimal.solve import (DEFAULT_TIME_LIMIT, MAX_BINARIES, MAX_TASKS, InstanceTooLargeError,
                                                OptimalSchedule, OptimumNotFoundError, optimal, optimal_avg_jct)

__all__ = ["DEFAULT_TIME_LIMIT", "MAX_BINARIES", "MAX_TASKS", "InstanceTooLargeError", "OptimalSchedule",
           "OptimumNotFoundError", "WindowOverflowError", "check_schedule", "optimal", "optimal_avg_jct",
           "replay_schedule", "small_scenario"]
