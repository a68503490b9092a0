"""`make bench [ONLY=<group>]`: measures the baselines, then each group, in one run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import ExitStack

from bench import (
    baselines,
    callbacks_load,
    compliance_decisions,
    lists_import,
    runtime_overhead,
)
from bench.environment import Environment, start
from bench.harness import Run, require_tool, save

# Each group measures its figures against the baselines of the same run.
GROUPS: dict[str, Callable[[Run, Environment], None]] = {
    baselines.GROUP: lambda run, env: None,
    runtime_overhead.GROUP: runtime_overhead.measure,
    lists_import.GROUP: lists_import.measure,
    callbacks_load.GROUP: callbacks_load.measure,
    # Last: its recovery figure empties Redis.
    compliance_decisions.GROUP: compliance_decisions.measure,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(GROUPS), help="run one group (baselines included)")
    args = parser.parse_args()
    selected = [args.only] if args.only else list(GROUPS)
    for tool in ("h2load", "wrk"):
        require_tool(tool)
    run = Run()
    with ExitStack() as stack:
        env = start(stack, services=("iam", "lists", "compliance", "callbacks"))
        print("baselines")
        baselines.measure(run, env)
        env.settle()
        for name in selected:
            if name == baselines.GROUP:
                continue
            print(name)
            GROUPS[name](run, env)
            env.settle()
    save(run, sorted({baselines.GROUP, *selected}))


if __name__ == "__main__":
    main()
