"""Job ids (jobs/contract/ids.py): made, checked, and packed into / parsed from RQ message ids. Pure, no Redis."""

from __future__ import annotations

import pytest

from jobs.contract import keys
from jobs.contract.ids import is_job_id, new_job_id, parse_rq_job_id, rq_job_id, validate_job_id
from jobs.contract.queue import Delivery, _message_from_rq_id
from jobs.errors import InvalidJobIdError, StorageError


def test_new_ids_are_valid_unique_and_time_ordered() -> None:
    ids = [new_job_id() for _ in range(200)]
    assert all(validate_job_id(i) == i for i in ids)
    assert len(set(ids)) == len(ids)
    assert [i[:11] for i in ids] == sorted(i[:11] for i in ids)  # the millisecond prefix never goes back


def test_an_invalid_id_is_its_own_error_not_a_storage_error() -> None:
    with pytest.raises(InvalidJobIdError, match="invalid job id '../x'") as ei:
        validate_job_id("../x")
    assert not isinstance(ei.value, StorageError)
    assert not is_job_id("abc\n") and not is_job_id(None) and is_job_id("a-b_c")


@pytest.mark.parametrize(("rq_id", "parsed"), [
    ("abc-a1", ("abc", 1)),
    ("a-b-a-a12", ("a-b-a", 12)),  # the last "-a" separates: ids may contain "-a"
    ("abc-a1234567", ("abc", 1234567)),
    ("abc-a12345678", ("abc", None)),  # longer than any attempt
    ("abc-a²", ("abc", None)),  # a Unicode digit is not an attempt (int() would raise)
    ("abc-a", ("abc", None)),
    ("abc", ("abc", None)),
    ("../x-a1", (None, 1)),
    ("", (None, None)),
])
def test_rq_ids_parse_to_what_they_can_name(rq_id: str, parsed: tuple[str | None, int | None]) -> None:
    assert parse_rq_job_id(rq_id) == parsed
    d = Delivery(rq_id, "q", None)
    assert (d.guess_job_id(), d.guess_attempt()) == parsed


def test_packing_round_trips_and_keys_uses_the_same_packing() -> None:
    assert keys.rq_job_id is rq_job_id
    jid = new_job_id()
    assert parse_rq_job_id(rq_job_id(jid, 7)) == (jid, 7)
    msg = _message_from_rq_id(rq_job_id(jid, 7))
    assert msg is not None and (msg.job_id, msg.attempt) == (jid, 7)
    assert _message_from_rq_id(rq_job_id(jid, 2_000_000)) is None  # past the attempt bound of a message
    assert _message_from_rq_id("abc-a²") is None
