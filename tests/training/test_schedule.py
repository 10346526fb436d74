"""The batch schedule depends on the seed alone."""

from __future__ import annotations

from svdlora_cli.training.schedule import batch_schedule, token_batches, token_schedule


def test_each_epoch_covers_every_example_once():
    steps = batch_schedule(10, 3, 2, epochs=2, seed=0)
    for epoch in (0, 1):
        seen = sorted(i for s in steps if s.epoch == epoch for i in s.indices)
        assert seen == list(range(10))
    assert all(len(s.micro_batches) <= 2 for s in steps)


def test_same_seed_same_order_other_seed_other_order():
    a, b = batch_schedule(20, 4, 1, 3, seed=1), batch_schedule(20, 4, 1, 3, seed=1)
    assert a == b
    assert a != batch_schedule(20, 4, 1, 3, seed=2)
    assert [s.indices for s in a[:5]] != [s.indices for s in a[5:10]]  # reshuffled per epoch


def test_max_steps_truncates():
    assert len(batch_schedule(20, 4, 1, 5, seed=0, max_steps=7)) == 7


def test_token_steps_fill_the_budget_in_the_seeds_order():
    lengths = [5, 9, 3, 12, 7, 4, 8, 6, 10, 2]
    steps = token_schedule(lengths, 20, 2, epochs=2, seed=3)
    for epoch in (0, 1):
        epoch_steps = [s for s in steps if s.epoch == epoch]
        assert sorted(i for s in epoch_steps for i in s.indices) == list(range(10))
        # Every step but the epoch's last reaches the budget, and only with its last row.
        for step in epoch_steps[:-1]:
            tokens = [lengths[i] for i in step.indices]
            assert sum(tokens) >= 20 > sum(tokens[:-1])
        assert all(1 <= len(s.micro_batches) <= 2 for s in epoch_steps)
    # The rows come in batch_schedule's shuffled order (same seed), just cut differently.
    by_rows = batch_schedule(10, 1, 1, 1, seed=3)
    assert [i for s in steps if s.epoch == 0 for i in s.indices] == [
        i for s in by_rows for i in s.indices
    ]
    assert token_schedule(lengths, 20, 2, 2, seed=3) == steps
    assert token_schedule(lengths, 20, 2, 2, seed=4) != steps


def test_token_micro_batches_split_a_step_evenly():
    lengths = [10] * 8
    (step,) = token_schedule(lengths, 80, 4, epochs=1, seed=0)
    assert [len(m) for m in step.micro_batches] == [2, 2, 2, 2]
    assert len(token_schedule(lengths, 15, 1, epochs=1, seed=0, max_steps=3)) == 3


def test_evaluation_rows_are_cut_by_tokens_in_order():
    assert token_batches([4, 4, 4, 9, 1], 8) == [[0, 1], [2], [3], [4]]
