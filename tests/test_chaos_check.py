"""The checker of `arzani chaos` (scripts/chaoscheck.py) can fail: hand-made histories and final
states with each kind of violation, and a clean one with none. Plus the time-to-recovery rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scripts.chaoscheck import (
    Attempt,
    Fault,
    Stored,
    StoredConversation,
    StoredMessage,
    accepted_messages,
    check,
    recovery_times,
)

C1, C2 = "conv-1", "conv-2"


def clean() -> tuple[list[Attempt], Stored]:
    """Session s1: two messages (the first posted twice, the second answered 200 on a retry after a
    timeout), both answered in order; session s2: one message that failed with a reason."""
    attempts = [
        Attempt("s1", "a", "hello", 1.0, 202, 1, C1, 1.1),
        Attempt("s1", "a", "hello", 1.0, 200, 1, C1, 1.2),  # its twin, answered with the first
        Attempt("s1", "b", "again", 2.0, 0),  # timed out...
        Attempt("s1", "b", "again", 12.0, 200, 3, C1, 12.1),  # ...and its retry found it stored
        Attempt("s2", "c", "other", 3.0, 503),
        Attempt("s2", "c", "other", 3.5, 202, 5, C2, 3.6),
    ]
    stored = Stored(
        conversations=[StoredConversation(C1, "s1"), StoredConversation(C2, "s2")],
        messages=[
            StoredMessage(1, C1, "user", "answered", client_message_id="a", created_at=1.1),
            StoredMessage(2, C1, "assistant", "complete", reply_to=1, created_at=1.5),
            StoredMessage(3, C1, "user", "answered", client_message_id="b", created_at=2.1),
            StoredMessage(4, C1, "assistant", "complete", reply_to=3, created_at=2.5),
            StoredMessage(5, C2, "user", "failed", client_message_id="c", failure_reason="worker_died"),
        ],
        tracked={"s1": C1, "s2": C2},
    )
    return attempts, stored


def kinds(attempts, stored) -> list[str]:
    return sorted(v.kind for v in check(attempts, stored).violations)


def test_a_clean_history_has_no_violation_and_counts_right():
    verdict = check(*clean())
    assert verdict.violations == []
    assert (verdict.accepted, verdict.stored_once, verdict.answered, verdict.failed) == (3, 3, 2, 1)
    assert verdict.failure_reasons == {"worker_died": 1}
    assert verdict.replayed == 2
    assert verdict.stored_unacknowledged == 0


def test_an_accepted_message_not_stored_is_lost():
    attempts, stored = clean()
    stored.messages = [m for m in stored.messages if m.id not in (3, 4)]
    assert kinds(attempts, stored) == ["lost"]


def test_a_message_stored_twice_is_a_duplicate():
    attempts, stored = clean()
    stored.messages += [StoredMessage(6, C1, "user", "answered", client_message_id="a"),
                        StoredMessage(7, C1, "assistant", "complete", reply_to=6)]
    assert kinds(attempts, stored) == ["duplicated"]
    assert check(attempts, stored).stored_once == 2


def test_a_second_live_conversation_of_a_session_is_a_split():
    attempts, stored = clean()
    stored.conversations.append(StoredConversation("conv-3", "s1"))
    assert kinds(attempts, stored) == ["split_session"]
    # A deleted one is no split (the session's next message after a delete starts a new one).
    stored.conversations[-1] = StoredConversation("conv-3", "s1", deleted=True)
    assert kinds(attempts, stored) == []


def test_a_message_answered_in_another_conversation_than_its_answer_said_moved():
    attempts, stored = clean()
    attempts[0] = replace(attempts[0], conversation_id="conv-elsewhere")
    assert kinds(attempts, stored) == ["moved"]


def test_two_answers_naming_different_messages_break_idempotency():
    attempts, stored = clean()
    attempts[1] = replace(attempts[1], message_id=99)
    assert kinds(attempts, stored) == ["idempotency"]


def test_a_double_reply():
    attempts, stored = clean()
    stored.messages.append(StoredMessage(6, C1, "assistant", "complete", reply_to=1))
    assert kinds(attempts, stored) == ["double_reply"]


def test_a_missing_reply():
    attempts, stored = clean()
    stored.messages = [m for m in stored.messages if m.id != 4]
    stored.messages[2] = replace(stored.messages[2], status="pending")
    assert kinds(attempts, stored) == ["unanswered"]
    # ...and an `answered` status with no reply behind it is caught too.
    stored.messages[2] = replace(stored.messages[2], status="answered")
    assert kinds(attempts, stored) == ["status_mismatch"]


def test_a_failure_without_a_reason():
    attempts, stored = clean()
    stored.messages[4] = replace(stored.messages[4], failure_reason=None)
    assert kinds(attempts, stored) == ["failed_without_reason"]


def test_a_reply_in_another_conversation_is_misplaced():
    attempts, stored = clean()
    stored.messages[3] = replace(stored.messages[3], conversation_id=C2)
    assert kinds(attempts, stored) == ["misplaced_reply"]


def test_replies_out_of_message_order():
    attempts, stored = clean()
    # message 3's reply (id 2) came before message 1's reply (id 4)
    stored.messages[1] = replace(stored.messages[1], reply_to=3)
    stored.messages[3] = replace(stored.messages[3], reply_to=1)
    assert kinds(attempts, stored) == ["out_of_order"]


def test_a_redis_key_naming_another_conversation():
    attempts, stored = clean()
    stored.tracked["s1"] = C2
    assert kinds(attempts, stored) == ["redis_key"]
    stored.tracked["s1"] = "conv-gone"
    assert kinds(attempts, stored) == ["redis_key"]
    del stored.tracked["s1"]  # an absent key (Redis restarted empty) is no disagreement
    assert kinds(attempts, stored) == []


def test_a_retry_refused_is_a_violation_but_429_and_503_are_not():
    attempts, stored = clean()
    assert kinds(attempts + [Attempt("s1", "a", "hello", 5.0, 429), Attempt("s1", "a", "hello", 5.0, 503)],
                 stored) == []
    assert kinds(attempts + [Attempt("s1", "a", "hello", 5.0, 409)], stored) == ["refused"]


def test_a_reply_to_nothing_is_an_orphan():
    attempts, stored = clean()
    stored.messages.append(StoredMessage(9, C1, "assistant", "complete", reply_to=None))
    assert kinds(attempts, stored) == ["orphan_reply"]


def test_an_accepted_message_keeps_its_first_send_and_its_first_acceptance():
    (message,) = [m for m in accepted_messages(clean()[0]) if m.client_message_id == "b"]
    assert (message.first_sent_at, message.accepted_at) == (2.0, 12.1)
    assert message.message_ids == {3}


@pytest.mark.parametrize(("sent", "done", "charged"), [
    (0.5, 1.5, {"a": [0.5]}),  # in flight at fault a (t=1): 0.5 s after it
    (0.5, 7.0, {"a": [6.0]}),  # in flight at both a and b: the first one is charged
    (1.5, 2.5, {}),  # between the faults: none
    (4.0, 9.0, {"b": [4.0]}),
])
def test_each_message_is_charged_to_the_first_fault_it_was_in_flight_at(sent, done, charged):
    assert recovery_times([Fault("a", 1.0), Fault("b", 5.0)], [(sent, done)]) == charged


def test_a_fault_recovers_when_the_last_of_its_messages_is_done():
    times = recovery_times([Fault("a", 10.0)], [(9.0, 10.2), (9.5, 13.0), (9.9, 11.0)])
    assert times == {"a": [3.0]}


def test_the_recovery_bound_is_derived_from_the_procfile_and_the_settings():
    from app.config import Settings
    from scripts.chaos import procfile_worker_flags, recovery_bound

    flags = procfile_worker_flags()
    assert flags == {"job-monitoring-interval": 10, "maintenance-interval": 30, "worker-ttl": 45}
    bound, how = recovery_bound(Settings.from_env({}), flags)
    # max(whole worker 10 + 60 + 30 + 30, sweep 60 + 60 + 30) + retries 1 + 5 + 15 + 1 + margin 30
    assert bound == 150 + 22 + 30
    assert "monitoring 10" in how and "sweep 150 s" in how


def test_the_summary_line():
    from collections import Counter

    from scripts.chaos import RunResult, summary_line
    from scripts.chaoscheck import Verdict

    verdict = Verdict(accepted=5431, stored_once=5431, answered=5402, failed=29,
                      failure_reasons=Counter(worker_died=29))
    line = summary_line(RunResult(verdict, Counter({"rq-worker": 800, "scheduler": 12}), minutes=10))
    assert line == ("chaos: 10.0 min, 812 faults, 5,431 accepted, 5,431 stored once, 5,402 answered, "
                    "29 failed (worker_died 29), 0 violations")


def test_isolated_recoveries_are_those_done_before_the_next_fault():
    faults = [Fault("a", 1.0), Fault("b", 5.0), Fault("c", 20.0)]
    in_flight = [(0.5, 7.0), (4.9, 5.2), (6.0, 6.5), (19.0, 30.0)]
    assert recovery_times(faults, in_flight) == {"a": [6.0], "b": [pytest.approx(0.2)], "c": [10.0]}
    # a's message was done after b happened: not isolated; c is the last fault: nothing follows it
    assert recovery_times(faults, in_flight, isolated=True) == {"b": [pytest.approx(0.2)], "c": [10.0]}


def test_a_run_directory_is_judged_again_the_same(tmp_path):
    """`arzani chaos --recheck DIR`: the records and the saved final state give the same verdict."""
    import json
    from dataclasses import asdict

    from scripts.chaos import read_run, write_state

    attempts, stored = clean()
    with open(tmp_path / "client-0.jsonl", "w") as f:
        for attempt in attempts:
            f.write(json.dumps(asdict(attempt)) + "\n")
    (tmp_path / "faults.jsonl").write_text(json.dumps({"kind": "redis-restart", "at": 1.05, "done": "x"}) + "\n"
                                           + json.dumps({"kind": "work-horse", "at": 9.0, "done": None}) + "\n")
    stored.messages.remove(stored.messages[3])  # message 3 loses its reply...
    stored.messages[2] = replace(stored.messages[2], status="pending")  # ...and waits
    write_state(tmp_path / "state.jsonl", stored, {5: 3.9})
    result = read_run(tmp_path)
    assert [v.kind for v in result.verdict.violations] == ["unanswered"]
    assert result.faults == {"redis-restart": 1}  # the one that hit nothing is not counted
    assert result.recovery == {"redis-restart": [pytest.approx(0.45)]}  # message 1, answered at 1.5
