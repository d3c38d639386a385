"""μP roles, fan-ins and depth of ordinary Flax models (ResNets, tied-embedding GPTs,
scanned blocks, Gemma-style einsum attention, nnx), and the roles of the project's own
task models kept exactly as they were."""

import json
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt.mup import roles as R
from tests.lopt.roles_golden import FIXTURE, LO_CONSTANTS

GOLDEN = json.loads(FIXTURE.read_text())


def _flat(tree):
    return {R.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _tree(leaves):
    """A params-like tree of shapes built in the order of ``leaves`` ([(path, shape)])."""
    tree: dict = {}
    for path, shape in leaves:
        *parts, last = path.split("/")
        node = tree
        for c in parts:
            node = node.setdefault(c, {})
        node[last] = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    return tree


@pytest.mark.parametrize("rebuilt", [False, True], ids=["creation-order", "jax-sorted"])
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_task_and_client_models_keep_their_roles_multipliers_and_depth(name, rebuilt):
    want = GOLDEN[name]
    params = _tree(want["leaves"])
    if rebuilt:                          # as jit / eval_shape / tree.map hand it over
        params = jax.tree.map(lambda x: x, params)
    R._ORDERS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roles = lopt.infer_roles(params)
    assert _flat(roles) == want["roles"]
    assert R.model_depth(params, roles) == want["depth"]
    for base, depth_ref in LO_CONSTANTS:
        mults = lopt.lr_multipliers(params, roles, True, base=base, depth_ref=depth_ref)
        assert _flat(mults) == want[f"lr_mult/{base:g}/{depth_ref}"]
        assert _flat(lopt.readout_multipliers(params, roles, True, base=base)) == \
            want[f"readout/{base:g}"]


def _ordered_shapes(model, *args):
    """``model.init(key, *args)["params"]`` as shapes, in the order Flax created them
    (read while tracing; ``jax.eval_shape`` itself hands back sorted dicts)."""
    seen = []

    def init(key):
        p = model.init(key, *args)["params"]
        seen.append(_shapes_in_order(p))
        return p
    jax.eval_shape(init, jax.random.key(0))
    return seen[0]


def _shapes_in_order(tree):
    if isinstance(tree, dict):
        return {k: _shapes_in_order(v) for k, v in tree.items()}
    return jax.ShapeDtypeStruct(tuple(tree.shape), jnp.float32)


def _roles_and_fans(params, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a person's roles are not a guess
        roles = lopt.infer_roles(params, **kw)
    return _flat(roles), _flat(lopt.fan_ins(params)), R.model_depth(params, roles)


# --- Flax's ImageNet ResNet (examples/imagenet/models.py), small filters --------------

class ResNetBlock(nn.Module):
    filters: int
    conv: type
    norm: type
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


class BottleneckResNetBlock(nn.Module):
    filters: int
    conv: type
    norm: type
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    stage_sizes: tuple
    block_cls: type
    num_classes: int = 10
    num_filters: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        from functools import partial
        conv = partial(nn.Conv, use_bias=False)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2 ** i, strides=strides, conv=conv,
                                   norm=norm)(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


RESNETS = {"resnet18": ((2, 2, 2, 2), ResNetBlock, 1),
           "resnet50": ((3, 4, 6, 3), BottleneckResNetBlock, 4)}


@pytest.mark.parametrize("arch", sorted(RESNETS))
def test_flax_resnet_stem_is_the_input_and_dense_head_the_readout(arch):
    stages, block, expansion = RESNETS[arch]
    params = _ordered_shapes(ResNet(stages, block), jnp.zeros((1, 32, 32, 3)))
    roles, fans, depth = _roles_and_fans(params)
    assert roles["conv_init/kernel"] == "input" and fans["conv_init/kernel"] == 7 * 7 * 3
    assert roles["Dense_0/kernel"] == "output" and fans["Dense_0/kernel"] == 64 * expansion
    assert roles["Dense_0/bias"] == "vector" and roles["bn_init/scale"] == "vector"
    blocks = [k for k in roles if k.startswith(block.__name__) and k.endswith("kernel")]
    assert blocks and all(roles[k] == "hidden" for k in blocks)
    first = f"{block.__name__}_0/Conv_{1 if expansion == 4 else 0}/kernel"
    assert fans[first] == 3 * 3 * 8                    # a 3x3 conv on 8 channels
    assert depth == sum(stages)                        # residual blocks


def test_resnet_without_creation_order_raises_with_the_table_and_the_override_that_fixes_it():
    params = _ordered_shapes(ResNet((2, 2, 2, 2), ResNetBlock), jnp.zeros((1, 32, 32, 3)))
    rebuilt = jax.tree.map(lambda x: x, params)        # sorted keys, as inside jit
    R._ORDERS.clear()
    with pytest.raises(lopt.mup.roles.RoleInferenceError) as e:
        lopt.infer_roles(rebuilt)
    text = str(e.value)
    assert "conv_init/kernel" in text and "lr_mult" in text and "guessed" in text
    fix = {r"^conv_init/kernel$": "input", r"^Dense_0/kernel$": "output"}
    assert repr(fix)[1:-1] in text                     # the suggested override is the right one
    roles = _flat(lopt.infer_roles(rebuilt, fix))
    assert roles["conv_init/kernel"] == "input" and roles["Dense_0/kernel"] == "output"
    # once lopt has seen the model's own params, the order is known for the structure
    lopt.infer_roles(params)
    assert _flat(lopt.infer_roles(rebuilt)) == _flat(lopt.infer_roles(params))


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_an_optimizer_initialized_outside_jit_knows_the_creation_order_inside_jit():
    model = ResNet((1, 1), ResNetBlock)
    x = jnp.zeros((2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    params = variables["params"]
    R._ORDERS.clear()
    opt = lopt.make(lopt.init_theta(jax.random.key(0)), mup=True)
    state = opt.init(params)                            # outside jit: creation order seen

    def loss(p):
        return jnp.mean(model.apply({"params": p, **{k: v for k, v in variables.items()
                                                      if k != "params"}}, x) ** 2)
    step = jax.jit(lambda p, s: opt.update(jax.grad(loss)(p), s, p))
    updates, _ = step(params, state)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


# --- a GPT with tied embeddings -----------------------------------------------------

class GPTBlock(nn.Module):
    d: int
    heads: int = 2

    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x))
        h = nn.gelu(nn.Dense(4 * self.d)(nn.LayerNorm()(x)))
        return x + nn.Dense(self.d)(h)


class TiedGPT(nn.Module):
    depth: int
    vocab: int = 50
    d: int = 16

    @nn.compact
    def __call__(self, tokens):
        wte = nn.Embed(self.vocab, self.d, name="wte")
        x = wte(tokens) + nn.Embed(8, self.d, name="wpe")(jnp.arange(tokens.shape[1]))
        for i in range(self.depth):
            x = GPTBlock(self.d, name=f"h_{i}")(x)
        return wte.attend(nn.LayerNorm(name="ln_f")(x))   # logits from the embedding


@pytest.mark.parametrize("rebuilt", [False, True])
def test_tied_embedding_gpt_has_no_readout_but_a_tied_input(rebuilt):
    params = _ordered_shapes(TiedGPT(3), jnp.zeros((1, 8), jnp.int32))
    if rebuilt:
        params = jax.tree.map(lambda x: x, params)
    roles, fans, depth = _roles_and_fans(params)
    assert roles["wte/embedding"] == "input" and roles["wpe/embedding"] == "input"
    assert "output" not in roles.values()
    assert roles["h_2/Dense_1/kernel"] == "hidden" and fans["h_2/Dense_1/kernel"] == 64
    assert fans["h_2/MultiHeadDotProductAttention_0/query/kernel"] == 16
    assert depth == 3
    table = lopt.describe_roles(params)
    assert [ln for ln in table.splitlines() if ln.startswith("wte/")][0].endswith(
        "tied: input and readout")
    # the embedding keeps its step and gets no readout conversion (the model's 1/d is its own)
    assert _flat(lopt.readout_multipliers(params, lopt.infer_roles(params)))["wte/embedding"] == 1.0


def test_an_untied_lm_with_vocab_equal_to_width_keeps_its_dense_readout():
    class LM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(16, 16, name="embed")(tokens)
            for i in range(2):
                x = GPTBlock(16, name=f"block_{i}")(x)
            return nn.Dense(16)(x)                       # readout [d, vocab], vocab == d
    roles, _, _ = _roles_and_fans(_ordered_shapes(LM(), jnp.zeros((1, 4), jnp.int32)))
    assert roles["Dense_0/kernel"] == "output"


# --- a two-layer classifier head ----------------------------------------------------

class TwoLayerHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(h)


class WithHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(32)(x))
        return TwoLayerHead(name="head")(x)


@pytest.mark.parametrize("rebuilt", [False, True])
def test_only_the_last_matrix_of_a_two_layer_head_is_the_readout(rebuilt):
    params = _ordered_shapes(WithHead(), jnp.zeros((1, 12)))
    if rebuilt:
        params = jax.tree.map(lambda x: x, params)
    roles, fans, depth = _roles_and_fans(params)
    assert roles == {"Dense_0/kernel": "input", "Dense_0/bias": "vector",
                     "Dense_1/kernel": "hidden", "Dense_1/bias": "vector",
                     "head/Dense_0/kernel": "hidden", "head/Dense_0/bias": "vector",
                     "head/Dense_1/kernel": "output", "head/Dense_1/bias": "vector"}
    assert fans["head/Dense_1/kernel"] == 32 and depth == 2


# --- nn.scan-stacked blocks ---------------------------------------------------------

class ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        h = nn.Dense(64)(nn.LayerNorm()(x))
        return x + nn.Dense(16)(nn.relu(h)), None


class Scanned(nn.Module):
    layers: int

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16)(x)
        x, _ = nn.scan(ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=self.layers)()(x, None)
        return nn.Dense(10)(x)


