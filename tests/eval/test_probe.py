import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eval import probe
from lopt.baselines import BASELINES, muadam
from meta_train.tasks import get_task


def _first_update(opt, params):
    grads = jax.tree.map(lambda p: 0.1 * jnp.cos(p + 1.0), params)
    return opt.update(grads, opt.init(params), params)[0]


def test_a_setting_is_the_baselines_factory_with_those_options():
    task = get_task("mlp-digits8-w32-d2")
    params = task.init(jax.random.key(0))
    got = _first_update(probe.baseline_with("muadam", {"lr": "0.01", "base": "32"},
                                            task.roles, 100), params)
    want = _first_update(muadam(0.01, task.roles, base=32.0), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    plain = _first_update(probe.baseline_with("muadam", {"lr": "0.01"}, task.roles, 100), params)
    assert not np.allclose(plain["layer_1"]["w"], got["layer_1"]["w"])
    # options are typed like the factory's defaults: schatten's `every` stays an int, and
    # fixed_p (default None) reads "inf"; the step is the factory's with those options
    from lopt.baselines.schatten import adaptive_schatten
    opt = probe.baseline_with("schatten", {"lr": "0.1", "every": "7", "fixed_p": "inf"},
                              task.roles, 100)
    want = _first_update(adaptive_schatten(0.1, task.roles, every=7, fixed_p=float("inf")),
                         params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 _first_update(opt, params), want)
    assert opt.init(params).count.dtype == jnp.int32
    # an entry's own schedule is kept: adamw-cosine's first step is at LR 0
    cos = _first_update(probe.baseline_with("adamw-cosine", {"lr": "0.01"}, task.roles, 100),
                        params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(cos))


def test_a_mistyped_bool_option_is_an_error_not_false():
    from lopt.learned import LOConfig
    roles = get_task("mlp-digits8-w32-d2").roles
    with pytest.raises(ValueError, match="expected true/false, got 'ture'"):
        probe.baseline_with("modular", {"lr": "0.1", "constrained": "ture"}, roles, 10)
    with pytest.raises(ValueError, match="expected true/false, got 'ture'"):
        probe._typed(LOConfig(), "mup", "ture")
    assert probe._typed(LOConfig(), "mup", "no") is False
    # a string option stays a string (it used to be read as a float)
    from lopt.baselines import modular
    params = get_task("mlp-digits8-w32-d2").init(jax.random.key(0))
    got = _first_update(probe.baseline_with("modular", {"lr": "0.1", "readout": "sign"}, roles,
                                            10), params)
    want = _first_update(modular(0.1, roles, readout="sign"), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_probe_errors_name_the_problem_and_the_choices():
    roles = get_task("mlp-digits8-w32-d2").roles
    with pytest.raises(ValueError, match="muon has no option momentum; its options are lr "
                                         "and adam_lr"):
        probe.baseline_with("muon", {"lr": "0.1", "momentum": "0.9"}, roles, 10)
    with pytest.raises(ValueError, match="muon needs lr="):
        probe.baseline_with("muon", {"adam_lr": "0.1"}, roles, 10)
    with pytest.raises(ValueError, match="unknown baseline 'adamx'; choose from adamw"):
        probe.baseline_with("adamx", {"lr": "0.1"}, roles, 10)
    assert probe.main(["--baseline", "adamw", "--task", "mlp-digits8-w32-d2-sp",
                       "--set", "lr=1e-3,beta=3"]) == 2


def test_probe_trains_a_baseline_and_prints_its_final_loss(capsys):
    assert probe.main(["--baseline", "adamw", "--task", "mlp-digits8-w32-d2-sp", "--steps",
                       "150", "--set", "lr=3e-3", "--set", "lr=1e-5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("mlp-digits8-w32-d2-sp 150 steps seed 1 lr=3e-3")
    good, tiny = (float(line.split("final train loss ")[1].split()[0]) for line in out)
    # tuned AdamW learns 8x8 digits in 150 steps; a 300x smaller LR barely moves from ln 10
    assert good < 0.5 < 2.0 < tiny


def test_a_warmup_setting_scales_the_steps_as_the_cosine_baselines_warmup_does(capsys):
    task = get_task("mlp-digits8-w32-d2")
    params = task.init(jax.random.key(0))
    grads = jax.tree.map(lambda p: 0.1 * jnp.cos(p + 1.0), params)
    plain = probe.baseline_with("adamw", {"lr": "0.01"}, task.roles, 100)
    warm = probe.with_warmup(plain, 0.05, 100)      # 5 warmup steps of a 100-step run
    sp, sw = plain.init(params), warm.init(params)
    for t in range(7):
        up, sp = plain.update(grads, sp, params)
        uw, sw = warm.update(grads, sw, params)
        # the same accumulators, the step times min(1, t/5): 0 at the first update
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a * min(1.0, t / 5), rtol=1e-6,
                                                             atol=1e-12), up, uw)
    assert probe.with_warmup(plain, 0.0, 100) is plain
    with pytest.raises(ValueError, match=r"warmup=1.0: must be a fraction of the run in \[0, 1\)"):
        probe.with_warmup(plain, 1.0, 100)
    assert probe.main(["--baseline", "adamw", "--task", "mlp-digits8-w32-d2-sp",
                       "--set", "lr=1e-3,warmup=five"]) == 2
    assert "warmup='five': must be a fraction of the run in [0, 1)" in capsys.readouterr().err
