"""Tasks: a model, its data and its loss, under a readable name; and the task registry.

A :class:`Task` gives ``init(key) -> params``, ``loss(params, batch)``, ``sample(data, key,
split)`` (jittable; ``data`` is passed explicitly so large arrays are never baked into
compiled code), the μP ``roles``, and ``normalizer`` (``log(num_classes)``) for the meta-loss.

Names describe the thing: ``mlp-fmnist8-w128-d3`` (MLP on 8x8 Fashion-MNIST, width 128,
3 hidden layers), ``mlp-fmnist28-w2048-d3``, ``mlp-digits8-w64-d2``, add ``-sp`` for the
standard parametrization, ``-b256`` for another batch size, ``-tanh`` for another
activation, ``-lecun`` for N(0, 1/fan_in) kernels instead of the default He init;
``lm-fortunes-d128-l2`` (char transformer, d_model 128, 2 layers;
``-h4`` heads, ``-c64`` context, ``-r8`` rank-factored attention);
``cnn-fmnist28-c32-d3`` (3x3 conv net, 32 channels, 3 convolutions, global average
pooling); ``rf-s1.0-n256`` (random-feature regression). Any name of these families works with
:func:`get_task`; :data:`TASKS` lists the registered ones.

The data part of a name is the data the task trains on, never a stand-in: ``fmnist8`` is
Fashion-MNIST 8x8 (packaged), ``fmnist14`` / ``fmnist28`` need the Fashion-MNIST idx files,
``digits8`` is scikit-learn digits, ``fortunes`` needs Debian fortunes, ``stdlib`` is the
Python standard library's source. Missing data raises ``meta_train.data.DataNotFoundError``;
``Task.source`` records where the data came from.

Run ``python -m meta_train.tasks --list`` to see them with parameter counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from meta_train import data as D
from meta_train.models import CNNSpec, MLPSpec, RFRegressionSpec, TransformerSpec


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """One inner problem. ``data`` is a pytree passed to ``sample`` inside jit."""
    name: str
    init: Callable[[jax.Array], Any]
    loss: Callable[[Any, Any], jax.Array]
    metrics: Callable[[Any, Any], dict]           # {"loss", "accuracy"} on a batch
    sample: Callable[[Any, jax.Array, str], Any]  # (data, key, split) -> batch
    data: Any                                     # pytree of arrays only
    roles: Any
    normalizer: float
    batch_size: int
    spec: Any
    source: str = ""
    # (params, batch) -> tree like params with each kernel's input activations [batch, fan_in]
    # (None elsewhere); None when the model does not expose them. Used by adaptive Schatten-p.
    activations: Callable[[Any, Any], Any] | None = None
    # (params, data) -> {"loss", "accuracy"} over the whole test split (None for online
    # data, which has no finite split); jittable
    split_metrics: Callable[[Any, Any], dict] | None = None

    def extra_args(self, needs_activations: bool):
        """The ``extra_args`` function of ``meta_train.inner.train`` for an optimizer that
        reads layer inputs (``{"activations": ...}`` per batch), or None when it does not or
        this task has none to give."""
        if not needs_activations or self.activations is None:
            return None
        return lambda params, batch: {"activations": self.activations(params, batch)}

    def num_params(self) -> int:
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def _xent(logits, labels):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1))


def _accuracy(logits, labels):
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def _classification_fns(apply):
    """(loss, metrics) of a classifier/LM whose ``apply(params, x)`` returns logits."""
    def loss(params, batch):
        x, y = batch
        return _xent(apply(params, x), y)

    def metrics(params, batch):
        x, y = batch
        logits = apply(params, x)
        return {"loss": _xent(logits, y), "accuracy": _accuracy(logits, y)}

    return loss, metrics


# Examples per forward pass of a whole-split evaluation: bounds its activation memory.
SPLIT_EVAL_CHUNK = 256


def _split_metrics_fn(apply, examples):
    """``(params, data) -> {"loss", "accuracy"}`` averaged over every example of the test
    split; ``examples(data) -> (x [N, ...], y [N, ...])``. Examples go through ``apply`` in
    chunks of :data:`SPLIT_EVAL_CHUNK` (the last one padded and masked). Every example
    weighs the same: an LM window's loss is the mean over its equally many tokens."""
    def metrics(params, data):
        x, y = examples(data)
        n = x.shape[0]
        chunk = min(SPLIT_EVAL_CHUNK, n)
        pad = (-n) % chunk
        padded = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        xs = padded(x).reshape((-1, chunk) + x.shape[1:])
        ys = padded(y).reshape((-1, chunk) + y.shape[1:])
        ws = (jnp.arange(n + pad) < n).astype(jnp.float32).reshape(-1, chunk)

        def one(args):
            xb, yb, wb = args
            logp = jax.nn.log_softmax(apply(params, xb).astype(jnp.float32))
            nll = -jnp.take_along_axis(logp, yb[..., None], -1)[..., 0]
            hit = (jnp.argmax(logp, -1) == yb).astype(jnp.float32)
            per = lambda v: jnp.mean(v.reshape(chunk, -1), -1)
            return jnp.sum(wb * per(nll)), jnp.sum(wb * per(hit))

        nll, hit = jax.lax.map(one, (xs, ys, ws))
        return {"loss": jnp.sum(nll) / n, "accuracy": jnp.sum(hit) / n}

    return metrics


