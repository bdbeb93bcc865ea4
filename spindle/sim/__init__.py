"""Deterministic simulation of Spindle: simulated clock, network and disk, fault injection,
Raft safety invariants and a linearizability checker. Start at ``run`` or ``main``."""

from spindle.sim.cluster import Cluster, SimConfig
from spindle.sim.faults import FAULT_NAMES, FaultConfig
from spindle.sim.linearizability import CheckResult, History, KVModel, RegisterModel, check
from spindle.sim.runner import RunReport, SeedResult, main, run, run_seed

__all__ = [
    "FAULT_NAMES",
    "CheckResult",
    "Cluster",
    "FaultConfig",
    "History",
    "KVModel",
    "RegisterModel",
    "RunReport",
    "SeedResult",
    "SimConfig",
    "check",
    "main",
    "run",
    "run_seed",
]
