"""The meta-training outer loop: estimators per task, AdamW on theta, checkpoints, logs.

Plain Python around the jitted ES core (:mod:`meta_train.es`). Everything random comes from
one seed: step ``s`` uses ``fold_in(run_key, s)``, so a resumed run continues the exact
trajectory of an uninterrupted one.

Run directory layout::

    <out>/config.json        resolved config
    <out>/checkpoints/<step>/ orbax: state (theta, meta-opt state, estimator states, key),
                              lopt (theta + LOConfig, readable by ``lopt.load``), config
    <out>/tb/                 TensorBoard event files
    <out>/metrics.jsonl       one JSON line per outer step
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from lopt.io.checkpoint import to_json as lopt_to_json
from meta_train import distributed as dist, es as ES
from meta_train.config import MetaTrainConfig, config_diff, fill_config
from meta_train.inner import all_finite, train as inner_train
from meta_train.progress import progress_bar
from meta_train.rundir import RunDirError, hold as hold_run_dir
from meta_train.tasks import get_task
from meta_train.tblog import TBWriter


def meta_optimizer(cfg: MetaTrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup from ~0 and cosine decay, after global-norm clipping."""
    sched = optax.warmup_cosine_decay_schedule(
        init_value=3e-10, peak_value=cfg.meta_lr, warmup_steps=max(1, cfg.warmup_steps),
        decay_steps=max(cfg.outer_steps, cfg.warmup_steps + 1), end_value=cfg.final_lr)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(sched, weight_decay=cfg.weight_decay))


def run_keys(seed: int):
    """The three keys of a run with ``seed``: its start theta's, its estimators', its steps'."""
    return jax.random.split(jax.random.PRNGKey(int(seed)), 3)


def start_theta(cfg: MetaTrainConfig):
    """The theta a run of ``cfg`` starts from (:func:`lopt.start_theta` with its first key)."""
    return lopt.start_theta(run_keys(cfg.seed)[0], cfg.lo, cfg.init_from)