def mlp_task(data: str = "fmnist", resolution: int = 8, width: int = 128, depth: int = 3,
             batch_size: int = 128, activation: str = "relu", mup: bool = True,
             init: str = "he", name: str | None = None) -> Task:
    ds = D.image_dataset(data, resolution)
    spec = MLPSpec(in_dim=resolution * resolution, width=width, depth=depth,
                   num_classes=ds.num_classes, activation=activation, mup=mup, init_scheme=init)

    loss, metrics = _classification_fns(spec.apply)

    def sample(d, key, split="train"):
        return D.sample_images(d[split], key, batch_size)

    return Task(name or f"mlp-{data}{resolution}-w{width}-d{depth}", spec.init, loss, metrics,
                sample, {"train": ds.train, "test": ds.test}, spec.roles(),
                math.log(ds.num_classes), batch_size, spec, ds.source,
                activations=lambda params, batch: spec.layer_inputs(params, batch[0]),
                split_metrics=_split_metrics_fn(spec.apply, lambda d: tuple(d["test"])))


def lm_task(corpus: str = "fortunes", d_model: int = 128, depth: int = 2, heads: int = 4,
            context: int = 64, batch_size: int = 32, attn_rank: int = 0, mup: bool = True,
            name: str | None = None) -> Task:
    ds = D.text_dataset(corpus, context)
    spec = TransformerSpec(vocab=ds.num_classes, d_model=d_model, heads=heads, depth=depth,
                           context=context, mup=mup, attn_rank=attn_rank)

    loss, metrics = _classification_fns(spec.apply)

    def sample(d, key, split="train"):
        return D.sample_text(d[split], key, batch_size, context)

    def windows(d):
        # the test text as consecutive, non-overlapping next-token windows
        tokens = d["test"].x
        count = (tokens.shape[0] - 1) // context
        return (tokens[:count * context].reshape(count, context),
                tokens[1:count * context + 1].reshape(count, context))

    return Task(name or f"lm-{corpus}-d{d_model}-l{depth}", spec.init, loss, metrics, sample,
                {"train": ds.train, "test": ds.test}, spec.roles(), math.log(ds.num_classes),
                batch_size, spec, ds.source,
                activations=lambda params, batch: spec.layer_inputs(params, batch[0]),
                split_metrics=_split_metrics_fn(spec.apply, windows))


def cnn_task(data: str = "fmnist", resolution: int = 8, channels: int = 16, depth: int = 3,
             batch_size: int = 128, mup: bool = True, name: str | None = None) -> Task:
    """A convolutional classifier (:class:`meta_train.models.CNNSpec`) on square images."""
    ds = D.image_dataset(data, resolution)
    spec = CNNSpec(resolution=resolution, channels=channels, depth=depth,
                   num_classes=ds.num_classes, mup=mup)
    loss, metrics = _classification_fns(spec.apply)

    def sample(d, key, split="train"):
        return D.sample_images(d[split], key, batch_size)

    return Task(name or f"cnn-{data}{resolution}-c{channels}-d{depth}", spec.init, loss,
                metrics, sample, {"train": ds.train, "test": ds.test}, spec.roles(),
                math.log(ds.num_classes), batch_size, spec, ds.source,
                split_metrics=_split_metrics_fn(spec.apply, lambda d: tuple(d["test"])))


