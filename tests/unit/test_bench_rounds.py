"""The benchmark's round orders: the runs behind each barred pair stay side by side."""

from __future__ import annotations

from bench.rounds import ROUND_ORDER, round_orders

#: Pairs whose two runs are side by side in ROUND_ORDER.
NEIGHBOURS = (("i", "d"), ("d", "j"), ("k", "l"), ("n", "m"), ("q", "r"))


def test_every_round_keeps_each_pair_side_by_side_and_swaps_which_goes_first() -> None:
    orders = round_orders(list(ROUND_ORDER), 5)
    assert len(orders) == 5
    for order in orders:
        assert sorted(order) == sorted(ROUND_ORDER)
    for first, second in NEIGHBOURS:
        gaps = [order.index(second) - order.index(first) for order in orders]
        assert gaps == [1, -1, 1, -1, 1], (first, second, gaps)


def test_a_selection_keeps_its_order_and_its_pairs_together() -> None:
    orders = round_orders(["d", "j", "i", "r", "q"], 3)
    assert orders == [
        ["i", "d", "j", "q", "r"],
        ["r", "q", "j", "d", "i"],
        ["i", "d", "j", "q", "r"],
    ]
    assert round_orders([], 2) == [[], []]