class MetaTrainer:
    """Holds the jitted pieces for one config. ``run`` drives the loop."""

    def __init__(self, cfg: MetaTrainConfig):
        self.cfg = cfg
        self.tasks = [get_task(n) for n in cfg.tasks]
        self.problems = [ES.lo_problem(t, self.opt_factory(t)) for t in self.tasks]
        self.meta_opt = meta_optimizer(cfg)
        self._apply = jax.jit(lambda th, st, g: _apply(self.meta_opt, th, st, g))
        self._val = None

    def opt_factory(self, task):
        """``(theta, num_steps=None) -> optimizer`` for ``task``: its declared roles (equal to
        the inferred ones, tests/lopt/test_roles_layers.py) and μP in the model, as the
        tasks multiply their readout by 1/fan_in."""
        lo_cfg = self.cfg.lo
        return lambda th, num_steps=None: lopt.make_from_config(
            th, lo_cfg, roles=task.roles, mup_in="model", num_steps=num_steps)

    def init_state(self) -> dict:
        _, k_es, k_run = run_keys(self.cfg.seed)
        theta = start_theta(self.cfg)
        es_states = [ES.init_es_state(p, theta, jax.random.fold_in(k_es, i), self.cfg.es)
                     for i, p in enumerate(self.problems)]
        return {"step": jnp.int32(0), "theta": theta, "opt_state": self.meta_opt.init(theta),
                "es": es_states, "key": k_run}

    def outer_step(self, state: dict) -> tuple[dict, dict]:
        """One meta-update: average the per-task estimates (each rescaled to the tasks' mean
        norm first with ``task_balance="norm"``), apply AdamW. Never raises on
        inner NaN/inf; a non-finite estimate is dropped (theta stays finite)."""
        step = int(state["step"])
        k = jax.random.fold_in(state["key"], step)
        state = {**state, "theta": ES.replicated(state["theta"]),
                 "opt_state": ES.replicated(state["opt_state"])}
        grads, new_es, mets = [], [], {}
        for i, (task, prob) in enumerate(zip(self.tasks, self.problems)):
            g, s, m = ES.es_gradient(state["theta"], state["es"][i], jax.random.fold_in(k, i),
                                     task.data, problem=prob, cfg=self.cfg.es)
            grads.append(g)
            new_es.append(s)
            for name, v in m.items():
                mets[f"{task.name}/{name}"] = float(v)
        norms = [optax.tree.norm(g) for g in grads]
        for task, n in zip(self.tasks, norms):
            mets[f"{task.name}/grad_norm"] = float(n)
        if self.cfg.task_balance == "norm":
            mean_norm = sum(norms) / len(norms)
            grads = [jax.tree.map(lambda x, n=n: x * (mean_norm / jnp.maximum(n, 1e-12)), g)
                     for g, n in zip(grads, norms)]
        grad = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
        theta, opt_state, ok = self._apply(state["theta"], state["opt_state"], grad)
        mets["meta_loss"] = float(np.mean([mets[f"{t.name}/meta_loss"] for t in self.tasks]))
        mets["grad_norm"] = float(optax.tree.norm(grad))
        mets["theta_norm"] = float(optax.tree.norm(theta))
        mets["skipped_nonfinite"] = float(not bool(ok))
        for name, d in lopt.decays(theta).items():
            for j, v in enumerate(np.asarray(d)):
                mets[f"decay/{name}_{j}"] = float(v)
        return {"step": jnp.int32(step + 1), "theta": theta, "opt_state": opt_state,
                "es": new_es, "key": state["key"]}, mets

    def validate(self, theta) -> dict:
        """Mean normalized train loss and final test loss of the current theta on held-out
        seeds of the validation task (the meta-objective, without perturbations)."""
        cfg = self.cfg
        if self._val is None:
            task = get_task(cfg.validate_task or cfg.tasks[0])
            make_opt = self.opt_factory(task)
            fn = jax.jit(lambda th, key: inner_train(
                task, make_opt(th, cfg.validate_steps), key=key, num_steps=cfg.validate_steps,
                pass_loss=cfg.lo.needs_loss))
            self._val = (task, fn)
        task, fn = self._val
        res = [fn(theta, jax.random.PRNGKey(10_000 + i)) for i in range(cfg.validate_seeds)]
        loss = np.mean([float(jnp.mean(jnp.minimum(r.losses / task.normalizer,
                                                   cfg.es.loss_clip))) for r in res])
        return {"val/meta_loss": float(loss),
                "val/final_test_loss": float(np.mean([float(r.test_loss[-1]) for r in res])),
                "val/final_train_loss": float(np.mean([float(jnp.mean(r.losses[-10:]))
                                                      for r in res]))}


def _apply(meta_opt, theta, opt_state, grad):
    """AdamW step on theta; a non-finite estimate is skipped so theta stays finite."""
    ok = all_finite(grad)
    upd, new_opt_state = meta_opt.update(grad, opt_state, theta)
    new_theta = optax.apply_updates(theta, upd)
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    return pick(new_theta, theta), pick(new_opt_state, opt_state), ok


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP stopped :func:`run`, after it saved a checkpoint.

    Attributes:
      signum: the signal number (a CLI exits with ``128 + signum``).
      abandoned: an outer step was computing in a worker thread and was left running (its
        result is dropped); a CLI then ends with ``os._exit`` rather than wait for it.
    """
    abandoned = False

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, n))


class _StopSignals:
    """While entered (in the main thread): the first SIGINT/SIGTERM/SIGHUP raises
    :class:`Interrupted`, at once or, inside :meth:`deferred`, when the block ends; a second
    one exits the process at once with ``128 + signum`` (orbax commits a checkpoint by a
    rename, so an exit mid-save leaves only a temporary directory)."""

    def __init__(self):
        self.received: int | None = None
        self._depth = 0
        self._old: dict = {}
        # multi-process: a signal never cuts a step short (the others are in its
        # collectives); every process stops at the end of the step where any got one
        self.collective = dist.multi_process()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    def _handle(self, signum, frame):
        if self.received is not None:
            os.write(2, f"\n{signal.Signals(signum).name} again: exiting without saving\n"
                     .encode())
            os._exit(128 + signum)
        self.received = signum
        if self._depth == 0 and not self.collective:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        """A block that a first signal does not cut short; it raises when the block ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self.received is not None and self._depth == 0 and not self.collective:
            raise Interrupted(self.received)

    def call(self, fn):
        """``fn()``, computed in a worker thread and waited for here, so that a first signal
        is taken at once: a jitted computation holds the thread that runs it until it ends,
        out of a signal handler's reach (a huge truncation once kept a stopped run computing
        for minutes). The signal raises :class:`Interrupted` with ``abandoned`` set; the
        worker runs on unobserved and its result is dropped."""
        if threading.current_thread() is not threading.main_thread():
            return fn()
        box: dict = {}
        done = threading.Event()

        def work():
            try:
                box["out"] = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["err"] = e
            finally:
                done.set()
        threading.Thread(target=work, name="meta-train-step", daemon=True).start()
        try:
            # a signal interrupts the wait and its handler raises (not Thread.join: an
            # exception inside it marks a running thread as stopped, bpo-45274)
            while not done.wait(0.5):
                pass
        except Interrupted as e:
            e.abandoned = not done.is_set()
            raise
        if "err" in box:
            raise box["err"]
        return box["out"]

    def agree(self) -> None:
        """Multi-process: raises :class:`Interrupted` on every process when any process
        received a signal (a collective, called once per step by all)."""
        if self.collective and dist.any_process(self.received is not None):
            raise Interrupted(self.received or signal.SIGTERM)


