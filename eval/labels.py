"""The row names the suite gives its learned optimizers, shared by the suite that makes them
and the reports and cards that read them (so neither imports the other for them)."""

# the suffix of a learned optimizer's row before meta-training
UNTRAINED = " (untrained)"


def untrained_label(label: str) -> str:
    """The row name of ``label``'s learned optimizer before meta-training."""
    return label + UNTRAINED
