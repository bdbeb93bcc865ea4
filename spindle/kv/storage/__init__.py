"""Storage engines: RocksDB for production, memory (crashable) for tests."""

from spindle.kv.storage.engine import ALL_CFS, CF, Engine, WriteBatch
from spindle.kv.storage.memory import MemoryEngine
from spindle.kv.storage.rocks import RocksEngine

__all__ = ["ALL_CFS", "CF", "Engine", "MemoryEngine", "RocksEngine", "WriteBatch"]
