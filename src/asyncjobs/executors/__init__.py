"""IO adapters that run attempts: coroutines, worker processes, threads."""
