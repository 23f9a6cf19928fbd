"""Fixtures shared across test directories: one dockerd and one app image per test session
(started only when a test asks for them)."""

from tests.support_docker import docker_client, dockerd, image

__all__ = ["docker_client", "dockerd", "image"]
