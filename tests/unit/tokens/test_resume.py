"""A resumed render equals the full render: the real templates of llama.cpp's test data, on
random conversations extended turn by turn, and the checks that refuse to resume."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from proxy.tokens.resume import MIN_MESSAGES, ResumedRender, certify
from proxy.tokens.templates import Normalization, render

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip
# The tools block sits before the last user message (as Mistral's templates place it): an
# appended user message changes the text of earlier ones.
LAST_USER = ("{% set last = namespace(i=0) %}{% for m in messages %}{% if m.role == 'user' %}"
             "{% set last.i = loop.index0 %}{% endif %}{% endfor %}{% for m in messages %}"
             "{% if loop.index0 == last.i %}[TOOLS]{% endif %}[{{ m.role }}]{{ m.content }}"
             "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")  # fmt: skip
COUNTED = ("{% for m in messages %}[{{ m.role }} {{ loop.index }}/{{ loop.length }}]"
           "{{ m.content }}{% endfor %}")  # fmt: skip


def turns(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """A random agent conversation: user asks, tool calls and their results, answers."""
    out: list[dict[str, Any]] = [{"role": "system", "content": "Be brief. ünï ✓"}]
    while len(out) < n:
        i = len(out)
        kind = rng.choice(["user", "call", "answer"])
        if kind == "user" or out[-1]["role"] == "system":
            out.append({"role": "user", "content": f"Do {i}" + " x" * rng.randint(0, 20)})
        elif kind == "call":
            args = json.dumps({"cmd": f"ls {i}"})
            out.append({"role": "assistant", "content": "", "tool_calls": [{
                "id": f"c{i}", "type": "function",
                "function": {"name": "run", "arguments": args}}]})  # fmt: skip
            out.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"out {i}\n"})
        else:
            out.append({"role": "assistant", "content": f"Done {i}."})
            out.append({"role": "user", "content": f"Next {i}?"})
    return out


def extended(rng: random.Random, renderer: ResumedRender, template: str,
             body: dict[str, Any], steps: int) -> int:  # fmt: skip
    """Extend ``body`` turn by turn; each turn's text must be the full render's."""
    messages = turns(rng, MIN_MESSAGES + 30)
    cut = MIN_MESSAGES
    for _ in range(steps):
        while cut < len(messages) and messages[cut - 1]["role"] == "assistant":
            cut += 1
        if cut > len(messages):
            break
        request = {**body, "messages": messages[:cut]}
        try:
            want = render(template, request, SPECIAL, Normalization())
        except Exception:
            return 0  # the template refuses these messages
        assert renderer.render(request, Normalization()) == want
        cut += rng.randint(1, 4)
    return renderer.resumed


def templates() -> list[str]:
    from tests.llama_sdist import models_dir

    return sorted(p.stem for p in (models_dir() / "templates").glob("*.jinja"))


@pytest.mark.parametrize("name", templates())
def test_real_templates_resume_exactly(name: str) -> None:
    from tests.llama_sdist import models_dir

    template = (models_dir() / "templates" / f"{name}.jinja").read_text()
    tools = [{"type": "function", "function": {"name": "run", "parameters": {
        "type": "object", "properties": {"cmd": {"type": "string"}}}}}]  # fmt: skip
    for seed, body in enumerate([{}, {"tools": tools}]):
        extended(random.Random(seed), ResumedRender(template, SPECIAL), template, body, 12)


@pytest.mark.parametrize("seed", range(8))
def test_random_conversations_resume_exactly(seed: int) -> None:
    renderer = ResumedRender(CHATML, SPECIAL)
    assert extended(random.Random(seed), renderer, CHATML, {}, 10) > 0


def test_a_branch_resumes_from_the_turn_it_extends() -> None:
    """Turns appended to the same conversation (a retry, a regenerated branch) each resume
    from the kept turn, not from one another."""
    renderer = ResumedRender(CHATML, SPECIAL)
    base = turns(random.Random(3), 30)
    while base[-1]["role"] == "assistant":
        base.pop()
    renderer.render({"messages": base}, Normalization())
    for i in range(3):
        body = {"messages": [*base, {"role": "assistant", "content": f"b{i}"},
                             {"role": "user", "content": f"u{i}"}]}  # fmt: skip
        assert renderer.render(body, Normalization()) == render(CHATML, body, {}, Normalization())
    assert renderer.resumed == 3


def test_a_resumed_turn_keeps_the_earlier_turns_messages_not_its_copies() -> None:
    """Each turn arrives as new, equal message objects: the kept entry holds the ones it had
    and only the new messages of this turn, so the request's copies are freed with it (a
    31k-token conversation's decode otherwise takes fresh memory every turn)."""
    renderer = ResumedRender(CHATML, SPECIAL)
    base = turns(random.Random(5), 30)
    while base[-1]["role"] == "assistant":
        base.pop()
    renderer.render({"messages": base}, Normalization())
    more = [*json.loads(json.dumps(base)), {"role": "assistant", "content": "b"},
            {"role": "user", "content": "u"}]  # fmt: skip
    renderer.render({"messages": more}, Normalization())
    assert renderer.resumed == 1
    kept = renderer.find(next(iter(renderer._certified)), more)
    assert kept is not None and len(kept.messages) == len(more)
    assert all(a is b for a, b in zip(kept.messages, base, strict=False))
    assert kept.messages[len(base) :] == more[len(base) :]


