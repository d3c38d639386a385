"""Section D: library input, in this process. The model is a 3-layer dict MLP (Dense_0..2,
kernel and bias, widths 8->16->16->4); the optimizer is lopt.load("mulo-cpu") unless the
row says otherwise. An error is judged by its type (a ValueError the library raises, not
one from inside jax or re) and by being one line that names the problem."""

from __future__ import annotations

import json
import shutil
import warnings

from common import case

WIDTHS = (8, 16, 16, 4)


def _mlp(dtype="float32"):
    import jax
    import jax.numpy as jnp
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * (len(WIDTHS) - 1))
    p = {}
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        p[f"Dense_{i}"] = {"kernel": jax.random.normal(keys[2 * i], (a, b), dtype) / a ** 0.5,
                           "bias": 0.1 * jax.random.normal(keys[2 * i + 1], (b,), dtype)}
    return jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), p)


def _grads(params, seed=1):
    import jax
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return tree.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in
                           zip(keys, leaves)])


def _opt(name="mulo-cpu", **kw):
    import lopt
    return lopt.load(name, **kw)


def _step(opt, params, grads, steps=1, **kw):
    s = opt.init(params)
    out = []
    for _ in range(steps):
        u, s = opt.update(grads, s, params, **kw)
        out.append(u)
    return out, s


def _finite(tree):
    import jax
    import numpy as np
    return all(bool(np.all(np.isfinite(np.asarray(x, np.float32))))
               for x in jax.tree.leaves(tree))


def _same(a, b):
    import numpy as np
    return np.array_equal(np.asarray(a), np.asarray(b))


