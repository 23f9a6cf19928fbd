"""The app's container image, built locally from this repository and the Python that runs the
agent: nothing is pulled from a registry.

The image is `FROM scratch` with three layers: the interpreter with its standard library and
the shared libraries it links (found with ldd), the app's third-party packages (the installed
distributions the app needs, with what they require), and the repository's app/ package. Paths
stay as they are on this machine, so the interpreter finds its prefix unchanged. Each build is
tagged twice: `<name>:<content hash>` and `<name>:local` (what the config names by default).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import importlib.util
import io
import os
import py_compile
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

# The distributions the app imports (app/ imports nothing of ours; tests check this list
# covers every third-party import under app/). Their requirements are added recursively.
APP_DISTRIBUTIONS: Final = (
    "aiohttp",
    "aiohttp-jinja2",
    "aiosqlite",
    "argon2-cffi",
    "asyncpg",
    "jinja2",
    "pyotp",
    "segno",
)
# Parts of the standard library an app server never uses (and the bulk of its size).
_STDLIB_LEFT_OUT: Final = frozenset(
    {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
)
APP_HOME: Final = "/opt/moonwatch"
DEFAULT_NAME: Final = "moonwatch-app"
_REQUIREMENT_NAME: Final = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LDD_PATH: Final = re.compile(r"(/\S+) \(0x[0-9a-f]+\)")


class ImageBuildError(Exception):
    """The image could not be built; the message says why."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things are on this machine, and so in the image."""

    python: Path  # the interpreter binary (symlinks resolved)
    stdlib: Path  # <prefix>/lib/python3.X
    app_package: Path  # the repository's app/ directory

    @property
    def site_packages(self) -> Path:
        return self.stdlib / "site-packages"

    @classmethod
    def of_this_interpreter(cls, app_package: Path) -> Layout:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return cls(
            python=Path(sys.executable).resolve(),
            stdlib=Path(sys.base_prefix) / "lib" / version,
            app_package=app_package,
        )


