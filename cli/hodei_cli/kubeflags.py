"""The Kubernetes options of ``hodei provider set``, as settings (checked here where a file
is named: the kubeconfig must be readable where the command runs)."""

from __future__ import annotations

from pathlib import Path

import yaml

from hodei_common.endpoints import one_line
from hodei_common.errors import ValidationError


def kubeconfig_path(raw: str, context: str | None) -> str:
    """The kubeconfig as an absolute path, once it is read and has ``context``."""
    path = Path(raw).expanduser().absolute()
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValidationError(f"--kubeconfig {path}: cannot read it ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ValidationError(f"--kubeconfig {path}: not YAML ({one_line(str(e))})") from e
    if not isinstance(loaded, dict) or not isinstance(loaded.get("contexts"), list):
        raise ValidationError(f"--kubeconfig {path}: not a kubeconfig (it has no contexts)")
    names = [c.get("name") for c in loaded["contexts"] if isinstance(c, dict)]
    if context is not None and context not in names:
        raise ValidationError(f"--context {context!r} is not in {path} (it has: "
                              f"{', '.join(str(n) for n in names) or 'none'})")
    return str(path)


def key_values(option: str, pairs: list[str]) -> dict[str, str]:
    """``k=v`` options (repeatable) as a mapping."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise ValidationError(f"{option} takes KEY=VALUE, not {pair!r}")
        found[key.strip()] = value.strip()
    return found


def toleration(raw: str) -> dict[str, str]:
    """``key=value:Effect``, ``key:Effect`` (any value), ``key=value`` or ``key``."""
    spec, colon, effect = raw.partition(":")
    key, equals, value = spec.partition("=")
    if not key.strip() or (colon and not effect.strip()):
        raise ValidationError(f"--toleration takes key=value:Effect or key:Effect, not {raw!r}")
    found = {"key": key.strip()}
    if equals:
        found["value"] = value.strip()
    else:
        found["operator"] = "Exists"
    if colon:
        found["effect"] = effect.strip()
    return found
