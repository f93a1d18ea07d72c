"""Remembered answers: the first row served with a (tier, σ, cell) answers every later one."""

from __future__ import annotations

import pytest
import torch

from service.serving.answers import AnswerMemory

pytestmark = pytest.mark.unit


def test_a_later_row_with_a_remembered_cell_gets_the_first_rows_answer() -> None:
    mem = AnswerMemory()
    first = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(mem.apply(first, ["b", "b"], [2.0, 2.0], [7, 8]), first)
    later = torch.tensor([[9.0, 9.0], [5.0, 6.0], [0.0, 1.0]])
    served = mem.apply(later, ["b", "b", "s"], [2.0, 2.0, 2.0], [8, 9, 7])
    assert served.tolist() == [[3.0, 4.0], [5.0, 6.0], [0.0, 1.0]]  # cell 8 remembered only
    assert later.tolist() == [[9.0, 9.0], [5.0, 6.0], [0.0, 1.0]]  # the input is not changed
    # Another σ at the same tier is another answer.
    assert mem.apply(later[:1], ["b"], [3.0], [8]).tolist() == [[9.0, 9.0]]


def test_the_oldest_answer_is_forgotten_past_capacity() -> None:
    mem = AnswerMemory(capacity=2)
    for cell in (1, 2, 3):
        mem.apply(torch.full((1, 2), float(cell)), ["b"], [1.0], [cell])
    assert len(mem) == 2
    assert mem.apply(torch.zeros(1, 2), ["b"], [1.0], [1]).tolist() == [[0.0, 0.0]]
