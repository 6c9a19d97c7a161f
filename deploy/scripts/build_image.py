"""Build the CPU image (``make image``) with whichever engine this machine has: docker, podman or buildah.

With docker the build is the plain ``docker build`` the README documents; nothing of this machine is
added. The daemonless engines get what a machine without registry access needs, derived at build time:

- **base image**: the Dockerfile's default ``PYTHON_IMAGE`` when it is present or can be pulled, else a
  local bookworm base made once by ``local_base_image.sh`` (debootstrap);
- **pip settings**: ``pip config list`` (CA bundle, find-links, file:// indexes, constraints, ``PIP_*``)
  as one pip.conf, mounted read-only at /etc/pip.conf with every local path it names mounted read-only at
  the same path. Mounts are not layers: none of it reaches the image;
- **torch index**: when the Dockerfile's ``TORCH_INDEX_URL`` cannot be reached, the machine's own index.

Docker format, not OCI: OCI image configs have no HEALTHCHECK, and the Dockerfile's would be dropped.
"""

from __future__ import annotations

import argparse
import configparser
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCAL_BASE = ROOT / "deploy" / "scripts" / "local_base_image.sh"
TAG = "saver:cpu"
ENGINES = ("docker", "podman", "buildah")
# pip options whose values are local paths (or lists of them) that the build must see
PATH_OPTIONS = frozenset(
    {"cert", "client-cert", "find-links", "constraint", "requirement", "index-url", "extra-index-url"}
)
PYPI = "https://pypi.org/simple"


@dataclass
class PipSettings:
    """The machine's effective pip configuration, as pip.conf sections, and the local paths it names."""

    sections: dict[str, dict[str, str]] = field(default_factory=dict)

    def pip_conf(self) -> str:
        parser = configparser.ConfigParser(interpolation=None)
        for name, values in self.sections.items():
            parser[name] = values
        out = io.StringIO()
        parser.write(out)
        return out.getvalue()

    def index_url(self) -> str:
        return self.sections.get("global", {}).get("index-url", PYPI).split()[0]

    def local_paths(self) -> list[Path]:
        """Existing local files and folders the settings name; for a file:// index, the folder above
        ``simple/``, since index pages may link to files beside it."""
        found: list[Path] = []
        for values in self.sections.values():
            for key, value in values.items():
                if key not in PATH_OPTIONS:
                    continue
                for item in value.split():
                    path = _local_path(item)
                    if path is None or not path.exists():
                        continue
                    if key.endswith("index-url") and path.name == "simple":
                        path = path.parent
                    if path not in found:
                        found.append(path)
        return found


def _local_path(item: str) -> Path | None:
    if item.startswith("file://"):
        return Path(urlsplit(item).path)
    if "://" in item:
        return None
    return Path(item)


def parse_pip_config(listing: str) -> PipSettings:
    """``pip config list`` output -> settings. Files come first and ``:env:`` (``PIP_*``) overrides them,
    as pip itself ranks them; env values apply to every command, so they go to [global]."""
    settings = PipSettings()
    env: dict[str, str] = {}
    for line in listing.splitlines():
        match = re.match(r"^(\S+?)\.([A-Za-z0-9_-]+)='(.*)'$", line.strip())
        if not match:
            continue
        section, key, value = match.groups()
        if section == ":env:":
            env[key] = value
        else:
            settings.sections.setdefault(section, {})[key] = value
    settings.sections.setdefault("global", {}).update(env)
    return settings


def machine_pip_settings(python: str = sys.executable) -> PipSettings:
    done = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    return parse_pip_config(done.stdout if done.returncode == 0 else "")


def dockerfile_default(name: str, dockerfile: Path = DOCKERFILE) -> str:
    """The default of ``ARG name=...`` in the Dockerfile: the one source of the base and torch index."""
    match = re.search(rf"^ARG {re.escape(name)}=(\S+)$", dockerfile.read_text(encoding="utf-8"), re.M)
    if not match:
        raise SystemExit(f"{dockerfile} declares no default for ARG {name}")
    return match.group(1)