def _raises(rec, fn, types=(ValueError,), what="a typed one-line error", own=True):
    """Calls fn; records the exception; checks it is of ``types``, raised by lopt (not from
    inside jax, numpy or re) and one line."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - judged below
        import traceback
        origin = traceback.extract_tb(e.__traceback__)[-1].filename
        rec["error"] = f"{type(e).__module__}.{type(e).__name__}: {e}"[:600]
        rec["raised_in"] = origin.split("/wt-probe/")[-1].split("site-packages/")[-1]
        rec.check(isinstance(e, types) and "\n" not in str(e), what)
        if own:
            rec.check("lopt/" in origin or "meta_train/" in origin,
                      "raised by the library, not from inside a dependency")
        return e
    rec["error"] = None
    rec.check(False, "an error is raised", "bad")
    return None


def _ckpt_error(rec, path):
    import lopt
    _raises(rec, lambda: lopt.load(path), (lopt.CheckpointError,))


def _lopt_doc(ctx):
    return json.loads((ctx.ref("ref20") / "checkpoints" / "20" / "lopt.json").read_text())


def _write_signed(d, doc):
    """``doc`` as d/lopt.json with a correct sha256: the content checks, not the digest, see
    the change."""
    from lopt.io.checkpoint import doc_digest
    d.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in doc.items() if k != "sha256"}
    (d / "lopt.json").write_text(json.dumps({**doc, "sha256": doc_digest(doc)}))
    return d


@case("D01", 'lopt.load("mulo-nope")')
def d01(ctx, rec):
    _ckpt_error(rec, "mulo-nope")


@case("D02", "Directory holding theta.npz and a README")
def d02(ctx, rec):
    d = ctx.case_dir("D02")
    (d / "theta.npz").write_bytes(b"PK\x03\x04")
    (d / "README").write_text("hi")
    _ckpt_error(rec, d)


@case("D03", "A plain text file (README.md)")
def d03(ctx, rec):
    from common import ROOT
    _ckpt_error(rec, ROOT / "README.md")


@case("D04", "A JSON file holding a list")
def d04(ctx, rec):
    d = ctx.case_dir("D04")
    (d / "x.json").write_text("[1, 2, 3]")
    _ckpt_error(rec, d / "x.json")


@case("D05", "An empty directory")
def d05(ctx, rec):
    _ckpt_error(rec, ctx.case_dir("D05"))


def _theta_leaf(doc):
    nn = doc["theta"]["nn"]
    return nn[sorted(nn)[0]]


@case("D06", "lopt.json with a leaf's shape changed, value count kept (re-signed)")
def d06(ctx, rec):
    doc = _lopt_doc(ctx)
    leaf = next(v for v in doc["theta"]["nn"].values() if len(v["shape"]) == 2
                and v["shape"][0] != v["shape"][1])
    leaf["shape"] = leaf["shape"][::-1]
    _ckpt_error(rec, _write_signed(ctx.case_dir("D06"), doc))


@case("D07", "lopt.json with an extra theta leaf (re-signed)")
def d07(ctx, rec):
    doc = _lopt_doc(ctx)
    doc["theta"]["nn"]["extra"] = {"shape": [2], "values": [0.0, 1.0]}
    _ckpt_error(rec, _write_signed(ctx.case_dir("D07"), doc))


@case("D08", "lopt.json config with an unknown key (re-signed)")
def d08(ctx, rec):
    doc = _lopt_doc(ctx)
    doc["config"]["frobnicate"] = 1
    _ckpt_error(rec, _write_signed(ctx.case_dir("D08"), doc))


@case("D09", 'lopt.json config with hidden_size: "32" (re-signed)')
def d09(ctx, rec):
    doc = _lopt_doc(ctx)
    doc["config"]["hidden_size"] = "32"
    _ckpt_error(rec, _write_signed(ctx.case_dir("D09"), doc))


@case("D10", "lopt.json config without mup_base, depth_ref, horizon_ref, horizon_power")
def d10(ctx, rec):
    import lopt
    doc = _lopt_doc(ctx)
    for k in ("mup_base", "depth_ref", "horizon_ref", "horizon_power"):
        doc["config"].pop(k)
    d = _write_signed(ctx.case_dir("D10"), doc)
    _, cfg, _ = lopt.load_theta(d)
    rec["config"] = {"mup_base": cfg.mup_base, "depth_ref": cfg.depth_ref}
    rec.check(cfg.mup_base == 1.0 and cfg.depth_ref == 0, "loads with the pre-field defaults",
              "bad")


def _compare_extra(rec, extra, base_keys=("Dense_0", "Dense_1", "Dense_2")):
    """Updates of the MLP with ``extra`` leaves added vs without: the MLP's leaves must be
    bit-identical; returns the extra leaves' updates."""
    import jax
    p = _mlp()
    g = _grads(p)
    (u0,), _ = _step(_opt(), p, g)
    p2 = {**p, **extra}
    g2 = {**g, **{k: (jax.tree.map(lambda x: x * 0 + 1, v) if v is not None else None)
                  for k, v in extra.items()}}
    (u,), s = _step(_opt(), p2, g2)
    same = all(_same(a, b) for a, b in zip(jax.tree.leaves({k: u[k] for k in base_keys}),
                                           jax.tree.leaves(u0)))
    rec.check(same, "the MLP's updates are bit-identical to those without the extra leaves")
    return u


@case("D11", "params with int32 leaves (a scalar and a vector)")
def d11(ctx, rec):
    import jax.numpy as jnp
    import numpy as np
    u = _compare_extra(rec, {"count": jnp.int32(3), "ids": jnp.arange(5, dtype=jnp.int32)})
    rec["int_updates"] = [str(np.asarray(u["count"]).dtype), np.asarray(u["ids"]).tolist()]
    rec.check(np.asarray(u["ids"]).dtype.kind == "i" and not np.asarray(u["ids"]).any()
              and not np.asarray(u["count"]).any(), "int leaves get int zero updates", "bad")


@case("D12", "params with a size-0 leaf (0, 16)")
def d12(ctx, rec):
    import jax
    import jax.numpy as jnp
    import lopt
    p = {**_mlp(), "empty": jnp.zeros((0, 16))}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        roles = lopt.infer_roles(p)
        (u,), _ = _step(_opt(), p, _grads(p))
    rec["roles"] = {"Dense_2/kernel": roles["Dense_2"]["kernel"], "empty": roles["empty"]}
    rec["warnings"] = [str(x.message)[:300] for x in w]
    rec.check(roles["Dense_2"]["kernel"] == "output", "the real readout keeps role output",
              "poor")
    rec.check(_finite(u), "finite updates", "bad")
    del jax


