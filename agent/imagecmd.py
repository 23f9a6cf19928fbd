"""`moonwatch image build`: the app's container image for the docker driver, built on this
machine from this installation (see agent/docker_image.py); nothing is pulled."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TextIO

from agent.config import ClusterConfig
from agent.docker_client import DockerUnreachable, open_docker
from agent.docker_image import ImageBuildError, Layout, build_image

EXIT_FAILED = 1


def app_package() -> Path:
    """The directory of the app package the agent runs (`python -m app`), without importing it."""
    spec = importlib.util.find_spec("app")
    if spec is None or not spec.submodule_search_locations:
        raise ImageBuildError("the app package is not installed next to the agent")
    return Path(next(iter(spec.submodule_search_locations)))


def split_reference(reference: str) -> tuple[str, str]:
    """`repository[:tag]` to (repository, tag); the tag defaults to `latest`, as in docker."""
    repository, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:  # a registry's port, not a tag
        return reference, "latest"
    return repository, tag


def image_build(
    config: ClusterConfig,
    docker_url: str | None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    import docker

    url = docker_url or config.app.docker.url
    wanted = config.app.docker.image
    name, label = split_reference(wanted)
    try:
        client = open_docker(url, 600)
    except (docker.errors.DockerException, DockerUnreachable) as exc:
        print(f"moonwatch image build: cannot reach docker at {url}: {exc}", file=err)
        return EXIT_FAILED
    try:
        tag = build_image(client, Layout.of_this_interpreter(app_package()), name)
        client.images.get(tag).tag(name, label)
    except (ImageBuildError, docker.errors.DockerException, OSError) as exc:
        print(f"moonwatch image build: {exc}", file=err)
        return EXIT_FAILED
    finally:
        client.close()
    print(f"built {tag}; the config's app.docker.image {wanted} names it", file=out)
    return 0
