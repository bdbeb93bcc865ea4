"""spindle.kv: a sharded, multi-tenant key/value store on RocksDB (after Meta's ZippyDB)."""