@case("D13", "A scalar float leaf")
def d13(ctx, rec):
    import jax.numpy as jnp
    u = _compare_extra(rec, {"scale": jnp.float32(0.5)})
    rec.check(_finite(u["scale"]), "finite update of the scalar", "bad")


def _dtype_case(rec, dtype):
    import jax
    import numpy as np
    p32 = _mlp()
    g32 = _grads(p32)
    (u32,), _ = _step(_opt(), p32, g32)
    p, g = (jax.tree.map(lambda x: x.astype(dtype), t) for t in (p32, g32))
    (u,), _ = _step(_opt(), p, g)
    dts = {str(x.dtype) for x in jax.tree.leaves(u)}
    rel = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b))))
              / (float(np.max(np.abs(np.asarray(b)))) + 1e-30)
              for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u32)))
    new = optax_apply(p, u)
    rec["dtypes"] = sorted(dts)
    rec["max_rel_diff_vs_f32"] = rel
    rec.check(dts == {dtype} and _finite(u), f"finite {dtype} updates", "bad")
    rec.check(rel < 2e-2, "close to the float32 update", "bad")
    rec.check({str(x.dtype) for x in jax.tree.leaves(new)} == {dtype},
              "apply_updates keeps the dtype")


def optax_apply(p, u):
    import optax
    return optax.apply_updates(p, u)


@case("D14", "float16 params and grads")
def d14(ctx, rec):
    _dtype_case(rec, "float16")


@case("D15", "bfloat16 params and grads")
def d15(ctx, rec):
    _dtype_case(rec, "bfloat16")


@case("D16", "Pytree with None leaves")
def d16(ctx, rec):
    u = _compare_extra(rec, {"nothing": None})
    rec.check(u["nothing"] is None, "None passes through", "bad")


