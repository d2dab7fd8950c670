from fingpt.scoring import positions, windows


def test_windows_score_every_token_exactly_once():
    ids = list(range(100))
    for block_size, stride in [(16, 16), (16, 5), (16, 1), (200, 100)]:
        scored = [t for _, targets in windows(ids, block_size, stride) for t in targets if t != -100]
        assert scored == ids[1:]
        assert all(len(x) <= block_size for x, _ in windows(ids, block_size, stride))


def test_the_last_window_ends_at_the_calls_end_with_a_whole_window_of_context():
    ids = list(range(40))  # 39 targets: windows of 16 scored 1-16, 17-32, then 33-39
    inputs, targets = list(windows(ids, 16, 16))[-1]
    assert inputs == ids[23:39] and targets == [-100] * 9 + ids[33:]


def test_positions_counts_what_the_windows_compute():
    for length in range(0, 60):
        for block_size, stride in ((16, 1), (16, 5), (16, 16), (8, 3)):
            computed = sum(len(inputs) for inputs, _ in windows(list(range(length)), block_size, stride))
            assert positions(length, block_size, stride) == computed
            # without a stride: the last block_size tokens, in one window
            assert positions(length, block_size) == max(0, min(length, block_size) - 1)
    assert positions(250_000, 256, 1) == 256 * (250_000 - 256)
