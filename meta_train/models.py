"""Task models as pure functions of (params, inputs), in μP and SP forms.

Width scaling lives in :mod:`lopt.mup` (init per role, forward multipliers); each model
here only states the role of each of its parameters.

* MLP classifier: ``depth`` hidden layers of ``width`` units, then a readout.
* Pre-LayerNorm transformer LM: μP attention ``q.k / d_head`` (SP: ``/ sqrt(d_head)``),
  zero-init query and readout in μP; optional rank-factored attention ``W = A B^T``.
* CNN classifier: 3x3 convolutions (stride 2 down to 4x4), global average pooling, readout.
* Random-feature regression: fixed random linear (Gaussian) features of a latent Gaussian
  input with a power-law spectrum; only the readout trains.

Reference: Yang et al., Tensor Programs V, arXiv 2203.03466.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lopt.mup import forward_multiplier, init_leaf

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh,
               "silu": jax.nn.silu}
# Variance-preserving gain of each activation (He et al., arXiv 1502.01852, for ReLU; the
# usual tanh gain 5/3). Without it a depth-15 ReLU net at N(0, 1/fan_in) shrinks its
# activations by ~2^-7 and a zero readout sees almost no signal.
GAINS = {"relu": math.sqrt(2.0), "gelu": math.sqrt(2.0), "silu": math.sqrt(2.0),
         "tanh": 5.0 / 3.0}
INITS = ("he", "lecun")


@dataclasses.dataclass(frozen=True)
class MLPSpec:
    """MLP classifier. ``depth`` counts hidden layers (so depth+1 weight matrices).

    ``init_scheme="he"``: input and hidden kernels N(0, gain^2 / fan_in) with the activation's
    gain (variance-preserving at any depth); ``"lecun"``: N(0, 1 / fan_in). Biases are
    zero; the readout is zero (μP) or N(0, 1 / fan_in) (SP) either way.
    """
    in_dim: int
    width: int
    depth: int
    num_classes: int = 10
    activation: str = "relu"
    mup: bool = True
    output_mult: float = 1.0
    init_scheme: str = "he"

    def __post_init__(self):
        if self.init_scheme not in INITS:
            raise ValueError(f"MLP init_scheme {self.init_scheme!r}: must be one of {INITS}")

    def roles(self) -> dict:
        out = {}
        for i in range(self.depth + 1):
            role = "input" if i == 0 else ("output" if i == self.depth else "hidden")
            out[f"layer_{i}"] = {"w": role, "b": "vector"}
        return out

    def init(self, key: jax.Array) -> dict:
        dims = [self.in_dim] + [self.width] * self.depth + [self.num_classes]
        roles = self.roles()
        keys = jax.random.split(key, self.depth + 1)
        gain = GAINS.get(self.activation, 1.0) if self.init_scheme == "he" else 1.0
        return {f"layer_{i}": {
            "w": init_leaf(keys[i], (dims[i], dims[i + 1]), roles[f"layer_{i}"]["w"],
                           mup=self.mup, std_mult=gain),
            "b": jnp.zeros((dims[i + 1],), jnp.float32)} for i in range(self.depth + 1)}

    def apply(self, params: dict, x: jax.Array, return_preacts: bool = False):
        act = ACTIVATIONS[self.activation]
        pre = []
        h = x
        for i in range(self.depth + 1):
            layer = params[f"layer_{i}"]
            role = self.roles()[f"layer_{i}"]["w"]
            mult = forward_multiplier(role, layer["w"].shape[0], mup=self.mup,
                                      output_mult=self.output_mult)
            z = mult * (h @ layer["w"]) + layer["b"]
            if i < self.depth:
                pre.append(z)
                h = act(z)
            else:
                h = z
        return (h, pre) if return_preacts else h

    def layer_inputs(self, params: dict, x: jax.Array) -> dict:
        """A tree like params with each kernel's input activations ``[batch, fan_in]`` (as the
        layer sees them, after its μP forward multiplier) and None at biases."""
        _, pre = self.apply(params, x, return_preacts=True)
        act = ACTIVATIONS[self.activation]
        ins = [x] + [act(z) for z in pre]
        out = {}
        for i, h in enumerate(ins):
            role = self.roles()[f"layer_{i}"]["w"]
            mult = forward_multiplier(role, h.shape[-1], mup=self.mup,
                                      output_mult=self.output_mult)
            out[f"layer_{i}"] = {"w": mult * h, "b": None}
        return out


@dataclasses.dataclass(frozen=True)
class CNNSpec:
    """Convolutional classifier on square grey-scale images (inputs flattened, as the image
    tasks store them): a 3x3 stem convolution, ``depth - 1`` more 3x3 convolutions of
    ``channels`` channels (stride 2 while the feature map is larger than 4x4), ReLU after
    each, global average pooling and a dense readout.

    Kernels are in Flax layout ``[3, 3, in, out]`` (fan-in ``9 in``): the stem is the μP
    input, the other convolutions hidden, the readout output (zero, forward ``1/fan_in``, in
    μP); He init as :class:`MLPSpec`. Convolutions have no bias.
    """
    resolution: int
    channels: int
    depth: int
    num_classes: int = 10
    mup: bool = True
    output_mult: float = 1.0

    def __post_init__(self):
        if self.depth < 1 or self.channels < 1 or self.resolution < 1:
            raise ValueError(f"CNN resolution, channels and depth must be >= 1, got {self}")

    def roles(self) -> dict:
        out = {f"conv_{i}": "input" if i == 0 else "hidden" for i in range(self.depth)}
        out["readout"] = {"w": "output", "b": "vector"}
        return out

    def _strides(self):
        size, out = self.resolution, [1]
        for _ in range(1, self.depth):
            out.append(2 if size > 4 else 1)
            size = -(-size // out[-1])
        return out

    def init(self, key: jax.Array) -> dict:
        keys = jax.random.split(key, self.depth + 1)
        gain = GAINS["relu"]
        params = {f"conv_{i}": init_leaf(keys[i], (3, 3, 1 if i == 0 else self.channels,
                                                   self.channels),
                                         "input" if i == 0 else "hidden", mup=self.mup,
                                         std_mult=gain) for i in range(self.depth)}
        params["readout"] = {
            "w": init_leaf(keys[-1], (self.channels, self.num_classes), "output", mup=self.mup),
            "b": jnp.zeros((self.num_classes,), jnp.float32)}
        return params

    def apply(self, params: dict, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[:-1] + (self.resolution, self.resolution, 1))
        for i, stride in enumerate(self._strides()):
            h = jax.nn.relu(conv3x3(h, params[f"conv_{i}"], stride))
        h = jnp.mean(h, axis=(-3, -2))
        w = params["readout"]["w"]
        mult = forward_multiplier("output", w.shape[0], mup=self.mup,
                                  output_mult=self.output_mult)
        return mult * (h @ w) + params["readout"]["b"]


def conv3x3(h: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """The 3x3 "SAME" convolution of ``h`` (NHWC) by ``w`` (HWIO), as image patches times the
    kernel. Equal to ``lax.conv_general_dilated`` up to float rounding, and 7x faster in a
    training loop on XLA's CPU backend, where a convolution whose kernel is a loop-carried
    value (the parameters inside ``lax.scan``) is slow: an AdamW step of
    ``cnn-fmnist28-c32-d3`` inside ``inner.train`` took 1.22 s with the plain convolution and
    takes 0.17 s this way (one core). The patches' convolution has a constant kernel and the
    product is a plain matmul. tests/meta_train/test_tasks.py checks the equality."""
    patches = jax.lax.conv_general_dilated_patches(
        h, (3, 3), (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    c_in, c_out = w.shape[2], w.shape[3]
    # the patches' features are ordered (input channel, row, column)
    return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(c_in * 9, c_out)


def _layer_norm(x, scale, bias, eps=1e-5):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.var(x, -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """Pre-LayerNorm decoder-only transformer language model."""
    vocab: int
    d_model: int
    heads: int
    depth: int
    context: int
    mup: bool = True
    attn_rank: int = 0          # > 0: q, k, v, o weights are A @ B.T with this rank
    output_mult: float = 1.0

    def _attn_names(self):
        return ("wq", "wk", "wv", "wo")

    def roles(self) -> dict:
        d = {"embed": "input", "pos": "input", "ln_f": {"scale": "vector", "bias": "vector"},
             "readout": "output"}
        for i in range(self.depth):
            blk = {"ln1": {"scale": "vector", "bias": "vector"},
                   "ln2": {"scale": "vector", "bias": "vector"},
                   "mlp_in": "hidden", "mlp_out": "hidden"}
            for n in self._attn_names():
                blk[n] = {"a": "hidden", "b": "hidden"} if self.attn_rank else "hidden"
            d[f"block_{i}"] = blk
        return d

    def init(self, key: jax.Array) -> dict:
        dm, k = self.d_model, iter(jax.random.split(key, 8 * self.depth + 4))
        # Embeddings are inputs with fan-in "1" (one-hot): unit-variance entries.
        params = {"embed": jax.random.normal(next(k), (self.vocab, dm)),
                  "pos": jax.random.normal(next(k), (self.context, dm)),
                  "ln_f": {"scale": jnp.ones(dm), "bias": jnp.zeros(dm)},
                  "readout": init_leaf(next(k), (dm, self.vocab), "output", mup=self.mup)}
        for i in range(self.depth):
            blk = {"ln1": {"scale": jnp.ones(dm), "bias": jnp.zeros(dm)},
                   "ln2": {"scale": jnp.ones(dm), "bias": jnp.zeros(dm)},
                   "mlp_in": init_leaf(next(k), (dm, 4 * dm), "hidden", mup=self.mup),
                   "mlp_out": init_leaf(next(k), (4 * dm, dm), "hidden", mup=self.mup)}
            for n in self._attn_names():
                kk = next(k)
                if self.attn_rank:
                    r = self.attn_rank
                    ka, kb = jax.random.split(kk)
                    # W = A B^T with entries of W at variance 1/dm: A, B ~ N(0, 1/sqrt(dm r)).
                    s = (dm * r) ** -0.25
                    blk[n] = {"a": s * jax.random.normal(ka, (dm, r)),
                              "b": s * jax.random.normal(kb, (dm, r))}
                    if n == "wq" and self.mup:
                        blk[n]["a"] = jnp.zeros((dm, r))
                else:
                    blk[n] = init_leaf(kk, (dm, dm), "hidden", mup=self.mup)
                    if n == "wq" and self.mup:       # μP: zero-init query
                        blk[n] = jnp.zeros((dm, dm))
            params[f"block_{i}"] = blk
        return params

    def _w(self, p):
        return p["a"] @ p["b"].T if isinstance(p, dict) else p

    def apply(self, params: dict, tokens: jax.Array, return_inputs: bool = False):
        """Logits ``[batch, t, vocab]``; with ``return_inputs`` also :meth:`layer_inputs`."""
        b, t = tokens.shape
        ins = {}
        dm, nh = self.d_model, self.heads
        dh = dm // nh
        h = params["embed"][tokens] + params["pos"][:t]
        mask = jnp.tril(jnp.ones((t, t), bool))
        # μP: 1/d_head attention logits (Tensor Programs V, sec. 4); SP: 1/sqrt(d_head).
        att_scale = 1.0 / dh if self.mup else 1.0 / math.sqrt(dh)
        for i in range(self.depth):
            blk = params[f"block_{i}"]
            x = _layer_norm(h, blk["ln1"]["scale"], blk["ln1"]["bias"])
            q, kk, v = (x @ self._w(blk[n]) for n in ("wq", "wk", "wv"))
            q, kk, v = (z.reshape(b, t, nh, dh) for z in (q, kk, v))
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, kk) * att_scale
            logits = jnp.where(mask, logits, -1e30)
            a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
            a = a.reshape(b, t, dm)
            h = h + a @ self._w(blk["wo"])
            x2 = _layer_norm(h, blk["ln2"]["scale"], blk["ln2"]["bias"])
            u = jax.nn.gelu(x2 @ blk["mlp_in"])
            h = h + u @ blk["mlp_out"]
            ins[f"block_{i}"] = {"wq": x, "wk": x, "wv": x, "wo": a, "mlp_in": x2, "mlp_out": u}
        h = _layer_norm(h, params["ln_f"]["scale"], params["ln_f"]["bias"])
        mult = forward_multiplier("output", dm, mup=self.mup, output_mult=self.output_mult)
        logits = mult * (h @ params["readout"])
        if not return_inputs:
            return logits
        flat = lambda z: z.reshape(-1, z.shape[-1])     # noqa: E731
        tree = jax.tree.map(lambda _: None, params)
        for name, blk in ins.items():
            for n, z in blk.items():
                if not isinstance(params[name][n], dict):   # a factored weight has no kernel
                    tree[name][n] = flat(z)
        return logits, tree

    def layer_inputs(self, params: dict, tokens: jax.Array) -> dict:
        """A tree like params with each hidden kernel's input activations ``[batch * t,
        fan_in]`` (q, k, v: the first LayerNorm's output; o: the attention output; the MLP's
        two kernels: the second LayerNorm's output and the GELU output) and None elsewhere,
        including the factors of a factored weight."""
        return self.apply(params, tokens, return_inputs=True)[1]


@dataclasses.dataclass(frozen=True)
class RFRegressionSpec:
    """Random-feature linear regression with a power-law latent spectrum.

    Latent ``x ~ N(0, diag(k^-(1+s)))`` in R^M; teacher ``y = x . beta + noise`` with
    ``beta_k^2 lambda_k ~ k^-(1+s)`` (power-law coefficients); model ``f(x) = phi(x) . w``
    with ``phi(x) = F x / sqrt(M)``, ``F`` a fixed N x M Gaussian matrix; only ``w`` trains.
    """
    latent_dim: int = 4096
    num_features: int = 256
    s: float = 1.0
    noise: float = 0.0

    def spectrum(self):
        k = jnp.arange(1, self.latent_dim + 1, dtype=jnp.float32)
        return k ** -(1.0 + self.s)

    def problem(self, key: jax.Array, num_features: int | None = None):
        """One draw of the problem: (``F / sqrt(M)`` [num_features, M], spectrum [M], teacher
        ``beta ~ N(0, I)`` [M]), so the target carries power ``lambda_k`` in direction k."""
        kf, kb = jax.random.split(key)
        n = self.num_features if num_features is None else num_features
        feat = jax.random.normal(kf, (n, self.latent_dim)) / math.sqrt(self.latent_dim)
        return feat, self.spectrum(), jax.random.normal(kb, (self.latent_dim,))

    def roles(self) -> dict:
        return {"w": "vector"}

    def init(self, key: jax.Array) -> dict:
        del key
        return {"w": jnp.zeros((self.num_features,), jnp.float32)}
