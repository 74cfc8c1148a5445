"""Text stays text: escape sequences never reach a terminal, lone surrogates never cost a turn, and no
secret, whole or in part, reaches a log line."""

from __future__ import annotations

import io
import json
import logging

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from bot.call import reply_limit
from bot.console import DialogueView
from bot.events import Delta, Noted, TurnStarted
from bot.log import setup_logging
from bot.models import Note, NoteKind, Persona, StopReason, TurnStatus
from bot.text import PARTIAL, Masker, printable, repair
from tests.conftest import API_KEY, make_spec, run_all
from tests.fake_openrouter import Reply

OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"  # writes the terminal's clipboard
CLEAR = "\x1b[2J\x1b[H"


def test_printable_drops_escape_sequences_and_controls_but_keeps_lines_and_tabs():
    assert printable(f"a{OSC52}b{CLEAR}c\x07\x00\x9b2Jd\r\n\te") == "abcd\n\te"
    assert printable("plain text, ünïcödé and emoji 🎈") == "plain text, ünïcödé and emoji 🎈"
    # An override would show "Ended: all rounds completed" for what reads otherwise; Hebrew and its
    # right-to-left mark stay as written.
    assert printable("a\u202edetelpmoc sdnuor lla :dednE\u202c b \u2067x\u2069") == (
        "adetelpmoc sdnuor lla :dednE b x"
    )
    assert printable("\u05e9\u05dc\u05d5\u05dd\u200f!") == "\u05e9\u05dc\u05d5\u05dd\u200f!"


def test_repair_turns_lone_surrogates_into_the_replacement_character():
    assert repair("ok \ud800 and \udcff") == "ok \ufffd and \ufffd"
    assert repair("a pair 😀 stays") == "a pair 😀 stays"


def test_the_terminal_view_shows_model_text_without_its_escape_sequences():
    out = io.StringIO()
    view = DialogueView(Console(file=out, color_system=None, width=100))
    persona = Persona(f"Evil{CLEAR}", "x/evil")
    view.show(TurnStarted(0, 1, 0, persona, 0))
    view.show(Delta(0, f"hello {OSC52}world{CLEAR}"))
    view.show(Noted(Note(1, 1, NoteKind.INTERJECTION, f"hi{OSC52}", None, author="mallory")))  # type: ignore[arg-type]
    shown = out.getvalue()
    assert "\x1b" not in shown and "\x07" not in shown
    assert "hello world" in shown and "Evil" in shown


def test_a_masker_hides_secrets_whole_in_part_and_webhook_tokens():
    mask = Masker([API_KEY])
    assert API_KEY not in mask(f"bad key {API_KEY}")
    echoed = f"Invalid key: {API_KEY[:14]}…"  # a server that echoes only the start of the key
    assert API_KEY[:14] not in mask(echoed) and "Invalid key:" in mask(echoed)
    url = "https://discord.com/api/v10/webhooks/987654321/aBc-DeF_123.xyz?wait=true"
    assert mask(url) == "https://discord.com/api/v10/webhooks/987654321/***?wait=true"
    assert mask("nothing secret here at all") == "nothing secret here at all"


# Text with the key, and parts of it, among other characters; and where a stream breaks it in pieces.
key_parts = st.sampled_from([API_KEY, API_KEY[:PARTIAL], API_KEY[3:15], API_KEY[-9:], API_KEY[: PARTIAL - 1]])
filler = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), max_size=10)
streamed = st.lists(st.one_of(key_parts, filler), max_size=12).map("".join)


def leaks(text: str) -> bool:
    """Whether any run of PARTIAL characters of the key is in the text."""
    return any(API_KEY[i : i + PARTIAL] in text for i in range(len(API_KEY) - PARTIAL + 1))