@pytest.mark.parametrize("rebuilt", [False, True])
def test_scanned_kernels_are_read_per_layer(rebuilt):
    params = _ordered_shapes(Scanned(5), jnp.zeros((1, 12)))
    if rebuilt:
        params = jax.tree.map(lambda x: x, params)
    roles, fans, depth = _roles_and_fans(params)
    assert roles["Dense_0/kernel"] == "input" and roles["Dense_1/kernel"] == "output"
    assert roles["ScanScanBlock_0/Dense_0/kernel"] == "hidden"
    assert fans["ScanScanBlock_0/Dense_0/kernel"] == 16        # [5, 16, 64]: d, not 5 d
    assert fans["ScanScanBlock_0/Dense_1/kernel"] == 64        # [5, 64, 16]
    assert roles["ScanScanBlock_0/Dense_0/bias"] == "vector"
    assert depth == 5                                          # layers, not leaves
    mults = _flat(lopt.lr_multipliers(params, lopt.infer_roles(params)))
    assert mults["ScanScanBlock_0/Dense_1/kernel"] == pytest.approx(1 / 64)


# --- Gemma-style einsum attention ---------------------------------------------------

class Einsum(nn.Module):
    shape: tuple

    @nn.compact
    def __call__(self, eqn, x):
        return jnp.einsum(eqn, x, self.param("w", nn.initializers.normal(), self.shape))


