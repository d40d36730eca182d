"""Where a client finds its server, token and project: one precedence for the CLI and the SDK.

Each value comes from the first of: a flag (or an argument of :meth:`Client.from_env`), the
environment (``UNDERLAY_URL``, ``UNDERLAY_TOKEN``, ``UNDERLAY_PROJECT``), the active profile,
a default. Profiles are named sets of those values that ``underlay login --profile NAME``
saves in ``profiles.json`` under ``$XDG_CONFIG_HOME/underlay`` (default
``~/.config/underlay``), one file, owner-only (0600), in an owner-only folder. The active
profile is the one a flag or ``UNDERLAY_PROFILE`` names, else the file's current one (the
last logged in, or chosen with ``underlay config use``), else ``default``.

Every resolved value carries where it came from, so ``underlay config show`` can say why a
command talks to the server it talks to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from underlay.errors import InvalidInput, NotFound

DEFAULT_URL = "http://127.0.0.1:8765"
DEFAULT_PROFILE = "default"
PROFILES_FILE = "profiles.json"
FIELDS = ("url", "token", "project")
_ENV = {"url": "UNDERLAY_URL", "token": "UNDERLAY_TOKEN", "project": "UNDERLAY_PROJECT"}


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/underlay``, else ``~/.config/underlay``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "underlay"


def profiles_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / PROFILES_FILE


@dataclass(frozen=True)
class ProfileFile:
    """The saved profiles and which one is current."""

    path: Path
    current: str | None
    profiles: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: Path) -> ProfileFile:
        if not path.exists():
            return cls(path, None, {})
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise InvalidInput(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
        if not isinstance(data, dict) or not isinstance(data.get("profiles", {}), dict):
            raise InvalidInput(f"{path} is not a profiles file; fix or remove it")
        profiles = {
            str(name): {k: str(v) for k, v in values.items() if k in FIELDS and v is not None}
            for name, values in data.get("profiles", {}).items()
            if isinstance(values, dict)
        }
        current = data.get("current")
        return cls(path, str(current) if current else None, profiles)

    def save(self) -> None:
        from underlay.config import write_secret_file

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.parent.chmod(0o700)
        body = {"current": self.current, "profiles": self.profiles}
        write_secret_file(self.path, json.dumps(body, indent=2).encode(), overwrite=True)


@dataclass(frozen=True)
class Value:
    """A resolved value and where it came from (``flag --url``, ``environment UNDERLAY_URL``,
    ``profile 'work'``, ``default``, ``not set``)."""

    value: str | None
    source: str


@dataclass(frozen=True)
class ClientConfig:
    """What a client uses: the active profile's name and each value with its source."""

    profile: Value
    url: Value
    token: Value
    project: Value
    path: Path

    def shown(self) -> dict[str, dict[str, Any]]:
        """The values for display: the token only as its prefix."""
        token = self.token.value
        return {
            "profile": {"value": self.profile.value, "source": self.profile.source},
            "url": {"value": self.url.value, "source": self.url.source},
            "token": {
                "value": None if token is None else token[:10] + "…",
                "source": self.token.source,
            },
            "project": {"value": self.project.value, "source": self.project.source},
            "profiles_file": {"value": str(self.path), "source": "XDG_CONFIG_HOME or ~/.config"},
        }


def active_profile(flag: str | None, environ: Mapping[str, str], saved: ProfileFile) -> Value:
    if flag:
        return Value(flag, "flag --profile")
    if environ.get("UNDERLAY_PROFILE"):
        return Value(environ["UNDERLAY_PROFILE"], "environment UNDERLAY_PROFILE")
    if saved.current:
        return Value(saved.current, f"current profile in {saved.path}")
    return Value(DEFAULT_PROFILE, "default")


def resolve(
    *,
    profile: str | None = None,
    url: str | None = None,
    token: str | None = None,
    project: str | None = None,
    environ: Mapping[str, str] | None = None,
    must_exist: bool = True,
) -> ClientConfig:
    """Resolve url, token and project: flags (these arguments) > environment > profile >
    default. A profile named by a flag or ``UNDERLAY_PROFILE`` that was never saved is an
    error unless ``must_exist`` is false (``underlay login`` creating it)."""
    env = os.environ if environ is None else environ
    saved = ProfileFile.load(profiles_path(env))
    name = active_profile(profile, env, saved)
    assert name.value is not None
    stored = saved.profiles.get(name.value)
    if stored is None:
        stored = {}
        if must_exist and name.source != "default" and not name.source.startswith("current"):
            known = ", ".join(sorted(saved.profiles)) or "none"
            raise NotFound(
                f"profile {name.value!r} not found in {saved.path} (saved: {known}); "
                f"create it with 'underlay login --profile {name.value}'"
            )
    flags = {"url": url, "token": token, "project": project}
    values: dict[str, Value] = {}
    for key in FIELDS:
        if flags[key]:
            values[key] = Value(flags[key], f"flag --{key}")
        elif env.get(_ENV[key]):
            values[key] = Value(env[_ENV[key]], f"environment {_ENV[key]}")
        elif stored.get(key):
            values[key] = Value(stored[key], f"profile {name.value!r}")
        elif key == "url":
            values[key] = Value(DEFAULT_URL, "default")
        else:
            values[key] = Value(None, "not set")
    return ClientConfig(name, values["url"], values["token"], values["project"], saved.path)


def save_profile(
    name: str,
    *,
    url: str,
    token: str,
    project: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Save (or replace) profile ``name`` and make it the current one; a project saved
    before is kept unless another is given."""
    saved = ProfileFile.load(profiles_path(environ))
    values = {"url": url, "token": token}
    old_project = saved.profiles.get(name, {}).get("project")
    if project or old_project:
        values["project"] = project or old_project or ""
    profiles = {**saved.profiles, name: values}
    ProfileFile(saved.path, name, profiles).save()
    return saved.path


def use_profile(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """Make saved profile ``name`` the current one."""
    saved = ProfileFile.load(profiles_path(environ))
    if name not in saved.profiles:
        known = ", ".join(sorted(saved.profiles)) or "none"
        raise NotFound(f"profile {name!r} not found in {saved.path} (saved: {known})")
    ProfileFile(saved.path, name, saved.profiles).save()
    return saved.path


def remove_profile(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Forget profile ``name`` (its token too); returns whether it existed."""
    saved = ProfileFile.load(profiles_path(environ))
    if name not in saved.profiles:
        return False
    profiles = {k: v for k, v in saved.profiles.items() if k != name}
    current = saved.current if saved.current != name else None
    ProfileFile(saved.path, current, profiles).save()
    return True
