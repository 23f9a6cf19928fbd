"""Pure decision code: given a snapshot of committed state and `now`, which commands to submit."""