class GemmaAttention(nn.Module):
    d: int = 16
    heads: int = 2
    hd: int = 8

    @nn.compact
    def __call__(self, x):
        q, k, v = Einsum((3, self.heads, self.d, self.hd), name="qkv_einsum")(
            "BTD,SNDH->SBTNH", x)
        p = jax.nn.softmax(jnp.einsum("BTNH,BSNH->BTNS", q, k) / self.hd)
        enc = jnp.einsum("BTNS,BSNH->BTNH", p, v)
        return Einsum((self.heads, self.hd, self.d), name="attn_vec_einsum")("BTNH,NHD->BTD", enc)


class GemmaMLP(nn.Module):
    d: int = 16
    ffw: int = 32

    @nn.compact
    def __call__(self, x):
        gate = jnp.einsum("BTD,NDF->BTNF", x, self.param(
            "gating_einsum", nn.initializers.normal(), (2, self.d, self.ffw)))
        h = nn.gelu(gate[..., 0, :]) * gate[..., 1, :]
        return h @ self.param("linear", nn.initializers.normal(), (self.ffw, self.d))


class GemmaBlock(nn.Module):
    """Gemma's layer (google-deepmind/gemma, gemma/modules.py): names and shapes."""

    @nn.compact
    def __call__(self, x):
        x = x + GemmaAttention(name="attn")(nn.RMSNorm(name="pre_attention_norm")(x))
        return x + GemmaMLP(name="mlp")(nn.RMSNorm(name="pre_ffw_norm")(x))


