"""Multi-process meta-training on ``jax.distributed``: start-up, who writes, host copies.

Every process runs the same loop on its share of the devices. The ES population is one
sharded array over ``jax.devices()`` (all processes), so each process unrolls the pairs on
its own devices and the gradient estimate is reduced by XLA's collectives (gloo on CPU,
NCCL on GPU). Process 0 (the *primary*) alone touches the run directory: it checks it,
restores the checkpoint and sends it to the others, writes checkpoints, TensorBoard and
``metrics.jsonl``. The others never read or write ``--out``.

When a process dies, the survivors' next collective fails within moments (its sockets
close); :func:`lost_processes` then asks every process to check in through the coordination
service's key-value store and names those that did not, and the loop raises
:class:`LostProcessError`. A survivor that is not inside a collective meanwhile is ended by
jax's own heartbeat check after ``heartbeat_timeout_s``; when process 0 (the coordinator)
dies, jax ends the others at once with its own message.

One process (no ``initialize``) is the same code with every helper here a no-op.

References: DESIGN.md section 13; jax.distributed and jax.experimental.multihost_utils.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

# Seconds a process may stop sending heartbeats before jax's coordination service declares
# it dead and stops the run (jax's default is 100 s; a lost process must stop the run within
# a minute).
HEARTBEAT_TIMEOUT_S = 20
# Seconds the survivors of a failed collective wait for each other to check in.
CHECK_IN_S = 5.0
# Exit status of a process whose run stopped because another process was lost.
LOST_EXIT = 3


class DistributedError(RuntimeError):
    """The processes of a multi-process run could not start or agree (one line)."""


class LostProcessError(DistributedError):
    """Another process of the run died or stopped answering.

    Attributes:
      lost: the process ids that did not check in (empty when they could not be told).
    """

    def __init__(self, lost: list[int], cause: str):
        names = ", ".join(str(p) for p in lost) or "unknown"
        super().__init__(f"lost process {names} of {jax.process_count()} "
                         f"(this is process {jax.process_index()}; {cause})")
        self.lost = lost


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
    """Joins a multi-process run; call before anything else uses jax.

    Without arguments, jax reads the cluster from the environment (SLURM, Open MPI, TPU,
    Kubernetes; ``JAX_COORDINATOR_ADDRESS``). On CPU the collectives run over gloo.

    Raises:
      DistributedError: the run could not be joined (one line naming the setting to fix).
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id,
                                   heartbeat_timeout_seconds=heartbeat_timeout_s)
    except (ValueError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"cannot start the distributed run ({first}); pass --coordinator HOST:PORT "
            "--num-processes N --process-id I, or launch under SLURM/Open MPI") from None


def multi_process() -> bool:
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def _client():
    from jax._src import distributed as _dist
    return _dist.global_state.client


_counter = [0]


def _key(name: str) -> str:
    # every process makes the same calls in the same order, so the n-th call has one key
    _counter[0] += 1
    return f"mulo/{name}/{_counter[0]}"


def on_primary(name: str, fn: Callable[[], str | None], errors: tuple = (),
               timeout_s: float = 600.0) -> str | None:
    """Runs ``fn`` on process 0 only and returns its result (a string or None) on every
    process; an exception of a type in ``errors`` on process 0 is raised on every process.

    One process: ``fn()``.
    """
    if not multi_process():
        return fn()
    key = _key(name)
    if is_primary():
        try:
            res = fn()
            msg = "ok\n" if res is None else "val\n" + res
        except errors as e:
            msg = f"err\n{type(e).__name__}\n{e}"
            _client().key_value_set(key, msg)
            raise
        _client().key_value_set(key, msg)
    else:
        msg = _client().blocking_key_value_get(key, int(timeout_s * 1000))
    kind, _, rest = msg.partition("\n")
    if kind == "err":
        cls_name, _, text = rest.partition("\n")
        cls = next((c for c in errors if c.__name__ == cls_name), DistributedError)
        raise cls(text)
    return rest if kind == "val" else None


def same_on_all(name: str, text: str, what: str) -> None:
    """Raises :class:`DistributedError` on every process when ``text`` (e.g. the resolved
    config) is not the same as process 0's."""
    if not multi_process():
        return
    key = _key(name)
    _client().key_value_set(f"{key}/{jax.process_index()}", text)
    texts = [_client().blocking_key_value_get(f"{key}/{p}", 600_000)
             for p in range(jax.process_count())]
    bad = [p for p, t in enumerate(texts) if t != texts[0]]
    if bad:
        raise DistributedError(f"process(es) {', '.join(map(str, bad))} run another {what} "
                               "than process 0; start every process with the same command")


def to_host(tree):
    """Numpy copies of ``tree`` (every process gets the whole of every array). A collective
    when multi-process: every process must call it at the same point."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def broadcast(tree):
    """Process 0's values of ``tree`` (numpy arrays) on every process (a collective)."""
    if not multi_process():
        return tree
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def place_like(host, like):
    """``host`` (numpy) as arrays placed and sharded like the arrays of ``like``."""
    def one(h, x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.make_array_from_callback(x.shape, x.sharding, lambda idx: h[idx])
        return jax.numpy.asarray(h, dtype=x.dtype)
    return jax.tree.map(one, host, like)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (a collective)."""
    if not multi_process():
        return flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def is_collective_failure(e: BaseException) -> bool:
    """Whether ``e`` is a cross-process collective or coordination failure (a peer died)."""
    text = str(e)
    return multi_process() and any(s in text for s in (
        "Gloo", "gloo", "NCCL", "Connection reset", "Connection closed", "coordination",
        "heartbeat", "Socket closed", "DEADLINE_EXCEEDED", "UNAVAILABLE"))


def lost_processes(timeout_s: float = CHECK_IN_S) -> list[int]:
    """The processes that do not check in within ``timeout_s`` after a failed collective
    (every survivor calls this; polls the coordination service's key-value store)."""
    client = _client()
    base = "mulo/alive"   # once per run: the run stops after it
    try:
        client.key_value_set(f"{base}/{jax.process_index()}", "1")
        deadline = time.monotonic() + timeout_s
        while True:
            seen = {int(k.rsplit("/", 1)[1]) for k, _ in client.key_value_dir_get(base)}
            missing = [p for p in range(jax.process_count()) if p not in seen]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)
    except Exception:  # noqa: BLE001 - the coordinator itself is gone
        return [0] if not is_primary() else []


def lost(e: BaseException) -> LostProcessError:
    """The :class:`LostProcessError` for collective failure ``e``."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return LostProcessError(lost_processes(), first[:200])


def hard_exit(code: int) -> None:
    """Exits at once (flushing stdout/stderr): after a lost process, jax's own shutdown
    would wait for it and then abort."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def describe() -> str:
    """``process i of n, d local device(s)`` (for logs)."""
    return (f"process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.local_device_count()} local device(s) of {jax.device_count()}")


def null_tree(tree) -> Any:
    """Zero numpy arrays shaped like ``tree`` (what non-primary processes send to
    :func:`broadcast`)."""
    return jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype
                                           if not isinstance(x, jax.Array) else x.dtype), tree)
