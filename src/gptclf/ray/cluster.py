"""Ray itself: imported only here and only when asked for, with a clear message when it is
missing; and joining (or starting) the instance a command runs on."""

from __future__ import annotations

from typing import Any

from ..errors import GptclfError

INSTALL_HINT = "pip install 'gptclf[ray]' (Ray Data and Ray Train; the torch pin stays)"


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs ray[data,train]; a bare ray lacks them
    except ImportError as e:
        raise GptclfError(f"--engine ray needs Ray, which is not installed ({e})", hint=INSTALL_HINT) from None
    return ray


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """``ray.init``: ``address`` None starts a local instance (``num_cpus`` of this machine's
    cores, all by default), ``auto`` joins the cluster this machine belongs to, ``ray://host:10001``
    a remote one. Already connected (a caller's own ``ray.init``): that instance is used."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        raise GptclfError(f"--address {address}: no Ray cluster there ({e})",
                          hint="start one with 'ray start --head', or leave --address out for a local instance") \
            from None
    return ray
