"""What an audience vote shows: answers that fit Discord's poll, the question's limits, the result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.errors import InputError
from bot.models import AudienceVote
from bot.votes import ANSWER_LIMIT, answers_for, check_question

OPENED = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


def closed(*counts: int) -> AudienceVote:
    answers = ("Ada", "Basil", "Cleo")[: len(counts)]
    return AudienceVote(
        "Who?", answers, OPENED, OPENED + timedelta(hours=1), counts, OPENED + timedelta(hours=1)
    )


def test_answers_fit_discord_and_stay_told_apart():
    long = "A" * 80
    answers = answers_for([long, long + "B", "   ", "Basil"])
    assert all(len(a) <= ANSWER_LIMIT for a in answers)
    assert len(set(answers)) == 4 and answers[2] == "?" and answers[3] == "Basil"


def test_the_question_is_one_line_within_discords_limit():
    assert check_question("  Who\n was   funnier? ") == "Who was funnier?"
    with pytest.raises(InputError, match="Discord takes 300"):
        check_question("x" * 301)
    with pytest.raises(InputError, match="is empty"):
        check_question(" \n ")


@pytest.mark.parametrize(
    ("counts", "result"),
    [
        ((3, 5), "Ada 3 · Basil 5 (8 votes; most votes: Basil)"),
        ((2, 2, 1), "Ada 2 · Basil 2 · Cleo 1 (5 votes; a tie: Ada and Basil)"),
        ((0, 0), "Ada 0 · Basil 0: no votes"),
        ((1, 0), "Ada 1 · Basil 0 (1 vote; most votes: Ada)"),
    ],
)
def test_the_result_names_the_winner_a_tie_or_no_votes(counts, result):
    assert closed(*counts).result == result


def test_an_open_vote_says_until_when_and_a_lost_one_says_so():
    vote = AudienceVote("Who?", ("Ada", "Basil"), OPENED, OPENED + timedelta(hours=24))
    assert vote.result == "open until 2026-11-28 18:00 UTC"
    lost = AudienceVote("Who?", ("Ada", "Basil"), OPENED, OPENED, None, OPENED)
    assert lost.result == "closed without a tally (its message was deleted)"
