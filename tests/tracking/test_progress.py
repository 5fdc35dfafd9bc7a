import io

from oversight.tracking.progress import LineProgress


def test_line_progress_writes_whole_lines_at_most_every_interval_and_at_the_end():
    out = io.StringIO()
    bar = LineProgress(total=4, initial=1, desc="sft", unit="step", every_s=3600, file=out)
    for _ in range(3):
        bar.set_postfix(loss="0.5000")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()  # only the last update: the interval never passed
    assert lines[0].startswith("sft: 4/4 steps (100%), ") and lines[0].endswith("steps/s, loss=0.5000")
    out = io.StringIO()
    bar = LineProgress(total=3, initial=0, desc="ppo", unit="iteration", every_s=0.0, file=out)
    for _ in range(3):
        bar.update(1)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "ppo: 1/3 iterations (33%)", "ppo: 2/3 iterations (67%)", "ppo: 3/3 iterations (100%)"
    ]  # fmt: skip
