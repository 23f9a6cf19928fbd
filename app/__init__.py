"""The hosted collaboration service: its own process, importing nothing else of ours."""