class Gemma(nn.Module):
    layers: int

    @nn.compact
    def __call__(self, tokens):
        table = self.param("input_embedding", nn.initializers.normal(), (40, 16))
        x = table[tokens]
        for i in range(self.layers):
            x = GemmaBlock(name=f"layer_{i}")(x)
        return nn.RMSNorm(name="final_norm")(x) @ table.T


@pytest.mark.parametrize("rebuilt", [False, True])
def test_gemma_einsum_kernels_contract_the_model_width(rebuilt):
    params = _ordered_shapes(Gemma(2), jnp.zeros((1, 4), jnp.int32))
    if rebuilt:
        params = jax.tree.map(lambda x: x, params)
    roles, fans, depth = _roles_and_fans(params)
    assert roles["input_embedding"] == "input" and "output" not in roles.values()
    assert fans["layer_0/attn/qkv_einsum/w"] == 16             # [3, heads, d, hd]: d
    assert fans["layer_0/attn/attn_vec_einsum/w"] == 2 * 8     # [heads, hd, d]: heads hd
    assert fans["layer_1/mlp/gating_einsum"] == 16 and fans["layer_1/mlp/linear"] == 32
    assert all(roles[k] == "hidden" for k in roles if k.startswith("layer_")
               and not k.endswith("scale"))
    assert depth == 2


# --- nnx ------------------------------------------------------------------------------

def _nnx_model(blocks: int):
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False,
                                               rngs=rngs)
            self.mlp = nnx.Linear(16, 16, rngs=rngs)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(30, 16, rngs=rngs)
            self.blocks = nnx.List([Block(rngs) for _ in range(blocks)])
            self.norm = nnx.LayerNorm(16, rngs=rngs)
            self.head = nnx.Linear(16, 30, rngs=rngs)
    return nnx, Model(nnx.Rngs(0))


@pytest.mark.parametrize("pure", [False, True], ids=["State", "pure-dict"])
def test_nnx_state_roles_fan_ins_and_depth(pure):
    nnx, model = _nnx_model(3)
    state = nnx.state(model, nnx.Param)
    params = nnx.to_pure_dict(state) if pure else state
    roles, fans, depth = _roles_and_fans(params)
    v = "" if pure else "/value"
    assert roles[f"embed/embedding{v}"] == "input" and roles[f"head/kernel{v}"] == "output"
    assert roles[f"blocks/1/attn/query/kernel{v}"] == "hidden"
    assert fans[f"blocks/1/attn/query/kernel{v}"] == 16       # [d, heads, hd]: d
    assert roles[f"blocks/1/attn/query/bias{v}"] == "vector"  # [heads, hd]
    assert fans[f"blocks/2/attn/out/kernel{v}"] == 16
    assert depth == 3


# --- depth grows with every block, in every family ------------------------------------

class LinenMLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.hidden + 1):
            x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(10)(x)