def _bad_element(rec, value, steps=1, key=("Dense_1", "kernel"), at=(3, 5)):
    """Update with one grad element set to ``value`` vs the same with it set to 0 (equal
    everywhere) and vs the clean grads (other tensors bit-identical)."""
    import jax
    p = _mlp()
    g = _grads(p)

    def with_(v):
        a, b = key
        return {**g, a: {**g[a], b: g[a][b].at[at].set(v)}}
    ub, _ = _step(_opt(), p, with_(value), steps)
    uz, _ = _step(_opt(), p, with_(0.0), steps)
    uc, _ = _step(_opt(), p, g, steps)
    fin = all(_finite(u) for u in ub)
    eq0 = all(_same(a, b) for x, y in zip(ub, uz) for a, b in
              zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    others = all(_same(x[n][m], y[n][m]) for x, y in zip(ub, uc) for n in x for m in x[n]
                 if (n, m) != key)
    return fin, eq0, others


@case("D17", "One grad element NaN, +inf, -inf or 1e20 (4 trials); 1e7 used as given")
def d17(ctx, rec):
    import numpy as np
    res = {}
    for v in (np.nan, np.inf, -np.inf, 1e20):
        res[str(v)] = _bad_element(rec, v)
    rec["trials"] = {k: dict(zip(("finite", "equals_zeroed", "others_identical"), v))
                     for k, v in res.items()}
    rec.check(all(all(v) for v in res.values()), "finite, equal to the zeroed-element update, "
              "other tensors bit-identical", "bad")
    fin, eq0, _ = _bad_element(rec, 1e7)
    rec["1e7_differs_from_zeroed"] = not eq0
    rec.check(fin and not eq0, "1e7 (below MAX_GRAD) is used as given")


@case("D18", "A clean step after a NaN-grad step")
def d18(ctx, rec):
    import numpy as np
    p = _mlp()
    g = _grads(p)
    bad = {**g, "Dense_1": {**g["Dense_1"], "kernel": g["Dense_1"]["kernel"].at[0, 0].set(
        np.nan)}}
    opt = _opt()
    s = opt.init(p)
    _, s = opt.update(bad, s, p)
    u, s = opt.update(g, s, p)
    rec.check(_finite(u) and _finite(s), "update and state finite", "bad")


@case("D19", "Every grad NaN for one step, then a clean step")
def d19(ctx, rec):
    import jax
    import numpy as np
    p = _mlp()
    g = _grads(p)
    opt = _opt()
    s = opt.init(p)
    u1, s = opt.update(jax.tree.map(lambda x: x * np.nan, g), s, p)
    u2, s = opt.update(g, s, p)
    rec.check(_finite(u1) and _finite(u2) and _finite(s), "both updates finite", "bad")


@case("D20", "grads missing a sub-dict")
def d20(ctx, rec):
    p = _mlp()
    g = {k: v for k, v in _grads(p).items() if k != "Dense_2"}
    opt = _opt()
    e = _raises(rec, lambda: opt.update(g, opt.init(p), p), own=False)
    rec.check(e is not None and "Dense_2" in str(e), "the message names the missing key")


@case("D21", "grads with one leaf of the wrong shape")
def d21(ctx, rec):
    import jax.numpy as jnp
    p = _mlp()
    g = _grads(p)
    g["Dense_1"]["kernel"] = jnp.ones((16, 8))
    opt = _opt()
    e = _raises(rec, lambda: opt.update(g, opt.init(p), p))
    rec.check(e is not None and "Dense_1" in str(e), "the message names the leaf")


@case("D22", "opt.update(g, s, None)")
def d22(ctx, rec):
    p = _mlp()
    opt = _opt()
    _raises(rec, lambda: opt.update(_grads(p), opt.init(p), None))


def _needs_steps(rec, name):
    import lopt
    p = _mlp()

    def go():
        opt = lopt.load(name)
        opt.update(_grads(p), opt.init(p), p)
    _raises(rec, go, (lopt.NumStepsError,))


@case("D23", 'lopt.load("mulo-horizon-cpu") without num_steps, then update')
def d23(ctx, rec):
    _needs_steps(rec, "mulo-horizon-cpu")


@case("D24", 'lopt.load("mulo-frac-cpu") without num_steps, then update')
def d24(ctx, rec):
    _needs_steps(rec, "mulo-frac-cpu")


@case("D25", "num_steps=0 and num_steps=-5")
def d25(ctx, rec):
    import lopt
    p = _mlp()
    errs = []
    for n in (0, -5):
        def go(n=n):
            opt = lopt.load("mulo-frac-cpu", num_steps=n)
            opt.update(_grads(p), opt.init(p), p)
        sub = type(rec)()
        _raises(sub, go, (lopt.NumStepsError,))
        errs.append(sub.evidence.get("error"))
        rec.checks += [{**c, "what": f"num_steps={n}: {c['what']}"} for c in sub.checks]
    rec["errors"] = errs


@case("D26", "num_steps=10.5")
def d26(ctx, rec):
    import lopt
    p = _mlp()
    try:
        opt = lopt.load("mulo-frac-cpu", num_steps=10.5)
        (u,), _ = _step(opt, p, _grads(p))
        rec["outcome"] = "accepted"
        rec.check(_finite(u), "finite updates", "bad")
    except lopt.NumStepsError as e:
        rec["outcome"] = f"NumStepsError: {e}"
        rec.check("\n" not in str(e), "one-line error")


@case("D27", "muvelo-cpu update without value=")
def d27(ctx, rec):
    p = _mlp()
    opt = _opt("muvelo-cpu", num_steps=100)
    _raises(rec, lambda: opt.update(_grads(p), opt.init(p), p))


@case("D28", 'mup_in="bogus"')
def d28(ctx, rec):
    p = _mlp()

    def go():
        opt = _opt(mup_in="bogus")
        opt.update(_grads(p), opt.init(p), p)
    _raises(rec, go)


@case("D29", 'role_overrides={"Dense_1": "hiddn"}')
def d29(ctx, rec):
    import lopt
    p = _mlp()

    def go():
        opt = _opt(role_overrides={"Dense_1": "hiddn"})
        opt.update(_grads(p), opt.init(p), p)
    e = _raises(rec, go, (lopt.RoleOverrideError,))
    rec.check(e is not None and "hiddn" in str(e), "names the override")


@case("D30", 'role_overrides={"Dense_[": "hidden"} (invalid regex)')
def d30(ctx, rec):
    import lopt
    p = _mlp()

    def go():
        opt = _opt(role_overrides={"Dense_[": "hidden"})
        opt.update(_grads(p), opt.init(p), p)
    e = _raises(rec, go, (lopt.RoleOverrideError,))
    rec.check(e is not None and "Dense_[" in str(e), "names the override")


@case("D31", "One NaN in params (grads clean)")
def d31(ctx, rec):
    import numpy as np
    p = _mlp()
    g = _grads(p)
    bad = {**p, "Dense_1": {**p["Dense_1"], "kernel": p["Dense_1"]["kernel"].at[3, 5].set(
        np.nan)}}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        (u,), _ = _step(_opt(), bad, g)
    k = np.asarray(u["Dense_1"]["kernel"])
    rec["nan_elements_in_tensor"] = f"{int(np.isnan(k).sum())}/{k.size}"
    rec["warnings"] = [str(x.message)[:200] for x in w]
    rec["other_tensors_finite"] = all(_finite(u[n][m]) for n in u for m in u[n]
                                      if (n, m) != ("Dense_1", "kernel"))
    rec.check(np.isnan(k).sum() <= 1 and rec["other_tensors_finite"],
              "one bad weight does not spoil its whole tensor's update")


@case("D32", "Run directory whose only step is 3.orbax-checkpoint-tmp")
def d32(ctx, rec):
    d = ctx.case_dir("D32")
    src = ctx.ref("stop8") / "checkpoints" / "8"
    shutil.copytree(src, d / "checkpoints" / "3.orbax-checkpoint-tmp")
    _ckpt_error(rec, d)


@case("D33", "Jitted step with an inf grad element, a scalar leaf and a None leaf")
def d33(ctx, rec):
    import jax
    import jax.numpy as jnp
    import optax
    p = {**_mlp(), "scale": jnp.float32(1.0), "none": None}
    g = {**_grads(_mlp()), "scale": jnp.float32(0.3), "none": None}
    g["Dense_0"]["kernel"] = g["Dense_0"]["kernel"].at[0, 0].set(jnp.inf)
    opt = _opt()

    @jax.jit
    def step(p, s):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s
    p2, _ = step(p, opt.init(p))
    rec.check(_finite(p2), "finite params after the step", "bad")


@case("D34", "muvelo-cpu: one NaN loss at step 0, finite losses after (20 steps)")
def d34(ctx, rec):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    res = {}
    for bad in (jnp.nan, jnp.inf):
        p = _mlp()
        g = _grads(p)
        opt = _opt("muvelo-cpu", num_steps=100)
        s = opt.init(p)
        fin = []
        for t in range(20):
            u, s = opt.update(g, s, p, value=bad if t == 0 else jnp.float32(1.0 - 0.01 * t))
            p = optax.apply_updates(p, u)
            fin.append(_finite(u))
        res[str(bad)] = {"updates_finite": all(fin), "params_finite": _finite(p),
                         "state_finite": _finite(s)}
    rec["trials"] = res
    rec.check(all(v["updates_finite"] and v["params_finite"] for v in res.values()),
              "updates and params stay finite", "bad")
    del jax, np


@case("D35", "muvelo-cpu: a NaN grad element")
def d35(ctx, rec):
    import numpy as np
    p = _mlp()
    g = _grads(p)
    g["Dense_1"]["kernel"] = g["Dense_1"]["kernel"].at[2, 2].set(np.nan)
    opt = _opt("muvelo-cpu", num_steps=100)
    s = opt.init(p)
    u1, s = opt.update(g, s, p, value=1.0)
    u2, s = opt.update(_grads(p), s, p, value=0.9)
    rec.check(_finite(u1) and _finite(u2) and _finite(s), "finite updates and state", "bad")


@case("D36", "mulo-cpu: a bias element of 1e20")
def d36(ctx, rec):
    fin, eq0, others = _bad_element(rec, 1e20, key=("Dense_1", "bias"), at=(3,))
    rec["result"] = {"finite": fin, "equals_zeroed": eq0, "others_identical": others}
    rec.check(fin and eq0, "equals the update with that element set to 0", "bad")