def reachable(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except Exception:
        return False


def choose_engine(which: Callable[[str], str | None] = shutil.which) -> str:
    """docker when its daemon answers, else podman, else buildah."""
    for engine in ENGINES:
        if which(engine) is None:
            continue
        if engine == "docker":
            done = subprocess.run(["docker", "info"], capture_output=True, check=False)
            if done.returncode != 0:
                continue  # a client without a daemon cannot build
        return engine
    raise SystemExit("no container engine: install docker, podman or buildah")


def has_image(engine: str, image: str) -> bool:
    check = (
        ["buildah", "inspect", "--type", "image", image]
        if engine == "buildah"
        else [engine, "image", "exists", image]
    )
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


def base_image(engine: str, default: str) -> str:
    """The default base when present or pullable, else the local debootstrap one (made once)."""
    if has_image(engine, default):
        return default
    try:
        pulled = subprocess.run(
            [engine, "pull", "--quiet", default], capture_output=True, check=False, timeout=300
        )
        if pulled.returncode == 0:
            return default
    except subprocess.TimeoutExpired:
        pass  # a registry that does not answer is one that cannot be pulled from
    print(f"cannot pull {default}: using a local bookworm base", file=sys.stderr)
    done = subprocess.run(["bash", str(LOCAL_BASE)], stdout=subprocess.PIPE, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def build_command(
    engine: str,
    tag: str,
    dockerfile: Path,
    context: Path,
    build_args: dict[str, str] | None = None,
    mounts: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    """The engine's build command line. Mounts are (source, destination) pairs, read-only."""
    if engine == "docker":
        command = ["docker", "build"]
    else:
        command = (
            ["buildah", "bud", "--isolation", "chroot", "--layers"]
            if engine == "buildah"
            else ["podman", "build", "--isolation", "chroot"]
        )
        command += ["--format", "docker"]
    for key, value in (build_args or {}).items():
        command += ["--build-arg", f"{key}={value}"]
    for source, destination in mounts:
        command += ["--volume", f"{source}:{destination}:ro"]
    return [*command, "-f", str(dockerfile), "-t", tag, str(context)]


def daemonless_extras(
    engine: str, pip: PipSettings, workdir: Path, dockerfile: Path
) -> tuple[dict[str, str], list[tuple[Path, str]]]:
    """Build arguments and read-only mounts a daemonless build needs on this machine."""
    args = {"PYTHON_IMAGE": base_image(engine, dockerfile_default("PYTHON_IMAGE", dockerfile))}
    torch_index = dockerfile_default("TORCH_INDEX_URL", dockerfile)
    if not reachable(torch_index):
        args["TORCH_INDEX_URL"] = pip.index_url()
    mounts: list[tuple[Path, str]] = []
    if pip.sections:
        conf = workdir / "pip.conf"
        conf.write_text(pip.pip_conf(), encoding="utf-8")
        mounts.append((conf, "/etc/pip.conf"))
        mounts += [(path, str(path)) for path in pip.local_paths()]
    return args, mounts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine", choices=ENGINES, help="default: the first of docker, podman, buildah that works"
    )
    parser.add_argument("--tag", default=TAG)
    parser.add_argument("--dockerfile", type=Path, default=DOCKERFILE)
    parser.add_argument("--context", type=Path, default=ROOT)
    parser.add_argument("--dry-run", action="store_true", help="print the build command, build nothing")
    args = parser.parse_args(argv)
    engine = args.engine or choose_engine()
    dockerfile = args.dockerfile.resolve()
    with tempfile.TemporaryDirectory(prefix="saver-build-") as tmp:
        build_args: dict[str, str] = {}
        mounts: list[tuple[Path, str]] = []
        if engine != "docker":
            build_args, mounts = daemonless_extras(engine, machine_pip_settings(), Path(tmp), dockerfile)
        command = build_command(engine, args.tag, dockerfile, args.context.resolve(), build_args, mounts)
        print("+", shlex.join(command), file=sys.stderr)
        if args.dry_run:
            return 0
        started = time.monotonic()
        done = subprocess.run(command, check=False, env={**os.environ, "BUILDAH_FORMAT": "docker"})
        print(
            f"{engine} build of {args.tag}: exit {done.returncode} in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
