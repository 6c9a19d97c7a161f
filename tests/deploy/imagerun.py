"""The compose ``saver`` service turned, key by key, into the run the image test performs.

There is no second copy of the service definition to drift: ``service_run`` reads deploy/compose.yaml
and the image's own configuration (CMD, ENV, USER, HEALTHCHECK). Every compose key is either honoured
here or named as one that chroot isolation cannot enforce; any other key is an error, so a new key in
compose fails ``make test`` (tests/deploy/test_compose.py) until this module handles it.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.conftest import DEPLOY

HONOURED = frozenset(
    {
        "image",
        "build",
        "command",
        "environment",
        "ports",
        "read_only",
        "tmpfs",
        "healthcheck",
        "user",
        "volumes",
    }
)
# What a real runtime enforces and `buildah run --isolation chroot` cannot; docs/deployment.md says so.
NOT_ENFORCEABLE = {
    "cap_drop": "chroot isolation runs with the caller's capabilities",
    "security_opt": "no-new-privileges is a runtime setting",
    "deploy": "resource limits need cgroups set by a runtime",
    "restart": "restart policies belong to the runtime",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")
_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class ImageConfig:
    """What an image declares for the process it runs (``buildah inspect``, or the Dockerfile)."""

    command: list[str]  # entrypoint + cmd
    env: dict[str, str]
    user: str
    healthcheck: list[str] | None  # the CMD argv of HEALTHCHECK


@dataclass
class ServiceRun:
    image: str
    command: list[str]
    environment: dict[str, str]  # compose's, variables substituted as compose does
    added_env: dict[str, str]  # what the test adds on top, each for a stated reason
    user: str
    port: int  # the service's port: host network, so host and container port are one
    tmpfs: list[str]
    read_only: bool
    healthcheck: list[str]
    start_period_s: float
    binds: list[str] = field(default_factory=list)  # source:destination[:ro]

    def env(self) -> dict[str, str]:
        return {**self.environment, **self.added_env}

    def options(self) -> list[str]:
        """`buildah run` options shared by the service and its health check."""
        options = ["--isolation", "chroot", "--network", "host", "--user", self.user]
        for key, value in self.env().items():
            options += ["--env", f"{key}={value}"]
        for path in self.tmpfs:
            options += ["--mount", f"type=tmpfs,destination={path}"]
        for bind in self.binds:
            options += ["--volume", bind]
        return options

    def serve(self, container: str) -> list[str]:
        return ["buildah", "run", *self.options(), container, "--", *self.command]

    def check_health(self, container: str) -> list[str]:
        return ["buildah", "run", *self.options(), container, "--", *self.healthcheck]


def dockerfile_image_config(path: Path) -> ImageConfig:
    """The final stage's CMD, ENV, USER and HEALTHCHECK, read with BuildKit's parser (``dockerfile``)."""
    import dockerfile

    commands = list(dockerfile.parse_file(str(path)))
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    env: dict[str, str] = {}
    config: dict[str, Any] = {"CMD": [], "ENTRYPOINT": [], "USER": "root", "HEALTHCHECK": None}
    for command in commands[last_from + 1 :]:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
        elif command.cmd == "USER":
            config["USER"] = command.value[0]
        elif command.cmd in ("CMD", "ENTRYPOINT"):
            config[command.cmd] = list(command.value) if command.json else ["/bin/sh", "-c", command.value[0]]
        elif command.cmd == "HEALTHCHECK":
            config["HEALTHCHECK"] = healthcheck_command(list(command.value))
    return ImageConfig([*config["ENTRYPOINT"], *config["CMD"]], env, config["USER"], config["HEALTHCHECK"])


def built_image_config(inspect: dict[str, Any]) -> ImageConfig:
    """The same from ``buildah inspect --type image`` of a Docker-format image."""
    config = inspect["Docker"]["config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    check = (config.get("Healthcheck") or {}).get("Test")
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    return ImageConfig(
        command, env, config.get("User") or "root", healthcheck_command(check) if check else None
    )


def substitute(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME-default}`` and ``${NAME:-default}``."""
    return _VARIABLE.sub(lambda m: environ.get(m["name"]) or (m["default"] or ""), value)


def seconds(duration: str) -> float:
    """A compose duration such as ``1m30s`` or ``120s``."""
    parts = list(_DURATION.finditer(duration))
    if not parts or "".join(p.group(0) for p in parts) != duration:
        raise ValueError(f"not a compose duration: {duration!r}")
    return sum(float(p["value"]) * _SECONDS[p["unit"]] for p in parts)


def healthcheck_command(test: list[str] | str) -> list[str]:
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    raise ValueError(f"unsupported health check {test[0]!r}")


def service_run(
    service: dict[str, Any],
    image: ImageConfig,
    added_env: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
    compose_dir: Path = DEPLOY,
) -> ServiceRun:
    unknown = set(service) - HONOURED - set(NOT_ENFORCEABLE)
    if unknown:
        raise ValueError(f"compose keys the image test does not run: {sorted(unknown)}")
    environ = dict(os.environ) if environ is None else environ
    raw_env = service.get("environment", {})
    if isinstance(raw_env, list):
        raw_env = dict(item.split("=", 1) for item in raw_env)
    environment = {k: substitute(str(v), environ) for k, v in raw_env.items()}
    command = service.get("command", image.command)
    if isinstance(command, str):
        command = shlex.split(command)
    added = dict(added_env or {})
    port = int({**image.env, **environment, **added}.get("SAVER_PORT", "8000"))
    listens = int({**image.env, **environment}.get("SAVER_PORT", "8000"))
    for mapping in service.get("ports", []):
        # host network: the test reaches the container port itself, so only that side is checked
        container = int(str(mapping).rpartition(":")[2])
        if container != listens:
            raise ValueError(f"compose publishes {container}, the service listens on {listens}")
    binds = []
    for volume in service.get("volumes", []):
        source, destination, *mode = str(volume).split(":")
        if not source.startswith((".", "/")):
            raise ValueError(f"named volume {source!r}: the image test has no volume store")
        binds.append(":".join([str((compose_dir / source).resolve()), destination, *mode]))
    check = service.get("healthcheck", {})
    test = check.get("test") or image.healthcheck
    if not test:
        raise ValueError("neither compose nor the image declares a health check")
    return ServiceRun(
        image=service["image"],
        command=list(command),
        environment=environment,
        added_env=added,
        user=str(service.get("user", image.user)),
        port=port,
        tmpfs=[str(t) for t in service.get("tmpfs", [])],
        read_only=bool(service.get("read_only", False)),
        healthcheck=healthcheck_command(test) if check.get("test") else list(test),
        start_period_s=seconds(str(check.get("start_period", "0s"))),
        binds=binds,
    )
