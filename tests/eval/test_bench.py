"""The benchmark CLI's arguments: mistakes are one clear error line, before any timing."""

import pytest

from eval.bench import main


@pytest.mark.parametrize("argv, message", [
    (["--optimizers", "adamw,muonn"], "--optimizers: unknown muonn; choose from"),
    (["--task", "mlp-fmnist8-w4096-q3"], "--task mlp-fmnist8-w4096-q3: unknown task"),
    (["--train-steps", "0"], "--train-steps must be at least 1, got 0"),
    (["--lo", "no-such-lo"], "--lo no-such-lo:"),
])
def test_bad_arguments_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--only-optimizers", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "--preset nope: unknown; choose from"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
])
def test_bad_scale_out_arguments_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--scale-out", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


@pytest.mark.slow
def test_scale_out_runs_the_three_configurations_and_reports_their_ratios(tmp_path, capsys):
    import json
    assert main(["--scale-out", "--preset", "smoke", "--steps", "2", "--json",
                 str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())["scale_out"]
    rates = [r["one_process_one_core"], r["two_processes_one_core_each"],
             r["one_process_two_devices_two_cores"]]
    assert all(x > 0 for x in rates)
    assert r["two_processes_over_one"] == pytest.approx(rates[1] / rates[0])
    assert r["two_devices_over_one"] == pytest.approx(rates[2] / rates[0])
    assert "2 processes, 1 core each" in capsys.readouterr().out


@pytest.mark.slow   # 10-30 s: make test runs it, the fast tier does not
def test_a_learned_optimizer_given_by_path_is_a_row_of_the_table(tmp_path):
    import lopt
    from eval.bench import bench_optimizers
    from meta_train.config import PRESETS
    cfg = PRESETS["compact-cpu"]
    lopt.save(tmp_path / "lo", lopt.adam_theta(cfg.lo), cfg.lo)   # needs the run length
    res = bench_optimizers(dims=(16, 8, 8, 4), task_name="mlp-digits8-w16-d2", steps=1,
                           train_steps=3, names=["sgdm"], los=(str(tmp_path / "lo"),))
    rows = {r["optimizer"]: r for r in res["rows"]}
    row = rows[str(tmp_path / "lo")]
    assert row["train_step_ms"] > 0 and row["update_ms"] > 0
    # its state: the compact LO's 3 floats per parameter, more than AdamW's 2
    assert row["state_mb"] > rows["adamw"]["state_mb"]
