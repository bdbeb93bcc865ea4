"""Real-process fault injection: a client workload against a cluster of `spindle server`
processes while a nemesis crashes, pauses and partitions nodes; then the checks.

- `history`: a Jepsen history recorded from real clients (monotonic wall-clock times),
  checked per key with the simulator's linearizability checker.
- `workload`: asyncio clients (get / put / compare-and-set / delete on shared keys, plus
  unique-key writes whose acknowledgement must never be lost).
- `nemesis`: SIGKILL + restart, SIGSTOP + SIGCONT, and network partitions.
- `convergence`: do all replicas of every Raft group agree (from each node's /status)?
- `netns`: each node in its own network namespace, for partitions without iptables.
- `run`: the whole run (workload, nemesis, heal, convergence, checks) and its report;
  `python -m spindle.faults --seconds 240 [--netns]` for a long run by hand.

The tests are in tests/cluster/.
"""