def rf_task(s: float = 1.0, num_features: int = 256, latent_dim: int = 4096,
            batch_size: int = 256, noise: float = 0.0, seed: int = 0,
            name: str | None = None) -> Task:
    spec = RFRegressionSpec(latent_dim=latent_dim, num_features=num_features, s=s, noise=noise)
    feat, lam, beta = spec.problem(jax.random.key(seed))
    d = {"feat": feat, "beta": beta, "sqrt_lam": jnp.sqrt(lam)}

    def draw(dd, key):
        kx, kn = jax.random.split(key)
        x = jax.random.normal(kx, (batch_size, latent_dim)) * dd["sqrt_lam"]
        y = x @ dd["beta"] + noise * jax.random.normal(kn, (batch_size,))
        return x @ dd["feat"].T, y

    def loss(params, batch):
        phi, y = batch
        return 0.5 * jnp.mean((phi @ params["w"] - y) ** 2)

    def metrics(params, batch):
        return {"loss": loss(params, batch), "accuracy": jnp.float32(0.0)}

    def sample(dd, key, split="train"):
        # Online data: every batch is fresh; the test split is another stream.
        return draw(dd, jax.random.fold_in(key, 0 if split == "train" else 1))

    # Normalizer: loss at w = 0 is E[y^2]/2 = (sum lam + noise^2) / 2.
    norm = float(0.5 * (jnp.sum(lam) + noise ** 2))
    return Task(name or f"rf-s{s}-n{num_features}", spec.init, loss, metrics, sample, d,
                spec.roles(), norm, batch_size, spec, "synthetic")


_MLP_RE = re.compile(r"^mlp-(fmnist|digits)(\d+)-w(\d+)-d(\d+)((?:-(?:sp|b\d+|relu|gelu|tanh|silu|lecun))*)$")
_LM_RE = re.compile(r"^lm-(fortunes|stdlib)-d(\d+)-l(\d+)((?:-(?:sp|h\d+|c\d+|r\d+|b\d+))*)$")
_CNN_RE = re.compile(r"^cnn-(fmnist|digits)(\d+)-c(\d+)-d(\d+)((?:-(?:sp|b\d+))*)$")
_RF_RE = re.compile(r"^rf-s([0-9.]+)-n(\d+)((?:-(?:m\d+|b\d+|noise[0-9.]+|seed\d+))*)$")


def _opts(suffix: str) -> list[str]:
    return [o for o in suffix.split("-") if o]


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown task {name!r}; see `python -m meta_train.tasks --list` "
                      "for names (e.g. mlp-fmnist8-w128-d3, lm-fortunes-d128-l2, rf-s1.0-n256)")


@dataclasses.dataclass(frozen=True)
class TaskName:
    """A task name read by the grammar of this module's docstring: the one parser of names
    (the eval suite derives wider, deeper and SP cells, and reports group cells, with it).

    ``prefix`` is the family and data (``mlp-fmnist8``, ``lm-fortunes``, ``rf-s1.0-n256``);
    ``width`` / ``depth`` are an MLP's ``-w`` / ``-d`` and a transformer's d_model ``-d`` /
    layers ``-l`` (None for ``rf-`` tasks); ``options`` the rest in order (``sp``, ``b256``,
    ``h4``, ...). ``str()`` gives the name back.
    """
    prefix: str
    width: int | None
    depth: int | None
    options: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str) -> "TaskName":
        """Raises: ValueError: ``name`` is not a task name (one line naming it)."""
        if m := _MLP_RE.match(name):
            return cls(f"mlp-{m[1]}{m[2]}", int(m[3]), int(m[4]), tuple(_opts(m[5])))
        if m := _LM_RE.match(name):
            return cls(f"lm-{m[1]}", int(m[2]), int(m[3]), tuple(_opts(m[4])))
        if m := _CNN_RE.match(name):
            return cls(f"cnn-{m[1]}{m[2]}", int(m[3]), int(m[4]), tuple(_opts(m[5])))
        if m := _RF_RE.match(name):
            return cls(f"rf-s{m[1]}-n{m[2]}", None, None, tuple(_opts(m[3])))
        raise _unknown(name)

    @property
    def keys(self) -> tuple[str, str] | tuple[None, None]:
        """The name keys of width and depth: ("w", "d") for MLPs, ("d", "l") for LMs."""
        return {"mlp": ("w", "d"), "lm": ("d", "l"), "cnn": ("c", "d")}.get(self.prefix.split("-")[0],
                                                          (None, None))

    def __str__(self) -> str:
        wkey, dkey = self.keys
        dims = f"-{wkey}{self.width}-{dkey}{self.depth}" if wkey else ""
        return self.prefix + dims + "".join(f"-{o}" for o in self.options)

    def with_width(self, width: int) -> "TaskName":
        return dataclasses.replace(self, width=int(width))

    def with_depth(self, depth: int) -> "TaskName":
        return dataclasses.replace(self, depth=int(depth))

    @property
    def sp(self) -> bool:
        return "sp" in self.options

    def variant(self, parametrization: str) -> "TaskName":
        """The task in a parametrization: ``sp`` last among the options for "sp", none for
        "mup"."""
        rest = tuple(o for o in self.options if o != "sp")
        return dataclasses.replace(self, options=rest + (("sp",) if parametrization == "sp"
                                                          else ()))

    @property
    def family(self) -> str:
        """The name with its width wildcarded (``mlp-fmnist8-w*-d3``): the tasks an LR
        transfers between under μP; the name itself for tasks without a width."""
        if self.width is None:
            return str(self)
        wkey, dkey = self.keys
        return (f"{self.prefix}-{wkey}*-{dkey}{self.depth}"
                + "".join(f"-{o}" for o in self.options))

    def without_depth(self) -> str:
        """The name with its depth wildcarded (``mlp-fmnist8-w128-d*``)."""
        wkey, dkey = self.keys
        return (f"{self.prefix}-{wkey}{self.width}-{dkey}*"
                + "".join(f"-{o}" for o in self.options)) if wkey else str(self)


