"""The replicated cluster state, its commands, and the Raft implementation that agrees on them."""
