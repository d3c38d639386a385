"""The learned-optimizer architectures by the ``arch`` name their checkpoints store, and the
functions that work for any of them.

``ARCHS`` maps each name to an :class:`Architecture`: its config class and the functions
that make, check and use its theta. The functions below (:func:`config_from_dict`,
:func:`init_theta`, :func:`check_theta`, :func:`make_from_config`) dispatch on
``config.arch`` through it. A new learned optimizer is one module in :mod:`lopt.learned`
plus one entry here; the architectures never import this module or one another.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from lopt.learned import mulo, velo


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One learned-optimizer family.

    Attributes:
      config: its frozen config dataclass (``arch`` class attribute = its name here;
        ``from_dict`` / ``to_dict`` for checkpoints).
      init: ``init(key, config) -> theta``, random meta-parameters.
      check: ``check(theta, config)`` raises one clear ValueError if theta does not fit.
      make: ``make(theta, config, *, roles, role_overrides, mup_in, num_steps)`` ->
        ``optax.GradientTransformationExtraArgs``.
    """
    config: type
    init: Callable[..., Any]
    check: Callable[..., None]
    make: Callable[..., Any]


ARCHS: dict[str, Architecture] = {
    "mlp": Architecture(config=mulo.LOConfig, init=mulo.init_theta, check=mulo.check_theta,
                        make=mulo.make_from_config),
    "velo": Architecture(config=velo.VeLOConfig, init=velo.init_velo_theta,
                         check=velo.check_velo_theta, make=velo.make_velo),
}


def architecture(config) -> Architecture:
    """The :class:`Architecture` of a config instance (by its ``arch``) or of an arch name.

    Raises:
      ValueError: an arch name that is not in :data:`ARCHS`.
    """
    name = config if isinstance(config, str) else getattr(config, "arch", None)
    if name not in ARCHS:
        raise ValueError(f"unknown learned-optimizer arch {name!r}; known: {', '.join(ARCHS)}")
    return ARCHS[name]


def config_from_dict(d: Mapping[str, Any]):
    """The stored config of any learned optimizer here, by ``d["arch"]`` (default "mlp"): a
    :class:`lopt.learned.mulo.LOConfig`, a :class:`lopt.learned.velo.VeLOConfig`, ...

    Raises:
      ValueError: unknown arch, keys or values the config refuses.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a learned-optimizer config must be a mapping, got {d!r}")
    arch = architecture(d.get("arch", "mlp"))
    return arch.config.from_dict({k: v for k, v in d.items() if k != "arch"})


def init_theta(key: jax.Array, config=mulo.MULO) -> dict:
    """Random meta-parameters of ``config``'s architecture (default the classic μLO_M):
    :func:`lopt.learned.mulo.init_theta`, :func:`lopt.learned.velo.init_velo_theta`, ..."""
    return architecture(config).init(key, config)


def check_theta(theta, config=mulo.MULO) -> None:
    """Raises one clear ValueError if theta does not fit the architecture in ``config``."""
    return architecture(config).check(theta, config)


def make_from_config(theta: Any, config, *, roles: Any = None,
                     role_overrides: Mapping[str, str] | None = None,
                     mup_in: str = "optimizer", num_steps: int | None = None):
    """The optax optimizer of a stored config and its theta, for any architecture:
    :func:`lopt.learned.mulo.make_from_config` (μLO) or :func:`lopt.learned.velo.make_velo`
    (μVeLO) with ``roles``, ``role_overrides``, ``mup_in`` and ``num_steps`` as in
    :func:`lopt.make`."""
    return architecture(config).make(theta, config, roles=roles, role_overrides=role_overrides,
                                     mup_in=mup_in, num_steps=num_steps)
