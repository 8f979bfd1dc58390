"""The account's queue as the client models it (pure), and what it saves against the emulator."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from emulator import EmulatorServer
from tasks.client import WaveSpeedClient, WaveSpeedSettings
from tasks.polling import MIN_SAMPLES, REFUTATIONS, AccountQueue
from tests.test_client import BALL, MODEL


def confirmed_queue(slots: int, accepted: list[str]) -> AccountQueue:
    queue = AccountQueue(slots)
    for name in accepted:
        queue.accepted(name, 0.0)
    probe = next(name for name in accepted if queue.needs_probe(name))
    queue.observe_probe(probe, "created")
    assert queue.confirmed is True
    return queue


def test_beyond_the_slots_a_prediction_starts_when_the_one_ahead_of_it_ends() -> None:
    queue = confirmed_queue(2, ["a", "b", "c", "d", "e"])
    assert not queue.is_queued("a") and not queue.is_queued("b")
    assert queue.expected_start("a", 10.0) == 0.0
    assert queue.expected_start("c", 10.0) == 10.0  # after a
    assert queue.expected_start("d", 10.0) == 10.0  # after b
    assert queue.expected_start("e", 10.0) == 20.0  # after c, which waits for a


def test_an_end_seen_before_the_estimate_moves_the_successors_earlier() -> None:
    queue = confirmed_queue(2, ["a", "b", "c", "d", "e"])
    queue.finished("a", 7.0)
    assert queue.expected_start("c", 10.0) == 7.0
    assert queue.expected_start("e", 10.0) == 17.0
    queue.accepted("f", 8.0)  # b c d e unfinished: the third of them (d) frees f's slot
    assert queue.expected_start("f", 10.0) == 20.0  # d after b, which started at 0


def test_an_end_noticed_late_does_not_delay_the_successors() -> None:
    """Notices lag; dated at the notice, each generation of successors was polled later than the
    one before (lag p90 8.9 s at C=1000, L=10 s)."""
    queue = confirmed_queue(2, ["a", "b", "c", "d", "e"])
    queue.finished("a", 50.0)
    assert queue.expected_start("c", 10.0) == 10.0
    assert queue.expected_start("e", 10.0) == 20.0


def test_an_expected_start_is_fixed_once_given() -> None:
    queue = confirmed_queue(2, ["a", "b", "c", "d"])
    assert queue.expected_start("d", 10.0) == 10.0
    queue.finished("b", 8.5)
    assert queue.expected_start("d", 12.0) == 10.0  # its polls were timed from it already


def test_within_the_slots_nothing_is_queued_or_probed() -> None:
    queue = AccountQueue(3)
    for name in ("a", "b", "c"):
        queue.accepted(name, 1.0)
        assert not queue.needs_probe(name)
    queue.finished("a", 2.0)
    queue.accepted("d", 3.0)
    assert not queue.is_queued("d")


def test_the_model_waits_for_a_probe_and_is_switched_off_by_refutations() -> None:
    queue = AccountQueue(1)
    names = [f"p{index}" for index in range(REFUTATIONS + 2)]
    for name in names:
        queue.accepted(name, 0.0)
    assert queue.expected_start(names[1], 5.0) is None  # not trusted before a probe answered
    assert queue.needs_probe(names[1])
    for name in names[1 : REFUTATIONS + 1]:
        queue.observe_probe(name, "processing")  # the account ran it at once: it has more slots
    assert queue.confirmed is False
    assert not queue.needs_probe(names[-1])
    assert queue.expected_start(names[-1], 5.0) is None


def test_the_order_is_the_servers_not_the_order_of_the_answers() -> None:
    """Three submits on two slots, answered c, b, a although the server accepted a, b, c: c is the
    one that waits (for a), whatever order the answers came in."""
    queue = AccountQueue(2)
    queue.accepted("c", 0.03, created_ns=3)
    queue.accepted("b", 0.04, created_ns=2)
    queue.accepted("a", 0.05, created_ns=1)
    assert [queue.is_queued(name) for name in "abc"] == [False, False, True]
    queue.observe_probe("c", "created")
    assert queue.confirmed is True
    queue.finished("a", 7.0)
    assert queue.expected_start("c", 10.0) == 7.0
    queue.accepted("d", 8.0, created_ns=4)  # b c unfinished: d waits for b
    assert queue.expected_start("d", 10.0) == pytest.approx(10.04)  # b started at once (~0.04)


def test_answers_without_a_readable_creation_time_keep_their_order() -> None:
    queue = AccountQueue(1)
    queue.accepted("a", 0.0, created_ns=5)
    queue.accepted("b", 0.1)
    queue.accepted("c", 0.2, created_ns=1)  # b's time unknown: nothing to reorder against
    assert [queue.is_queued(name) for name in "abc"] == [False, True, True]


def test_a_servers_clock_cannot_move_a_prediction_ahead_of_one_answered_before_it_was_sent() -> None:
    """Stamps from servers whose clocks disagree: b was sent after a's answer, so it was accepted
    after a, whatever its stamp says."""
    queue = AccountQueue(1)
    queue.accepted("a", 1.0, created_ns=5_000)
    queue.accepted("b", 2.1, created_ns=1_000, sent_at=2.0)
    assert [queue.is_queued(name) for name in "ab"] == [False, True]


def test_a_probe_counts_against_the_model_only_from_a_queued_place() -> None:
    queue = AccountQueue(2)
    queue.accepted("a", 0.0, created_ns=1)
    queue.accepted("b", 0.1, created_ns=3)
    queue.accepted("x", 0.2, created_ns=2)  # answered late: takes b's place, b moves to the queue
    assert [queue.is_queued(name) for name in "axb"] == [False, False, True]
    queue.observe_probe("x", "processing")  # its place is within the slots: no evidence
    queue.accepted("c", 0.3)
    queue.accepted("d", 0.4)
    queue.observe_probe("b", "processing")
    queue.observe_probe("c", "processing")
    assert queue.confirmed is None  # two refutations, not three
    queue.observe_probe("d", "processing")
    assert queue.confirmed is False


def test_each_notice_frees_a_slot_and_the_queue_starts_in_order() -> None:
    queue = confirmed_queue(2, ["a", "b", "c", "d"])  # c and d wait for the first and second freed slot
    assert queue.release_start("c") is None
    queue.finished("b", 5.0)  # whichever finishes frees the slot c takes: not necessarily a
    assert queue.release_start("c") == 5.0 and queue.release_start("d") is None
    queue.finished("a", 6.0)
    assert queue.release_start("d") == 6.0
    assert queue.expected_start("c", 10.0) == 6.0  # the estimate waits for a, whose slot came later


def test_a_queued_prediction_seen_finished_before_its_turn_started_with_all_ahead_of_it() -> None:
    queue = confirmed_queue(1, ["a", "b", "c", "d"])  # b, c, d after one, two, three freed slots
    queue.finished("d", 9.0)  # earlier finishes went unseen: d ran, so c did (one count gives b only)
    assert queue.release_start("c") == 9.0


def test_a_wait_for_the_count_of_freed_slots_wakes_when_it_is_reached() -> None:
    queue = confirmed_queue(1, ["a", "b"])

    async def go() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.ensure_future(queue.wait_for_release("b", 30.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        queue.finished("a", 1.0)
        await waiting
        return loop.time() - started

    assert asyncio.run(go()) < 1.0
    assert asyncio.run(asyncio.wait_for(queue.wait_for_release("a", 30.0), 1.0)) is None  # not queued


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AccountQueue(0)


@pytest.mark.parametrize("modelled", [True, False])
def test_queued_predictions_are_polled_from_their_expected_start(
    emulator: EmulatorServer, modelled: bool
) -> None:
    """20 predictions on an account of 10 slots: the second ten wait a whole duration in the queue.
    Timed from their submit they are polled when they have only just started, then every floor
    until done (measured: 3.5 polls per prediction); timed from their expected start, after one
    probe each while the queue is unconfirmed, 1.5 (lag 0.2 s both ways)."""
    emulator.config.latency_s, emulator.config.jitter_s, emulator.config.max_concurrency = 2.0, 0.1, 10
    settings = WaveSpeedSettings(api_key=emulator.api_key, base_url=emulator.url, poll_initial_interval_s=0.3)

    async def go() -> tuple[list[str], bool | None]:
        async with WaveSpeedClient(settings, account_slots=10 if modelled else None) as client:
            for _ in range(MIN_SAMPLES):
                client.durations.add(MODEL, 2.1)
            url = await client.upload(BALL, "ball.png", "image/png")
            submitted = [(await client.submit(MODEL, {"image": url})).id for _ in range(20)]
            await asyncio.gather(*(client.wait(pid, model=MODEL, timeout_s=30) for pid in submitted))
            return submitted, client.account_queue.confirmed if client.account_queue else None

    ids, confirmed = asyncio.run(go())
    polls = statistics.mean(emulator.stats.polls_for(i) for i in ids)
    lags = emulator.stats.completion_lags()
    assert len(lags) == 20
    if modelled:
        assert confirmed is True
        assert polls <= 1.8, polls
        assert statistics.mean(lags.values()) <= 0.5, lags
    else:
        assert polls >= 2.5, polls  # what the model saves: it must stay measurable here


def test_answers_that_overtake_each_other_do_not_mislead_the_model(emulator: EmulatorServer) -> None:
    """Three submits on two slots, answered in the reverse of the order the server accepted them
    (seed 74 draws answer delays 0.52, 0.31, 0.07 s). Taken in the answers' order, the model put
    the first-accepted prediction in the queue, its probe found it processing, and the account's
    queue was never confirmed."""
    config = emulator.config
    config.latency_s, config.jitter_s, config.max_concurrency = 1.0, 0.0, 2
    config.submit_answer_delay_s, config.seed = 0.6, 74
    emulator.reset()  # re-seeds: with no jitter and no faults the delays are the only draws
    settings = WaveSpeedSettings(api_key=emulator.api_key, base_url=emulator.url, poll_initial_interval_s=0.3)

    answered: list[str] = []  # in the order the client received the answers

    async def go() -> AccountQueue:
        async with WaveSpeedClient(settings, account_slots=2) as client:
            assert client.account_queue is not None
            url = await client.upload(BALL, "ball.png", "image/png")

            async def submit() -> None:
                answered.append((await client.submit(MODEL, {"image": url})).id)

            await asyncio.gather(*(submit() for _ in range(3)))
            await asyncio.gather(*(client.wait(pid, model=MODEL, timeout_s=30) for pid in answered))
            return client.account_queue

    queue = asyncio.run(go())
    stats = emulator.stats
    by_acceptance = sorted(answered, key=stats.accepted_at.__getitem__)
    assert answered == by_acceptance[::-1]  # the set-up itself
    assert queue.confirmed is True
    assert stats.started_at[by_acceptance[2]] - stats.accepted_at[by_acceptance[2]] >= 0.9  # it queued


def test_only_predictions_still_waited_on_stay_referenced() -> None:
    """An expected start, once given, drops the link to the prediction ahead, and a refuted model
    forgets everything: over a long run no chain of links reaches back through history (one kept
    100,000 entries alive after 100,000 predictions)."""
    queue = confirmed_queue(2, ["p0", "p1", "p2", "p3"])
    for index in range(4, 1000):
        queue.accepted(f"p{index}", float(index))
        queue.expected_start(f"p{index}", 10.0)  # what each wait asks for before its first poll
        queue.finished(f"p{index - 4}", float(index))
    live = [queue._unfinished[f"p{index}"] for index in range(996, 1000)]
    reachable, frontier = set(), [entry.after for entry in live]
    while frontier:
        entry = frontier.pop()
        if entry is not None and id(entry) not in reachable:
            reachable.add(id(entry))
            frontier.append(entry.after)
    assert len(reachable) <= 4


def test_a_refuted_model_forgets_everything_and_lets_queued_predictions_scout() -> None:
    queue = AccountQueue(1)
    for index in range(1000):
        queue.accepted(f"p{index}", float(index))  # never asked for a start: links everywhere
    for name in ("p1", "p2", "p3"):
        queue.observe_probe(name, "processing")
    assert queue.confirmed is False
    assert not queue._unfinished
    assert not queue.is_queued("p999")
    queue.accepted("late", 2000.0)
    assert not queue._unfinished
