"""Environment of the create-job stages beyond the common job contract (ims.stages.environment)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ims.stages.environment import JobEnvironmentError, as_bool

# The original's wait_for_kiwi_repos: give up after 500 s, probing every 10 s.
DEFAULT_TIMEOUT = 500.0
DEFAULT_INTERVAL = 10.0
# The original mounts the job ConfigMap's dictionary here; the env variable wins when both exist.
TEMPLATE_DICTIONARY_FILE = Path("/etc/cray/template_dictionary")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise JobEnvironmentError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if value < 0:
        raise JobEnvironmentError(f"{name} must not be negative")
    return value


@dataclass(frozen=True)
class CreateSettings:
    template_dictionary: str = field(default="", repr=False)  # JSON object; may hold credentials
    repos_timeout: float = DEFAULT_TIMEOUT
    repos_interval: float = DEFAULT_INTERVAL
    enable_debug: bool = False
    ca_cert_file: str = ""
    kiwi: str = ""  # kiwi-ng executable; empty: the one beside this Python

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CreateSettings:
        env = os.environ if env is None else env
        dictionary = env.get("TEMPLATE_DICTIONARY")
        if dictionary is None and TEMPLATE_DICTIONARY_FILE.is_file():
            dictionary = TEMPLATE_DICTIONARY_FILE.read_text()
        return cls(
            template_dictionary=dictionary or "",
            # TIMEOUT is the original's name (wait_for_kiwi_repos); ours wins when both are set.
            repos_timeout=_seconds(env, "IMS_REPOS_TIMEOUT", _seconds(env, "TIMEOUT", DEFAULT_TIMEOUT)),
            repos_interval=_seconds(env, "IMS_REPOS_POLL_SECONDS", DEFAULT_INTERVAL),
            enable_debug=as_bool(env.get("ENABLE_DEBUG"), "ENABLE_DEBUG"),
            # The original installs the CA its jobs trust (CA_CERT, the cluster CA) into every image it
            # builds; IMS_CA_CERT_FILE, when set, names another one.
            ca_cert_file=(env.get("IMS_CA_CERT_FILE", "").strip() or env.get("CA_CERT", "").strip()),
            kiwi=env.get("IMS_KIWI_NG", "").strip(),
        )
