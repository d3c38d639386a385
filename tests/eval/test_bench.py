"""The benchmark CLI's arguments: mistakes are one clear error line, before any timing."""

import pytest

from eval.bench import main


@pytest.mark.parametrize("argv, message", [
    (["--optimizers", "adamw,muonn"], "--optimizers: unknown muonn; choose from"),
    (["--task", "mlp-fmnist8-w4096-q3"], "--task mlp-fmnist8-w4096-q3: unknown task"),
    (["--train-steps", "0"], "--train-steps must be at least 1, got 0"),
])
def test_bad_arguments_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--only-optimizers", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err