def saved_config(out: str | os.PathLike) -> dict | None:
    """The config of the run in ``out`` as a dict: ``config.json``, or where that is missing
    or unreadable, the config stored with its newest checkpoint; None when neither exists."""
    from meta_train.checkpointing import Checkpointer

    try:
        doc = json.loads((Path(out) / "config.json").read_text())
        if isinstance(doc, dict):
            return doc
    except (OSError, ValueError):   # missing, bad JSON or bytes that are not UTF-8
        pass
    return Checkpointer(Path(out) / "checkpoints").saved_config()


def load_run_config(out: str | os.PathLike) -> MetaTrainConfig:
    """The :class:`MetaTrainConfig` of the run in ``out``.

    Raises:
      RunDirError: ``out`` holds no run, or its saved config is not a valid config.
    """
    saved = saved_config(out)
    if saved is None:
        raise RunDirError(f"{out} holds no run to resume (no config.json or checkpoint); "
                          "check --out, or drop --resume to start a new run")
    try:
        return MetaTrainConfig.from_dict(saved)
    except ValueError as e:
        raise RunDirError(f"{out}: saved config is invalid ({e})") from None


def resume_command(out: str | os.PathLike, cfg: MetaTrainConfig | None = None,
                   argv: list[str] | None = None) -> str:
    """The command that continues the run in ``out``: ``--out OUT --resume`` (the config
    comes from the run) where the run has a saved config, equal to ``cfg`` when given; else
    the invocation ``argv`` (its preset and overrides) with ``--resume-or-start``, which
    works whether or not the run got as far as saving its config."""
    short = f"python -m meta_train --out {shlex.quote(str(out))} --resume"
    if argv is None:
        return short
    saved = saved_config(out)
    if saved is not None and (cfg is None or fill_config(saved) == json.loads(cfg.to_json())):
        return short
    args = [a for a in argv if a not in ("--resume", "--resume-or-start")]
    return " ".join(["python -m meta_train", *map(shlex.quote, args), "--resume-or-start"])


# Settings a resumed run may change: how long it runs, how often it saves and what it
# validates, not the trajectory of the steps taken so far (a new ``outer_steps`` stretches
# the meta-LR schedule from the current step on: ``--out RUN --resume --outer_steps N``
# extends a run).
RESUME_MAY_CHANGE = ("outer_steps", "checkpoint_every", "keep_checkpoints", "validate_every",
                     "validate_task", "validate_steps", "validate_seeds")