def parse_task(name: str) -> Task:
    """Builds a task from its name (see the module docstring for the grammar)."""
    if m := _MLP_RE.match(name):
        kw = dict(data=m[1], resolution=int(m[2]), width=int(m[3]), depth=int(m[4]))
        for o in _opts(m[5]):
            if o == "sp":
                kw["mup"] = False
            elif o == "lecun":
                kw["init"] = "lecun"
            elif o[0] == "b":
                kw["batch_size"] = int(o[1:])
            else:
                kw["activation"] = o
        return mlp_task(**kw, name=name)
    if m := _LM_RE.match(name):
        kw = dict(corpus=m[1], d_model=int(m[2]), depth=int(m[3]))
        keys = {"h": "heads", "c": "context", "r": "attn_rank", "b": "batch_size"}
        for o in _opts(m[4]):
            if o == "sp":
                kw["mup"] = False
            else:
                kw[keys[o[0]]] = int(o[1:])
        return lm_task(**kw, name=name)
    if m := _CNN_RE.match(name):
        kw = dict(data=m[1], resolution=int(m[2]), channels=int(m[3]), depth=int(m[4]))
        for o in _opts(m[5]):
            if o == "sp":
                kw["mup"] = False
            else:
                kw["batch_size"] = int(o[1:])
        return cnn_task(**kw, name=name)
    if m := _RF_RE.match(name):
        kw = dict(s=float(m[1]), num_features=int(m[2]))
        for o in _opts(m[3]):
            if o.startswith("noise"):
                kw["noise"] = float(o[5:])
            elif o.startswith("seed"):
                kw["seed"] = int(o[4:])
            elif o[0] == "m":
                kw["latent_dim"] = int(o[1:])
            else:
                kw["batch_size"] = int(o[1:])
        return rf_task(**kw, name=name)
    raise _unknown(name)


# The registered tasks: plain dict of name -> factory.
TASKS: dict[str, Callable[[], Task]] = {}
for _n in ([f"mlp-fmnist{r}-w{w}-d3" for r in (8, 14) for w in (32, 64, 128)]
           + ["mlp-fmnist8-w128-d16", "mlp-fmnist28-w1024-d3", "mlp-fmnist28-w2048-d3",
              "mlp-fmnist8-w128-d3-sp", "mlp-digits8-w64-d2",
              "lm-fortunes-d64-l2", "lm-fortunes-d128-l2", "lm-fortunes-d128-l2-r16",
              "cnn-fmnist8-c16-d3", "cnn-fmnist28-c32-d3",
              "rf-s1.0-n256"]):
    TASKS[_n] = (lambda n=_n: parse_task(n))


def get_task(name: str) -> Task:
    """A registered task, or any name of a known family."""
    return TASKS[name]() if name in TASKS else parse_task(name)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m meta_train.tasks",
                                 description="List the registered tasks.")
    ap.add_argument("--list", action="store_true", help="print every task with its size")
    args = ap.parse_args(argv)
    if not args.list:
        ap.print_help()
        return
    print(f"{'task':28s} {'params':>10s}  {'batch':>5s}  data")
    for n in TASKS:
        try:
            t = get_task(n)
        except D.DataNotFoundError:
            print(f"{n:28s} {'':>10s}  {'':>5s}  (data not installed)")
            continue
        print(f"{n:28s} {t.num_params():>10,d}  {t.batch_size:>5d}  {t.source}")


if __name__ == "__main__":
    main()
