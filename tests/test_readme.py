"""The README's "Use a learned optimizer" snippet runs as written and trains."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train.data import image_dataset

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text.split("## Use a learned optimizer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def _train(step, params, state, data, steps):
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        idx = rng.integers(0, data.x.shape[0], 128)
        params, state, loss = step(params, state, data.x[idx], data.y[idx])
        losses.append(float(loss))
    return np.asarray(losses), params


@pytest.mark.slow
def test_readme_flax_snippet_trains_with_the_shipped_mulo(capsys):
    ns: dict = {}
    exec(compile(_snippet(), str(README), "exec"), ns)   # noqa: S102 - our own README
    assert "hidden" in capsys.readouterr().out          # describe_roles printed the roles
    data = image_dataset("fmnist", 8).train
    steps = ns["num_steps"]
    losses, params = _train(ns["step"], ns["params"], ns["state"], data, steps)
    assert np.isfinite(losses).all()
    assert losses[0] > 2.0                       # ~log(10) at init
    assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(params))
    # The same loop with AdamW(1e-3) on the model's own init: the snippet's μLO must reach a
    # loss within 2x AdamW's + 0.01 (mean of the last 10 steps).
    ns_adam: dict = {}
    assert 'opt = lopt.load("mulo-horizon-cpu", num_steps=num_steps)' in _snippet()
    exec(compile(_snippet().replace('opt = lopt.load("mulo-horizon-cpu", num_steps=num_steps)',
                                    "opt = optax.adamw(1e-3)")
                 .replace("params = lopt.mup_init_params", "_ = lopt.mup_init_params"),
                 str(README), "exec"), ns_adam)
    adam, _ = _train(ns_adam["step"], ns_adam["params"], ns_adam["state"], data, steps)
    lo_final, adam_final = np.mean(losses[-10:]), np.mean(adam[-10:])
    print(f"README snippet, {steps} steps: μLO {lo_final:.4f}, AdamW(1e-3) {adam_final:.4f}")
    assert lo_final <= 2 * adam_final + 0.01, (lo_final, adam_final)


def _shell_commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.split("#", 1)[0].strip() for b in blocks for line in b.splitlines()
            if line.split("#", 1)[0].strip()]


def test_readme_stays_a_short_front_door():
    assert len(README.read_text().splitlines()) <= 250


def test_every_command_in_the_readme_names_a_cli_whose_help_works_and_a_real_make_target():
    import subprocess
    import sys
    root = README.parent
    commands = _shell_commands()
    modules = sorted({c.split()[2] for c in commands if c.startswith("python -m ")})
    targets = {c.split()[1] for c in commands if c.startswith("make ")}
    assert {"meta_train", "eval", "eval.merge", "eval.bench"} <= set(modules)
    assert targets == {"demo", "test"}
    makefile = (root / "Makefile").read_text()
    assert all(re.search(rf"^{t}:", makefile, re.M) for t in targets)
    helps = {}
    for m in modules:
        r = subprocess.run([sys.executable, "-m", m, "--help"], cwd=root, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (m, r.stderr[-500:])
        helps[m] = r.stdout
    # each command's options are ones its CLI's --help lists
    for c in commands:
        if c.startswith("python -m "):
            help_text = helps[c.split()[2]]
            for opt in re.findall(r"(?<!\S)(--[a-z][\w.-]*)", c):
                assert opt in help_text or opt.split(".")[0] + "." in help_text, (c, opt)


def test_every_checkpoint_the_readme_names_is_shipped():
    from lopt.io.checkpoint import shipped_dir
    names = set(re.findall(r"`((?:mu|sp)[a-z-]*-cpu)`", README.read_text()))
    names |= set(re.findall(r'lopt\.load\("([\w-]+)"', README.read_text()))
    assert {"mulo-horizon-cpu", "mulo-cpu", "muvelo-cpu", "sp-lo-cpu"} <= names
    shipped = shipped_dir()
    for n in sorted(names):
        assert (shipped / n / "lopt.json").is_file(), n
