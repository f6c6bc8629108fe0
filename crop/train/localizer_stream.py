"""Where ``crop train-localizer`` gets its samples: the shards (through
:class:`crop.data.stream.ShardStream`) or the generated synthetic set, as one endless stream per rank.

Data position: an epoch's order is a pure function of (seed, epoch), and every rank gets the
same number of samples per epoch (``ShardStream`` pads, the synthetic set drops the remainder),
so ``(epoch, position)`` -- samples of this epoch this rank consumed -- is the same on every rank
and is what a checkpoint stores. Resuming reopens the epoch at that position: ``ShardStream``
seeks there itself (re-reading at most one shuffle block, never decoding the skipped samples);
the synthetic set is in memory and simply slices.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Iterator

from crop.train.localizer_config import LocalizerTrainConfig

# epoch, position -> this rank's samples of that epoch from that position on
EpochReader = Callable[[int, int], Iterable[dict]]


def read_shards(specs: Iterable[str] | str, *, seed: int = 0, shuffle: bool = False,
                shuffle_buffer: int = 256, rank: int = 0, world_size: int = 1, pad: bool = False):
    """A ``ShardStream`` of decoded samples ``{"__key__", "json", "image": PIL | None, ...}``.

    ``batch_size=1`` because the trainer batches itself: the stream's resume unit is then one
    sample, which makes any mid-epoch position exact. Eval/predict use the defaults (no shuffle,
    one rank, unreadable samples skipped instead of replaced by repeats).
    """
    from crop.data.stream import ShardStream

    return ShardStream(list(specs) if not isinstance(specs, str) else specs, seed=seed,
                       shuffle=shuffle, shuffle_buffer=shuffle_buffer, batch_size=1, decode=True,
                       uneven="pad", fill_failures=pad, rank=rank, world_size=world_size)


def iter_shard_samples(specs: Iterable[str] | str) -> Iterator[dict]:
    """Every sample of the shards once, in shard order (for eval and prediction)."""
    yield from read_shards(specs)


def make_reader(cfg: LocalizerTrainConfig, rank: int = 0, world: int = 1) -> tuple[EpochReader, int, str]:
    """``(reader, samples per epoch over all ranks, a line naming the source)``."""
    if cfg.synthetic:
        from crop.data.synthetic_localization import SyntheticSpec, synthetic_samples

        data = synthetic_samples(cfg.synthetic, cfg.seed, SyntheticSpec(**cfg.synthetic_spec))
        per_rank = len(data) // world  # drop the remainder: equal epochs on every rank

        def synth(epoch: int, pos: int) -> Iterable[dict]:
            order = list(range(len(data)))
            random.Random(f"{cfg.seed}:{epoch}").shuffle(order)
            mine = order[:per_rank * world][rank::world]
            return (data[i] for i in mine[pos:])
        total = cfg.samples_per_epoch or per_rank * world
        return synth, total, f"synthetic localization set ({cfg.synthetic} samples)"

    stream = read_shards(cfg.shards, seed=cfg.seed, shuffle=True, shuffle_buffer=cfg.shuffle_buffer,
                         rank=rank, world_size=world, pad=True)

    def shards(epoch: int, pos: int) -> Iterable[dict]:
        stream.set_epoch(epoch)
        if pos:
            stream.load_state_dict(stream.state_dict(batches_seen=pos))
        return stream
    shards.counters = stream.counters  # loader failures, for the training log (crop.train.loader_health)
    shards.stream = stream  # the trainer reads it through DataLoader workers (crop.train.prefetch)
    total = cfg.samples_per_epoch or len(stream) * world
    return shards, total, f"crop.data.stream.ShardStream ({len(stream.shards)} shards, {stream.total} samples)"


def epoch_stream(reader: EpochReader, epoch: int, pos: int) -> Iterator[tuple[int, int, dict]]:
    """Endless ``(epoch, position after this sample, sample)``, starting at sample ``pos`` of ``epoch``."""
    while True:
        for sample in reader(epoch, pos):
            pos += 1
            yield epoch, pos, sample
        epoch, pos = epoch + 1, 0