def test_a_conversation_keeps_one_copy_of_its_text_however_many_turns() -> None:
    """Each kept turn held its text and its prompt: two new 130 kB strings a turn on a
    31k-token conversation, kept, so every turn's render took fresh memory (page faults).
    A turn a later one extends takes its text from that one; branches still resume."""
    renderer = ResumedRender(CHATML, SPECIAL)
    base = turns(random.Random(7), 40)
    while base[-1]["role"] == "assistant":
        base.pop()
    renderer.render({"messages": base}, Normalization())
    messages = list(base)
    for i in range(6):
        messages += [
            {"role": "assistant", "content": f"a{i}"},
            {"role": "user", "content": f"u{i}"},
        ]
        text = renderer.render({"messages": messages}, Normalization())
    assert renderer.resumed == 6
    assert renderer._chars < 1.2 * len(text)
    branch = {"messages": [*base, {"role": "assistant", "content": "b"},
                           {"role": "user", "content": "v"}]}  # fmt: skip
    assert renderer.render(branch, Normalization()) == render(CHATML, branch, {}, Normalization())
    assert renderer.resumed == 7


@pytest.mark.parametrize("seed", range(4))
def test_a_template_whose_earlier_text_changes_resumes_only_where_that_shows(seed: int) -> None:
    """The tools block moves to an appended user message: the window sees the move and
    that turn is rendered whole; turns without a user message resume."""
    renderer = ResumedRender(LAST_USER, SPECIAL)
    extended(random.Random(seed), renderer, LAST_USER, {}, 12)


def test_a_template_that_counts_every_message_never_resumes() -> None:
    renderer = ResumedRender(COUNTED, SPECIAL)
    assert not certify(renderer.renderer({}, Normalization(), time.localtime()))
    extended(random.Random(1), renderer, COUNTED, {}, 10)
    assert renderer.resumed == 0


def test_the_cache_is_bounded_by_the_text_it_keeps() -> None:
    renderer = ResumedRender(CHATML, SPECIAL, max_chars=20_000)
    for seed in range(20):
        messages = turns(random.Random(seed), 40)
        while messages[-1]["role"] == "assistant":
            messages.pop()
        renderer.render({"messages": messages}, Normalization())
    assert 0 < renderer._chars <= 20_000


def dropped_turns(template: str, seed: int) -> tuple[int, int]:
    """A conversation extended turn by turn through a renderer that drops the BOS: each
    text is the full render less its leading BOS, and the text without the generation
    prompt it gives leads it. Returns the turns resumed and those given that text."""
    renderer = ResumedRender(template, SPECIAL, drop=SPECIAL["bos_token"])
    rng = random.Random(seed)
    messages, cut, led = turns(rng, 40), MIN_MESSAGES, 0
    while cut <= len(messages):
        request = {"messages": messages[:cut]}
        try:
            want = render(template, request, SPECIAL, Normalization())
        except Exception:
            break  # the template refuses these messages
        prompt, closed = renderer.render_parts(request, Normalization())
        assert prompt == want.removeprefix(SPECIAL["bos_token"])
        assert closed is None or prompt.startswith(closed)
        led += closed is not None
        cut += rng.randint(1, 4)
    return renderer.resumed, led


@pytest.mark.parametrize("name", templates())
def test_a_dropped_bos_resumes_exactly_on_real_templates(name: str) -> None:
    """Kept texts are without the BOS the vocabulary adds itself (``drop``), so a resumed
    turn's text needs no copy to drop it: still the full render's, on every template."""
    from tests.llama_sdist import models_dir

    dropped_turns((models_dir() / "templates" / f"{name}.jinja").read_text(), 2)


def test_a_resumed_turn_gives_the_text_its_prompt_starts_with() -> None:
    resumed, led = dropped_turns("{{ bos_token }}" + CHATML, 4)
    assert resumed > 3 and led > resumed