def check_run_dir(cfg: MetaTrainConfig, out: str | os.PathLike, *, resume: bool) -> list[str]:
    """Raises :class:`RunDirError` when :func:`run` would refuse ``out``; touches nothing.

    The saved config counts the fields it predates at their off values
    (:func:`meta_train.config.fill_config`), so a run of an earlier version resumes.

    Returns:
      the settings of :data:`RESUME_MAY_CHANGE` that the requested config changes, as
      ``"outer_steps: 6 in the run, 25 requested"`` (empty without ``resume``).
    """
    from meta_train.checkpointing import Checkpointer

    out = Path(out)
    if not resume:
        if Checkpointer(out / "checkpoints").has_checkpoints():
            raise RunDirError(f"{out} already holds a run; pass --resume to continue it or "
                              "choose another --out")
        return []
    saved = saved_config(out)
    if saved is None:
        raise RunDirError(f"{out} holds no run to resume (no config.json or checkpoint); "
                          "check --out, or drop --resume to start a new run")
    diff = config_diff(fill_config(saved), json.loads(cfg.to_json()))
    changes = [d for d in diff if d.split(":", 1)[0] in RESUME_MAY_CHANGE]
    diff = [d for d in diff if d not in changes]
    if diff:
        raise RunDirError(f"the run in {out} has another config: it differs from the requested "
                          f"one in {'; '.join(diff)}; resume with: {resume_command(out)} "
                          "(optionally with --outer_steps N to extend it)")
    return changes


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops the lines of steps after ``step`` (written after the checkpoint a run resumes
    from), so ``metrics.jsonl`` holds each step once."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue   # a line cut short by a kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def run(cfg: MetaTrainConfig, out: str | os.PathLike, *, resume: bool = False,
        progress: bool = True, stop_after: int | None = None) -> dict:
    """Meta-trains per ``cfg`` into run directory ``out``.

    SIGINT, SIGTERM and SIGHUP abandon the outer step in progress (or end the bookkeeping
    of a finished one), save a checkpoint and raise :class:`Interrupted`; a second signal
    exits at once. Nothing is written into ``out`` before the config has been checked
    against the run there and its checkpoint has been restored.

    Args:
      cfg: resolved config.
      out: run directory (created).
      resume: continue the run in ``out`` from its newest complete checkpoint (from step 0
        when it was stopped before its first checkpoint).
      progress: show progress (a bar on a terminal, one line per ~5% of the run otherwise).
      stop_after: stop (with a checkpoint) after this many outer steps in this call.

    Returns:
      {"theta", "step", "metrics": last metrics, "out": path}.

    Raises:
      RunDirError: ``out`` holds another run (without ``resume``), no run (with ``resume``)
        or a run of another config.
      lopt.CheckpointError: no checkpoint of the run restores.
      Interrupted: a signal stopped the run (after the checkpoint was saved).
    """
    from meta_train.checkpointing import Checkpointer

    out = Path(out)
    with _StopSignals() as sig:
        # multi-process: process 0 alone reads and writes ``out`` (meta_train.distributed)
        dist.same_on_all("config", cfg.to_json(), "config")
        held = contextlib.ExitStack()

        def check():
            if resume and saved_config(out) is None:
                check_run_dir(cfg, out, resume=True)    # raises: no run, nothing is created
            held.enter_context(hold_run_dir(out))     # one process per run directory
            for change in check_run_dir(cfg, out, resume=resume):
                print(f"resuming with a changed setting: {change}", file=sys.stderr)
            if not resume:   # at once: a run stopped before its first checkpoint resumes
                with sig.deferred():
                    _write_config(out, cfg)

        with held:
            dist.on_primary("check-run-dir", check, (RunDirError,))
            ckpt = Checkpointer(out / "checkpoints", keep=cfg.keep_checkpoints)
            try:
                trainer = MetaTrainer(cfg)
                state = _initial_state(trainer, ckpt, resume)
                start = int(state["step"])
                if start > cfg.outer_steps:
                    raise RunDirError(f"the run in {out} is at step {start}, past outer_steps="
                                      f"{cfg.outer_steps}; pass --outer_steps {start} or more")
                if dist.is_primary():
                    with sig.deferred():
                        _write_config(out, cfg)
                        _truncate_metrics(out / "metrics.jsonl", start)
                        if start:   # its lopt.json may be lost (a kill, a full disk): rewritten
                            ckpt.repair(start, _lopt_doc(cfg, state, start), cfg.to_dict())
                return _loop(cfg, out, trainer, state, ckpt, sig, progress, stop_after)
            finally:
                ckpt.close()


def _write_config(out: Path, cfg: MetaTrainConfig) -> None:
    from lopt.io.checkpoint import write_json
    write_json(out / "config.json", cfg.to_dict(), indent=2)