@given(streamed, st.lists(st.integers(1, 12), max_size=40))
def test_a_streamed_text_is_masked_as_the_whole_would_be_however_it_is_split(text, sizes):
    pieces, start = [], 0
    for size in sizes:
        pieces.append(text[start : start + size])
        start += size
    pieces.append(text[start:])
    mask = Masker([API_KEY])
    stream = mask.stream()
    assert stream is not None
    shown = "".join(stream.feed(piece) for piece in pieces) + stream.flush()
    assert shown == mask(text) and not leaks(shown)


def test_a_streamed_text_shows_as_it_comes_but_for_what_could_begin_the_key():
    stream = Masker([API_KEY]).stream()
    assert stream is not None
    assert stream.feed("Hello there, ") == "Hello there, "
    assert stream.feed("my key: sk-o") == "my key: "  # "sk-o" could be the key's start: it waits
    assert stream.feed("r-v1-test") == "***"
    assert stream.feed("-secret-0123456789 and done.") == " and done."
    assert stream.feed("; sk-o") == "; " and stream.flush() == "sk-o"
    assert Masker([]).stream() is None and Masker(["short"]).stream() is None


def test_logs_at_debug_carry_no_secret_and_discord_stays_at_warning(capfd):
    setup_logging("DEBUG", [API_KEY])
    try:
        logging.getLogger("bot.anything").debug("calling with %s", API_KEY)
        try:
            raise RuntimeError(f"server said: key {API_KEY[5:20]} is wrong")
        except RuntimeError:
            logging.getLogger("bot.anything").exception("failed")
        logging.getLogger("discord.webhook.async_").debug("POST /webhooks/1/secret-token")
        logging.getLogger("discord.webhook.async_").warning("429 on /webhooks/1/secret-token-2")
        assert logging.getLogger("discord").getEffectiveLevel() == logging.WARNING
    finally:
        logging.getLogger().handlers.clear()
    err = capfd.readouterr().err
    assert API_KEY[5:20] not in err and API_KEY[:8] not in err
    assert "secret-token" not in err and "/webhooks/1/***" in err
    assert "calling with ***" in err and "Traceback" in err


def test_json_log_lines_are_one_object_each_with_secrets_masked(capfd):
    setup_logging("INFO", [API_KEY], as_json=True)
    try:
        logging.getLogger("bot.anything").info('calling with %s and a "quote"', API_KEY)
        try:
            raise RuntimeError(f"server said: key {API_KEY[5:20]} is wrong")
        except RuntimeError:
            logging.getLogger("bot.anything").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    lines = capfd.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "bot.anything"
    assert first["message"] == 'calling with *** and a "quote"'
    assert second["message"] == "failed" and "Traceback" in second["exception"]
    assert API_KEY[5:20] not in lines[1] and first["time"].endswith("+00:00")


async def test_lone_surrogates_from_a_provider_are_repaired_and_cost_no_turn(runner, store, server):
    server.enqueue(Reply(text="broken \ud800 text", reasoning="odd \udfff thought"), Reply(text="fine"))
    dialogue = await runner.create(make_spec(rounds=1))
    events = await run_all(runner, dialogue.id)
    assert events[-1].dialogue.stop_reason is StopReason.MAX_ROUNDS
    first, second = await store.list_turns(dialogue.id)
    assert first.status is TurnStatus.OK and first.text == "broken \ufffd text"
    assert first.reasoning == "odd \ufffd thought" and second.text == "fine"


async def test_a_cut_off_reply_keeps_every_character_even_those_waiting_on_the_mask(runner, store, server):
    # The cut falls inside "test", letters the key is made of: they waited on the next piece, which
    # never comes, and are still the reply's.
    limit = reply_limit(20)
    text = "tests " * (limit // 3)
    assert text[:limit].endswith("test")
    server.enqueue(Reply(text=text, chunk_chars=7))
    dialogue = await runner.create(make_spec(rounds=1, max_tokens=20))
    await run_all(runner, dialogue.id)
    (turn,) = await store.list_turns(dialogue.id)
    assert turn.status is TurnStatus.CANCELLED and turn.text == text[:limit]
