"""Copy a training checkpoint into `checkpoints/` as a shipped policy: the weights and the metadata
that say what it is (scenario, fingerprint, model and acting options, training configuration, step),
without what only a resumed run needs (optimizer state, random states, value statistics, history),
which would triple the file. `--note` records where it came from (`fine_tuned_from`).

    python scripts/ship_checkpoint.py RUN/best.pt hetero-6-uncertain --note "hetero-6.pt + PPO, issue 13"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.learned.checkpoint import load_checkpoint, read_payload, save_checkpoint
from tapfinger.sim.scenario import load_scenario

KEPT = ("imitation_done", "iteration", "started", "train_config")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a checkpoint written by `tapfinger train`")
    ap.add_argument("scenario", help="the scenario it ships for: checkpoints/<scenario>.pt")
    ap.add_argument("--note", default="", help="where it came from (stored as fine_tuned_from)")
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    loaded = load_checkpoint(args.source, scenario)  # refuses a checkpoint of another scenario
    payload = read_payload(args.source)
    extra = {k: payload[k] for k in KEPT if k in payload}
    if args.note:
        extra["fine_tuned_from"] = args.note
    dest = Path(__file__).resolve().parent.parent / "checkpoints" / f"{scenario.name}.pt"
    save_checkpoint(dest, net=loaded.net, scenario=scenario, acting=payload.get("acting", {}),
                    step=int(payload.get("step", 0)), extra=extra)
    print(f"{dest}: {dest.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