def _family_params(family: str, n: int):
    from eval.clients import LM
    tok = jnp.zeros((1, 8), jnp.int32)
    if family == "nnx":
        nnx, model = _nnx_model(n)
        return nnx.state(model, nnx.Param)
    model, x = {"mlp": (LinenMLP(n), jnp.zeros((1, 12))),
                "transformer": (LM(vocab=30, d=16, depth=n, heads=2, context=8), tok),
                "resnet": (ResNet((n,), ResNetBlock), jnp.zeros((1, 16, 16, 3))),
                "bottleneck-resnet": (ResNet((n,), BottleneckResNetBlock),
                                      jnp.zeros((1, 16, 16, 3))),
                "tied-gpt": (TiedGPT(n), tok), "scan": (Scanned(n), jnp.zeros((1, 12))),
                "gemma": (Gemma(n), tok)}[family]
    return _ordered_shapes(model, x)


@pytest.mark.parametrize("family", ["mlp", "transformer", "resnet", "bottleneck-resnet",
                                    "tied-gpt", "scan", "gemma", "nnx"])
def test_model_depth_counts_blocks_for_one_to_six_blocks(family):
    depths = []
    for n in range(1, 7):
        params = _family_params(family, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            depths.append(R.model_depth(params, lopt.infer_roles(params)))
    assert depths == [1, 2, 3, 4, 5, 6]


# --- μP init: the tasks' own ------------------------------------------------------------

def _std_per_leaf(tree):
    return {k: float(np.std(np.asarray(v))) for k, v in _flat(tree).items()}


def test_mup_init_params_reproduces_the_mlp_tasks_init():
    from meta_train.models import MLPSpec
    spec = MLPSpec(in_dim=64, width=512, depth=3)        # ReLU, He init, μP: mulo-cpu's tasks
    task = spec.init(jax.random.key(0))
    ours = lopt.mup_init_params(jax.random.key(1), task)   # roles inferred, default gain
    want, got = _std_per_leaf(task), _std_per_leaf(ours)
    assert want.keys() == got.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=0.03, abs=1e-7), k
    assert got["layer_3/w"] == 0.0
    assert want["layer_1/w"] == pytest.approx((2 / 512) ** 0.5, rel=0.02)


def test_mup_init_params_reproduces_the_transformer_tasks_init_with_unit_embeddings():
    from meta_train.models import TransformerSpec
    spec = TransformerSpec(vocab=128, d_model=128, heads=4, depth=2, context=64)
    task = spec.init(jax.random.key(0))
    ours = lopt.mup_init_params(jax.random.key(1), task, gain=1.0)   # the LM tasks: no gain
    want, got = _std_per_leaf(task), _std_per_leaf(ours)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=0.05, abs=1e-7), k
    assert got["embed"] == pytest.approx(1.0, rel=0.03)              # unit variance
    assert got["block_0/wq"] == 0.0 and got["readout"] == 0.0         # zero query and readout
    ln = _flat(ours)["block_1/ln1/scale"]
    assert float(jnp.min(ln)) == 1.0 == float(jnp.max(ln))


def test_mup_init_params_on_a_flax_lm_gives_unit_embeddings_zero_query_and_nnx_gains_of_one():
    from eval.clients import LM
    params = LM(vocab=30, d=64, depth=1, heads=2, context=8).init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    new = _flat(lopt.mup_init_params(jax.random.key(1), params))
    assert float(np.std(new["embed/embedding"])) == pytest.approx(1.0, rel=0.05)
    assert float(jnp.abs(new["Block_0/MultiHeadDotProductAttention_0/query/kernel"]).max()) == 0
    assert float(jnp.abs(new["head/kernel"]).max()) == 0
    nnx, model = _nnx_model(1)
    state = lopt.mup_init_params(jax.random.key(2), nnx.state(model, nnx.Param))
    assert float(jnp.min(_flat(state)["norm/scale/value"])) == 1.0    # a norm gain, not a bias
