"""BatchStream: deterministic order, DDP sharding, identical batches with and without workers."""

import torch

from piti_core.train.loop import BatchStream


class RandomFlip(torch.utils.data.Dataset):
    """Returns its index and a random number drawn from the global torch RNG (like augmentation)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"i": torch.tensor(i), "r": torch.rand(())}


def test_order_is_a_function_of_seed_and_step():
    a, b = BatchStream(RandomFlip(), 3, seed=1), BatchStream(RandomFlip(), 3, seed=1)
    for step in (0, 5, 2, 7):
        x, y = a.batch(step), b.batch(step)
        assert torch.equal(x["i"], y["i"]) and torch.equal(x["r"], y["r"])
    epoch0 = torch.cat([a.batch(s)["i"] for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats inside an epoch
    assert not torch.equal(a.batch(0)["i"], BatchStream(RandomFlip(), 3, seed=2).batch(0)["i"])


def test_ranks_split_the_global_batch():
    single = BatchStream(RandomFlip(), 4, seed=0)
    r0, r1 = BatchStream(RandomFlip(), 2, seed=0, rank=0, world=2), BatchStream(RandomFlip(), 2, seed=0, rank=1, world=2)
    for step in range(3):
        both = torch.cat([r0.batch(step)["i"], r1.batch(step)["i"]])
        assert torch.equal(both, single.batch(step)["i"])


def test_workers_give_the_same_batches():
    plain = BatchStream(RandomFlip(), 3, seed=4)
    workers = BatchStream(RandomFlip(), 3, seed=4, num_workers=2)
    for step in [0, 1, 2, 3, 7, 8]:  # includes a jump (resume) and epoch boundaries
        x, y = plain.batch(step), workers.batch(step)
        assert torch.equal(x["i"], y["i"]) and torch.equal(x["r"], y["r"])