def _lopt_doc(cfg: MetaTrainConfig, state: dict, step: int) -> dict:
    """The ``lopt.json`` of step ``step``: theta, the LO config and the run's config."""
    return lopt_to_json(state["theta"], cfg.lo, {"step": step, "config": cfg.to_dict()})


def _initial_state(trainer: MetaTrainer, ckpt, resume: bool) -> dict:
    """A fresh state, or with ``resume`` the newest checkpoint's; multi-process, process 0
    restores it and sends it to the others (which never read the run directory)."""
    state = trainer.init_state()
    restored = {}

    def restore():
        if not (resume and ckpt.has_checkpoints()):
            return None
        if not dist.multi_process():
            restored["state"] = ckpt.restore(state)
        else:   # into local arrays: the others take their part from the broadcast
            local = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state)
            restored["state"] = dist.to_host(ckpt.restore(local))
        return "found"

    from lopt.io.checkpoint import CheckpointError
    if dist.on_primary("restore", restore, (CheckpointError,)):
        if dist.multi_process():
            host = dist.broadcast(restored.get("state") or dist.null_tree(state))
            restored["state"] = dist.place_like(host, state)
        state = restored["state"]
        if dist.is_primary():
            print(f"resumed from step {int(state['step'])}", file=sys.stderr)
    elif resume and dist.is_primary():
        print("no checkpoint yet: starting from step 0", file=sys.stderr)
    return state


class _NoWriter:
    """TensorBoard stand-in of the processes that write no files."""

    def scalars(self, step, values):
        pass

    def close(self):
        pass


def _loop(cfg, out, trainer, state, ckpt, sig, progress, stop_after):
    def save(step, state, force=False):
        if dist.multi_process():   # every process sends its shards; process 0 writes
            state = dist.to_host(state)
            if not dist.is_primary():
                return
        ckpt.save(step, state, _lopt_doc(cfg, state, step), cfg.to_dict(), force=force)

    def compute(state, t_last):
        new_state, new_mets = trainer.outer_step(state)
        step = int(new_state["step"])
        now = time.time()
        new_mets["outer_steps_per_s"] = 1.0 / max(now - t_last, 1e-9)
        new_mets["inner_steps_per_s"] = (new_mets["outer_steps_per_s"] * len(trainer.tasks)
                                         * 2 * cfg.es.num_pairs * cfg.es.unroll_length)
        if cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.outer_steps):
            new_mets.update(trainer.validate(new_state["theta"]))
        return new_state, new_mets, step, now

    primary = dist.is_primary()
    tb = TBWriter(out / "tb") if primary else _NoWriter()
    start = int(state["step"])
    end = cfg.outer_steps if stop_after is None else min(cfg.outer_steps, start + stop_after)
    bar = _progress(start, cfg.outer_steps, progress and primary)
    mets: dict[str, Any] = {}
    t_last = time.time()
    try:
        while int(state["step"]) < end:
            # a signal during the computation abandons this step at once: state is untouched
            new_state, new_mets, step, now = sig.call(lambda: compute(state, t_last))
            t_last = time.time() if "val/meta_loss" in new_mets else now
            with sig.deferred():   # the bookkeeping of a finished step is done whole
                state, mets = new_state, new_mets
                tb.scalars(step, mets)
                if primary:
                    with open(out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": step, "time": now, **mets}) + "\n")
                if step % cfg.checkpoint_every == 0 or step == end:
                    save(step, state)
                bar.set_postfix(meta_loss=f"{mets['meta_loss']:.4f}",
                                **({"val": f"{mets['val/meta_loss']:.4f}"}
                                   if "val/meta_loss" in mets else {}))
                bar.update(1)
            sig.agree()
    except Exception as e:
        if dist.is_collective_failure(e):   # another process died: name it, save nothing
            raise dist.lost(e) from None
        raise
    except KeyboardInterrupt:
        step = int(state["step"])
        print(f"\ninterrupted: saving checkpoint at step {step}", file=sys.stderr)
        if step > 0:
            save(step, state, force=True)
        raise
    finally:
        bar.close()
        tb.close()
    return {"theta": state["theta"], "step": int(state["step"]), "metrics": mets, "out": out}


def _progress(start, total, enabled):
    return progress_bar(total, initial=start, desc="meta-train", unit="step", enabled=enabled,
                        file=sys.stderr)
