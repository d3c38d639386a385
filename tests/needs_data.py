"""Which tests need a Debian data package this machine may lack, as one shared skip rule.

`make test` passes without ``dataset-fashion-mnist`` and ``fortunes``: a test that checks the
project's own logic runs on data that always ships (packaged 8x8 Fashion-MNIST, scikit-learn's
digits, the Python standard library's text); only a test of the packages' data itself, or of a
task named after it, is marked with :func:`needs_data` and skips when the package is absent.
The skip reason starts with :data:`REASON_PREFIX`, which ``conftest.py`` counts in the summary.
"""

import pytest

from meta_train import data as D
from meta_train import tasks as T

REASON_PREFIX = "missing data package"

FMNIST = "dataset-fashion-mnist"
FORTUNES = "fortunes"


def installed(package: str) -> bool:
    """Whether this machine has the data a Debian data package provides."""
    if package == FMNIST:
        return D.fashion_mnist_dir() is not None
    if package == FORTUNES:
        return D.fortunes_dir() is not None
    raise ValueError(f"unknown data package {package!r}; use {FMNIST!r} or {FORTUNES!r}")


def package_of(task_name: str) -> str | None:
    """The Debian package whose data a task of this name trains on, if the project does not
    ship that data (8x8 Fashion-MNIST, digits, stdlib text and synthetic tasks ship)."""
    data = T.TaskName.parse(task_name).prefix.split("-")[1]     # fmnist28, fortunes, ...
    if data.startswith("fmnist") and int(data[6:]) not in D.packaged_resolutions():
        return FMNIST
    return FORTUNES if data == "fortunes" else None


def needs_data(*packages_or_tasks: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark for a test that needs these packages (or these tasks' packages)."""
    wanted = sorted({package_of(x) if x not in (FMNIST, FORTUNES) else x
                     for x in packages_or_tasks} - {None})
    lacking = [p for p in wanted if not installed(p)]
    return pytest.mark.skipif(
        bool(lacking), reason=f"{REASON_PREFIX} {', '.join(lacking)} "
                              f"(apt-get install {' '.join(lacking)})")
