"""SWIM-style failure detection with Lifeguard awareness, from wire format to asyncio shell."""