def distribution_closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions `names` need, recursively (requirements that only an
    extra asks for, or that are not installed here, are left out)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _normalise(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for requirement in dist.requires or ():
            marker = requirement.partition(";")[2]
            match = _REQUIREMENT_NAME.match(requirement)
            if match is not None and "extra" not in marker:
                todo.append(match.group(1))
    return sorted(found.values(), key=lambda d: _normalise(d.metadata["Name"]))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution_files(dists: Iterable[metadata.Distribution]) -> Iterator[tuple[Path, str]]:
    """(file on this machine, path in the image) of every installed file of `dists` that lies
    in a site-packages directory; it goes to the image's own site-packages."""
    for dist in dists:
        for packaged in dist.files or ():
            relative = Path(str(packaged))
            if relative.parts and relative.parts[0] == "..":
                continue  # console scripts and the like, outside site-packages
            source = Path(str(dist.locate_file(packaged)))
            if source.is_file():
                yield source, str(relative)


def _walk(root: Path, left_out: frozenset[str] = frozenset()) -> Iterator[Path]:
    for entry in sorted(root.iterdir()):
        if entry.name in left_out:
            continue
        if entry.is_dir() and not entry.is_symlink():
            yield from _walk(entry)
        elif entry.is_file():
            yield entry


def shared_libraries(binaries: Iterable[Path]) -> list[Path]:
    """Every shared library (and the dynamic loader) the binaries link, as ldd resolves them."""
    libraries: set[Path] = set()
    for binary in binaries:
        done = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            continue  # not dynamic (a script, a static binary)
        for match in _LDD_PATH.finditer(done.stdout):
            libraries.add(Path(match.group(1)))
    return sorted(libraries)


@dataclass(frozen=True, slots=True)
class Context:
    """A build context: a tar of Dockerfile, rootfs/ and app/, with its content hash."""

    path: Path
    content_hash: str


def write_context(layout: Layout, into: Path) -> Context:
    """Write the build context as a tar file under `into`."""
    runtime = [(path, _in_image(path)) for path in _walk(layout.stdlib, _STDLIB_LEFT_OUT)]
    runtime.append((layout.python, _in_image(layout.python)))
    packages = [
        (source, _in_image(layout.site_packages / relative))
        for source, relative in _distribution_files(distribution_closure(APP_DISTRIBUTIONS))
    ]
    binaries = [layout.python, *(p for p, _ in runtime + packages if ".so" in p.name)]
    runtime += [(lib, _in_image(lib)) for lib in shared_libraries(binaries)]
    app = [
        (path, "app/" + str(path.relative_to(layout.app_package)))
        for path in _walk(layout.app_package, frozenset({"__pycache__"}))
    ]
    digest = hashlib.sha256()
    fd, name = tempfile.mkstemp(prefix="moonwatch-image-", suffix=".tar", dir=into)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        _add_directory(tar, "rootfs/tmp", 0o1777)
        _add_bytes(tar, "rootfs/etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n")
        _add_bytes(tar, "rootfs/etc/group", b"root:x:0:\n")
        for source, target in sorted(set(runtime + packages)) + app:
            data = source.read_bytes()
            mode = 0o755 if os.access(source, os.X_OK) else 0o644
            digest.update(f"{target}\0{mode:o}\0".encode())
            digest.update(hashlib.sha256(data).digest())
            # Real modification times: the interpreter's cached bytecode is checked against them.
            _add_bytes(tar, target, data, mode, int(source.stat().st_mtime))
        for target, data in _app_bytecode(app):
            _add_bytes(tar, target, data)
        content_hash = digest.hexdigest()[:16]
        _add_bytes(tar, "Dockerfile", dockerfile(layout, content_hash).encode())
    return Context(Path(name), content_hash)


def _in_image(path: Path) -> str:
    return "rootfs" + str(path)


def _app_bytecode(app: list[tuple[Path, str]]) -> Iterator[tuple[str, bytes]]:
    """The app's modules compiled ahead, checked by source hash (not by time), so an instance
    does not compile the app at every start."""
    with tempfile.TemporaryDirectory(prefix="moonwatch-pyc-") as scratch:
        for source, target in app:
            if source.suffix != ".py":
                continue
            compiled = Path(scratch) / "module.pyc"
            py_compile.compile(
                str(source),
                cfile=str(compiled),
                dfile=f"{APP_HOME}/{target}",
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
            folder, _, name = target.rpartition("/")
            yield f"{folder}/{importlib.util.cache_from_source(name)}", compiled.read_bytes()


def _add_bytes(
    tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644, mtime: int = 0
) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    tar.addfile(info, io.BytesIO(data))


def _add_directory(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def dockerfile(layout: Layout, content_hash: str) -> str:
    python = str(layout.python)
    return "\n".join(
        [
            "FROM scratch",
            "COPY rootfs/ /",
            f"COPY app/ {APP_HOME}/app/",
            f"ENV PATH={layout.python.parent}:/usr/bin:/bin PYTHONPATH={APP_HOME} "
            "PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8",
            f"WORKDIR {APP_HOME}",
            "LABEL org.opencontainers.image.title=moonwatch-app "
            f"io.moonwatch.content={content_hash} io.moonwatch.python={python}",
            f'ENTRYPOINT ["{python}", "-m", "app"]',
            "",
        ]
    )


def build_image(client: Any, layout: Layout, name: str = DEFAULT_NAME) -> str:
    """Build (or find, when nothing changed) the image; returns `<name>:<content hash>`, also
    tagged `<name>:local`. `client` is a docker.DockerClient."""
    with tempfile.TemporaryDirectory(prefix="moonwatch-image-") as scratch:
        context = write_context(layout, Path(scratch))
        tag = f"{name}:{context.content_hash}"
        with context.path.open("rb") as tar:
            _run_build(client, tar, tag)
    client.images.get(tag).tag(name, "local")
    return tag


def _run_build(client: Any, tar: IO[bytes], tag: str) -> None:
    stream = client.api.build(
        fileobj=tar, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False, decode=True
    )
    last: list[str] = []
    for chunk in stream:
        if "error" in chunk:
            raise ImageBuildError(f"docker build failed: {str(chunk['error']).strip()}")
        text = str(chunk.get("stream", "")).strip()
        if text:
            last = [*last[-4:], text]
    if not last:
        raise ImageBuildError("docker build said nothing")
