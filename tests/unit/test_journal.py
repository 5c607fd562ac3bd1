"""The journal analysis (tests/support/journal.py) on synthetic journals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.support import journal
from tests.support.journal import Record


def start(t: float, worker: str, stream: str, token: int = 1) -> Record:
    return Record(t, worker, "start", stream, token)


def stop(t: float, worker: str, stream: str, why: str = "revoke") -> Record:
    return Record(t, worker, "stop", stream, why=why)


def harness(t: float, kind: str, worker: str) -> Record:
    return Record(t, worker, kind)


def test_a_clean_move_has_no_duplicate_and_a_gap_as_long_as_the_hand_over():
    records = [start(1, "a", "s"), stop(2, "a", "s"), start(2.5, "b", "s", 2)]
    fig = journal.figures(records, 0, 10)
    assert fig.duplicates == []
    assert [(g.start, g.end) for g in fig.gaps] == [(2, 2.5)]
    assert fig.starts == 2
    assert fig.first_placements == 1
    assert fig.replaced == {"s"}
    assert fig.converge_s == 2.5
    assert journal.overlaps(records) == []


def test_a_start_elsewhere_before_the_stop_is_a_duplicate_for_as_long_as_both_ran():
    records = [start(1, "a", "s"), start(2, "b", "s", 2), stop(2.25, "a", "s")]
    fig = journal.figures(records, 0, 10)
    assert [(d.start, d.end, d.owners) for d in fig.duplicates] == [(2, 2.25, 2)]
    assert fig.duplicate_streams == 1
    assert fig.duplicate_s == pytest.approx(0.25)
    assert fig.gaps == []
    (line,) = journal.overlaps(records)
    assert "a [1.000, 2.250) token 1" in line
    assert "b [2.000, inf) token 2" in line


def test_a_stop_and_a_start_at_the_same_instant_do_not_overlap():
    records = [start(1, "a", "s"), start(2, "b", "s"), stop(2, "a", "s")]
    assert journal.figures(records, 0, 10).duplicates == []
    assert journal.overlaps(records) == []


def test_waiting_for_the_first_placement_is_not_a_gap_but_a_stream_left_unowned_is():
    records = [start(3, "a", "s"), start(1, "a", "t"), stop(4, "a", "t")]
    fig = journal.figures(records, 0, 10)
    assert [(g.stream, g.start, g.end) for g in fig.gaps] == [("t", 4, 10)]
    assert fig.longest_gap_s == 6


def test_figures_count_only_changes_inside_the_window():
    records = [start(1, "a", "s"), stop(5, "a", "s"), start(6, "b", "s"), start(20, "b", "t")]
    fig = journal.figures(records, 4, 10)
    assert (fig.starts, fig.stops, fig.first_placements) == (1, 1, 0)
    assert fig.replaced == {"s"}
    assert fig.converge_s == 2
    assert [(g.start, g.end) for g in fig.gaps] == [(5, 6)]


def test_a_sigkilled_process_stops_running_when_it_was_reaped():
    records = [
        start(1, "a", "s"),
        harness(5, "died", "a"),
        start(5.5, "b", "s", 2),
    ]
    spans = journal.intervals(records)["s"]
    assert [(i.worker, i.start, i.end) for i in spans] == [("a", 1, 5), ("b", 5.5, math.inf)]
    assert journal.figures(records, 0, 10).duplicates == []


def test_a_start_elsewhere_before_a_killed_process_was_reaped_is_a_duplicate():
    records = [start(1, "a", "s"), start(4.5, "b", "s", 2), harness(5, "died", "a")]
    assert [(d.start, d.end) for d in journal.figures(records, 0, 10).duplicates] == [(4.5, 5)]


def test_a_frozen_process_that_stops_its_streams_first_after_the_thaw_ran_nothing_meanwhile():
    records = [
        start(1, "a", "s"),
        harness(2, "freeze", "a"),
        start(8, "b", "s", 2),
        harness(10, "thaw", "a"),
        stop(10.05, "a", "s", "fence"),
    ]
    spans = journal.intervals(records)["s"]
    assert [(i.worker, i.start, i.end) for i in spans] == [("a", 1, 2), ("b", 8, math.inf)]
    assert journal.overlaps(records) == []


def test_a_frozen_process_that_acts_before_stopping_its_streams_ran_them_from_the_thaw():
    records = [
        start(1, "a", "s"),
        start(1, "a", "t"),
        harness(2, "freeze", "a"),
        start(8, "b", "s", 2),
        harness(10, "thaw", "a"),
        start(10.01, "a", "u"),  # something else first: "s" ran again meanwhile
        stop(10.05, "a", "s", "fence"),
    ]
    spans = journal.intervals(records)["s"]
    assert ("a", 10, 10.05) in [(i.worker, i.start, i.end) for i in spans]
    (dup,) = journal.figures(records, 0, 20).duplicates
    assert (dup.start, dup.end) == (10, 10.05)
    # "t" was never stopped: it runs from the thaw on.
    assert journal.intervals(records)["t"][-1].end == math.inf


def test_a_frozen_process_that_stops_its_streams_late_ran_them_from_the_thaw():
    records = [
        start(1, "a", "s"),
        harness(2, "freeze", "a"),
        start(8, "b", "s", 2),
        harness(10, "thaw", "a"),
        stop(13, "a", "s", "heartbeat"),
    ]
    (dup,) = journal.figures(records, 0, 20, resume_grace=1.0).duplicates
    assert (dup.start, dup.end) == (10, 13)


def test_balance_counts_every_live_worker_also_an_empty_one():
    owners = {"s1": ["a"], "s2": ["a"], "s3": ["b"], "s4": ["gone"]}
    assert journal.balance(owners, ["a", "b", "c"]) == {
        "max": 2,
        "min": 0,
        "mean": 1.0,
        "max_over_mean": 2.0,
    }


def test_a_journal_round_trips_through_files_and_a_cut_line_is_ignored(tmp_path: Path):
    writer = journal.Writer(tmp_path, "w1")
    t1 = writer.write("start", "radio/1", 7)
    t2 = writer.write("stop", "radio/1", 7, "fence")
    writer.close()
    ctl = journal.Writer(tmp_path, journal.HARNESS)
    t3 = ctl.write("died", "w1")
    ctl.close()
    with (tmp_path / "w1.journal").open("a") as f:
        f.write("123.0\tstart\tradio/")  # a line a SIGKILL cut short
    records = journal.load(tmp_path)
    assert records == [
        Record(t1, "w1", "start", "radio/1", 7),
        Record(t2, "w1", "stop", "radio/1", 7, "fence"),
        Record(t3, "w1", "died"),
    ]
    tail = journal.Tail(tmp_path)
    assert len(tail.poll()) == 3
    with (tmp_path / "w1.journal").open("a") as f:
        f.write("1\n124.0\tstart\tradio/2\t8\t\n")
    assert [r.stream for r in tail.poll()] == ["radio/2"]
    assert tail.poll() == []


def test_a_stop_of_a_stream_never_started_is_an_error_of_the_journal():
    with pytest.raises(ValueError, match="did not run"):
        journal.intervals([stop(1, "a", "s")])


def test_violations_name_duplicates_long_gaps_and_streams_that_never_ran():
    records = [
        start(1, "a", "dup"),
        start(2, "b", "dup"),
        start(1, "a", "slow"),
        stop(3, "a", "slow"),
        start(9, "b", "slow"),
        start(1, "a", "fine"),
        stop(3, "a", "fine"),
        start(4, "b", "fine"),
    ]
    problems = journal.violations(
        records, ["dup", "slow", "fine", "lost"], since=0, until=20, max_gap=5
    )
    assert len(problems) == 3
    assert problems[0].startswith("dup: a [1.000, inf) token 1 and b [2.000, inf)")
    assert problems[1] == "lost: never ran"
    assert problems[2].startswith("slow: ran nowhere for 6.000 s [3.000, 9.000)")
    # Clipped to the window, the gap is 4 s; a duplicate counts whatever the keys.
    late = journal.violations(records, ["slow"], since=5, until=20, max_gap=5)
    assert [p.split(":")[0] for p in late] == ["dup"]
