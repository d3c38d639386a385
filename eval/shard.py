"""Splitting a suite over machines: ``python -m eval ... --shard i/n``.

A suite's cells fall into *units* that must run in one place: a cell that may take a
μTransfer LR (a μP baseline on a cell wider than its axis's limit reuses the LR tuned at the
widest cell of its family at or below the limit) runs with every cell of its family; every
other cell is a unit of its own. Units are dealt round-robin, in the suite's order, to the
``n`` shards, so each shard runs a deterministic, disjoint part and the shards together run
every cell once. Each shard writes its own report; ``python -m eval.merge`` joins them into
the report the unsharded run writes. (Processes on one machine share one ``--out`` instead;
its locks hand out the groups.)

The split is computed from the full cell list, before cells whose data is missing on this
machine are skipped, so every machine derives the same split.
"""

from __future__ import annotations

import re


class ShardError(ValueError):
    """A ``--shard`` value that names no part of the suite (one line)."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``.

    Raises:
      ShardError: not of that form (the message names the form and an example).
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ShardError(f"--shard takes I/N (this machine's part I of N, counted from 0), "
                         f"e.g. --shard 0/2; got {text!r}")
    i, n = int(m[1]), int(m[2])
    if n < 1 or i >= n:
        raise ShardError(f"--shard {text}: I must be in 0..N-1 and N >= 1 (e.g. --shard 0/2 "
                         "and --shard 1/2 on two machines)")
    return i, n


def units(cells: list, key_of, transfers) -> list[list[int]]:
    """The indices of ``cells`` grouped into units that run together, in the order of their
    first cell.

    Args:
      cells: the suite's cells, in its order.
      key_of: ``cell -> hashable``: the cell's μTransfer family (cells that may share an LR).
      transfers: ``cell -> bool``: whether a μP baseline on this cell would reuse an LR
        tuned at another cell of its family.
    """
    moving = {key_of(c) for c in cells if transfers(c)}
    out: dict = {}
    for i, c in enumerate(cells):
        k = ("family", key_of(c)) if key_of(c) in moving else ("cell", i)
        out.setdefault(k, []).append(i)
    return list(out.values())


def select(cells: list, shard: tuple[int, int], key_of, transfers) -> list:
    """The cells of ``shard = (i, n)``, in the suite's order.

    Raises:
      ShardError: the suite has fewer units than shards (shard ``i`` would run nothing).
    """
    i, n = shard
    us = units(cells, key_of, transfers)
    mine = sorted(j for u in us[i::n] for j in u)
    if not mine:
        raise ShardError(f"--shard {i}/{n}: this suite splits into only {len(us)} part(s) "
                         f"(cells that share a μTransfer LR run together); use N <= {len(us)}")
    return [cells[j] for j in mine]
