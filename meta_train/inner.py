"""Inner training shared by meta-training and eval: N steps of any optax optimizer on a task.

The whole run is one ``lax.scan``; a non-finite loss, parameter or optimizer-state element
(one that overflowed) freezes the run from that step on and is reported as divergence
(``diverged`` flag and ``diverged_at`` step), never raised.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from meta_train.tasks import Task


def all_finite(tree: Any) -> jax.Array:
    """True when every element of every leaf of ``tree`` is finite: the one non-finite guard
    of inner runs (here and in the ES population) and of meta-updates."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.bool_(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def overflowed(new: Any, old: Any) -> jax.Array:
    """True when a float leaf of ``new`` holds a non-finite element where ``old`` (the same
    tree one step earlier) held a finite one: optimizer state that overflowed. State that
    starts non-finite on purpose (a best-so-far at inf) counts only if it changes."""
    flags = [jnp.any(~jnp.isfinite(a) & jnp.isfinite(b))
             for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old))
             if jnp.issubdtype(a.dtype, jnp.inexact)]
    return jnp.any(jnp.stack(flags)) if flags else jnp.bool_(False)


def inner_step(task: Task, opt: optax.GradientTransformation, params: Any, opt_state: Any,
               batch: Any, *, pass_loss: bool = False, **update_args):
    """One inner update, shared by eval runs and meta-training: loss and gradient on
    ``batch``, then ``opt.update(grads, opt_state, params, **update_args)``; with
    ``pass_loss`` the step's loss goes along as ``value=loss`` (optax's name for it), for
    optimizers whose features read it (VeLO).

    Returns (loss before the update, new params, new optimizer state).
    """
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    if pass_loss:
        update_args = dict(update_args, value=loss)
    upd, opt_state = opt.update(grads, opt_state, params, **update_args)
    return loss, optax.apply_updates(params, upd), opt_state


class TrainResult(NamedTuple):
    losses: jax.Array       # [T] training loss at each step (before its update); inf after divergence
    eval_steps: jax.Array   # [1] the step at which test metrics were taken (num_steps)
    test_loss: jax.Array    # [1] test loss of the final parameters
    test_accuracy: jax.Array  # [1]
    diverged: jax.Array     # [] bool
    diverged_at: jax.Array  # [] int32, -1 if never
    params: Any             # final parameters


def train(task: Task, opt: optax.GradientTransformation, *, key: jax.Array, num_steps: int,
          eval_batches: int | None = 4, params: Any = None,
          extra_args: Callable[[Any, Any], dict] | None = None,
          pass_loss: bool = False) -> TrainResult:
    """Trains ``task`` for ``num_steps`` with ``opt``; jittable end to end.

    Args:
      task: the inner problem.
      opt: any optax transformation (learned or hand-designed); receives params.
      key: PRNG key; determines the init and every batch.
      num_steps: number of updates.
      eval_batches: test batches averaged in the evaluation of the final parameters (the only
        one); None evaluates on the whole test
        split (``task.split_metrics``) where the task has one, else on 8 batches.
      params: optional initial parameters (default ``task.init``).
      extra_args: optional ``(params, batch) -> dict`` of keyword arguments for
        ``opt.update`` (e.g. ``{"activations": task.activations(params, batch)}``).
      pass_loss: give ``opt.update`` each step's training loss as ``value=`` (VeLO needs it;
        ``config.needs_loss`` of a learned optimizer says so).
    """
    k_init, k_data, k_test = jax.random.split(key, 3)
    p0 = task.init(k_init) if params is None else params
    return _train(task, opt, p0, k_data, k_test, num_steps, eval_batches, extra_args,
                  pass_loss)


def _evaluate(task, params, key, batches):
    if batches is None:
        if task.split_metrics is not None:
            m = task.split_metrics(params, task.data)
            return m["loss"], m["accuracy"]
        batches = 8
    ms = [task.metrics(params, task.sample(task.data, k, "test"))
          for k in jax.random.split(key, batches)]
    return (jnp.mean(jnp.stack([m["loss"] for m in ms])),
            jnp.mean(jnp.stack([m["accuracy"] for m in ms])))


def _train(task, opt, p0, k_data, k_test, num_steps, eval_batches, extra_args=None,
           pass_loss=False):
    def step(carry, i):
        params, state, dead, dead_at = carry
        batch = task.sample(task.data, jax.random.fold_in(k_data, i), "train")
        extra = extra_args(params, batch) if extra_args is not None else {}
        loss, new_params, new_state = inner_step(task, opt, params, state, batch,
                                                 pass_loss=pass_loss, **extra)
        bad = ~jnp.isfinite(loss) | dead
        # the optimizer state counts too: an overflowed state with finite parameters would
        # stall the run, neither diverged nor learning
        bad_after = bad | ~all_finite(new_params) | overflowed(new_state, state)
        # a dead run keeps its last finite params and float state (its later losses read inf).
        # Integer state (step counts, choices) moves on: it carries no NaN, and a select on it
        # would make a vmapped group's counts batched, turning every optimizer's periodic
        # ``lax.cond`` (e.g. Schatten-p's re-choice of p) into computing both branches each step
        keep = lambda new, old: jax.tree.map(
            lambda a, b: a if jnp.issubdtype(a.dtype, jnp.integer) else
            jnp.where(bad_after, b, a), new, old)
        carry = (keep(new_params, params), keep(new_state, state), bad_after,
                 jnp.where(bad_after & ~dead, i, dead_at))
        return carry, jnp.where(bad, jnp.inf, loss)

    carry = (p0, opt.init(p0), jnp.array(False), jnp.array(-1, jnp.int32))
    carry, losses = jax.lax.scan(step, carry, jnp.arange(num_steps))
    params, _, dead, dead_at = carry
    # fold_in(k_test, 0): the key the final evaluation has always had
    tl, ta = _evaluate(task, params, jax.random.fold_in(k_test, 0), eval_batches)
    return TrainResult(losses, jnp.array([num_steps]), tl[None], ta[None], dead, dead_at,
                       params)

