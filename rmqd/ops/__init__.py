"""rmqd.ops: operations as a library — disk checks, clean rules, metrics, self-inspection.

No loops, no processes: the cleaner and metrics processes (workers/cleaner.py, workers/metrics.py)
call these functions on their own schedule, and the tests drive them with an injectable clock,
disk-usage source and sleep.

  disk.py      DiskUsage source, the three thresholds (RocketMQ DiskCheck), cleaner flag decisions
  clean.py     CleanCommitLogService / CleanConsumeQueueService rules and the StoreCleaner pass
  metrics.py   figures from shm and the store; the Prometheus collector; the send RT histogram
  inspect.py   the self-inspection probe (send to SELF_TEST_TOPIC, receive it, time it)
"""
