"""The batch schedule depends on the seed alone."""

from __future__ import annotations

from svdlora_cli.training.schedule import batch_schedule


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
