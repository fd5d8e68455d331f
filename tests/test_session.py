"""session.Visit: a page's question, its answer and the feedback given, as the app's handlers step it."""

from __future__ import annotations

import pytest

from recommender.session import Visit


def test_feedback_is_liked_or_disliked_never_both_and_the_latest_click_wins():
    visit = Visit(query="a.png").steered("like", "x").steered("dislike", "y")
    assert (visit.liked, visit.disliked) == (("x",), ("y",))
    visit = visit.steered("dislike", "x")
    assert (visit.liked, visit.disliked) == ((), ("y", "x"))
    assert visit.steered("reset", None) == Visit(query="a.png")


def test_a_new_question_starts_without_feedback():
    steered = Visit(query="a.png", index="pets").steered("like", "x")
    fresh = steered.asking("b.png", "pets")
    assert fresh.query == "b.png" and fresh.index == "pets" and not fresh.liked and not fresh.disliked


def test_only_what_was_shown_can_be_picked():
    with pytest.raises(IndexError):
        Visit().shown(0)


def test_steering_says_how_the_look_alikes_are_steered_and_nothing_without_feedback():
    visit = Visit(query="a.png")
    assert visit.steering is None
    steered = visit.steered("like", "x").steered("dislike", "y").steered("dislike", "z")
    assert steered.steering == "Look-alikes steered by your feedback: 1 more like, 2 less like"
    assert steered.steered("reset", None).steering is None
