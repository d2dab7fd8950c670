from fingpt.scoring import windows


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
