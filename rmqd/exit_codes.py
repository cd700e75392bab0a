"""Process exit codes of rmqd's commands and worker processes (never bare integers elsewhere)."""

EXIT_OK = 0  # clean stop
EXIT_ERROR = 1  # an unexpected error; the log has the traceback
EXIT_USAGE = 2  # bad command line
EXIT_BOOT_FAILED = 3  # a process could not finish setup(); the supervisor halts instead of looping
EXIT_STORE_CORRUPT = 4  # the store has damage recovery could not repair
EXIT_STORE_LOCKED = 5  # another broker holds the store's lock
EXIT_CHILD_FAILED = 6  # the supervisor stopped because a child failed by the written policy
EXIT_CONFIG = 7  # the configuration is invalid
