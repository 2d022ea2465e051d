"""Slack's documented message limits, checked on every message before it leaves (gateway.py).

The builders in blocks.py fit their content to these limits themselves, trimming where the reader loses
least (a log keeps its tail, a list says how many it left out); `problems()` is what a hypothesis test holds
them to. `enforce()` is the last line: anything still over a limit is cut, with a warning in the log,
rather than letting Slack refuse the whole message (`invalid_blocks`, `msg_too_long`) and lose it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

MESSAGE_TEXT = 40_000
BLOCKS = 50
SECTION_TEXT = 3_000
FIELD_TEXT = 2_000
FIELDS = 10
HEADER = 150
BUTTON_TEXT = 75
BUTTON_VALUE = 2_000
ID = 255
CONTEXT_ELEMENTS = 10
ACTIONS_ELEMENTS = 25
CONTEXT_TEXT = 3_000
CONFIRM = {"title": 100, "text": 300, "confirm": 30, "deny": 30}
ELLIPSIS = "…"


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, the end replaced by an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def head_lines(lines: Sequence[str], limit: int, noun: str = "more") -> str:
    """As many lines from the top as fit in `limit` characters, then "…and N more"."""
    return _fit(list(lines), limit, noun, keep_tail=False)


def tail_lines(lines: Sequence[str], limit: int, noun: str = "earlier lines") -> str:
    """As many lines from the bottom as fit (a log keeps its tail), after "…N earlier lines not shown"."""
    return _fit(list(lines), limit, noun, keep_tail=True)


def _fit(lines: list[str], limit: int, noun: str, keep_tail: bool) -> str:
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    lines = [clip(line, limit // 2) for line in lines]
    kept: list[str] = []
    size = 40 + len(noun)  # room for the line that says what was left out
    for line in reversed(lines) if keep_tail else lines:
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    cut = len(lines) - len(kept)
    if keep_tail:
        return "\n".join([f"…{cut} {noun} not shown", *reversed(kept)])
    return "\n".join([*kept, f"…and {cut} {noun}"])


def problems(text: str, blocks: list[dict[str, Any]] | None) -> list[str]:
    """Every way the message breaks one of Slack's limits; [] when Slack would accept it."""
    found: list[str] = []
    if len(text) > MESSAGE_TEXT:
        found.append(f"text is {len(text)} characters (limit {MESSAGE_TEXT})")
    if blocks is None:
        return found
    if len(blocks) > BLOCKS:
        found.append(f"{len(blocks)} blocks (limit {BLOCKS})")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"block {i} ({block.get('type')})"
        if "block_id" in block:
            block_id = str(block["block_id"])
            if len(block_id) > ID or block_id in block_ids:
                found.append(f"{where}: block_id too long or repeated")
            block_ids.add(block_id)
        found += [f"{where}: {p}" for p in _block_problems(block)]
    return found


def _block_problems(block: dict[str, Any]) -> list[str]:
    kind = block.get("type")
    found: list[str] = []
    if kind == "header":
        found += _text_problem(block.get("text"), HEADER, "header")
    elif kind == "section":
        if "text" in block:
            found += _text_problem(block["text"], SECTION_TEXT, "text")
        fields = block.get("fields") or []
        if len(fields) > FIELDS:
            found.append(f"{len(fields)} fields (limit {FIELDS})")
        for field in fields:
            found += _text_problem(field, FIELD_TEXT, "field")
    elif kind == "context":
        elements = block.get("elements") or []
        if len(elements) > CONTEXT_ELEMENTS:
            found.append(f"{len(elements)} context elements (limit {CONTEXT_ELEMENTS})")
        for element in elements:
            found += _text_problem(element, CONTEXT_TEXT, "context element")
    elif kind == "actions":
        elements = block.get("elements") or []
        if len(elements) > ACTIONS_ELEMENTS:
            found.append(f"{len(elements)} actions elements (limit {ACTIONS_ELEMENTS})")
        action_ids = [str(e.get("action_id", "")) for e in elements]
        if len(set(action_ids)) != len(action_ids):
            found.append("repeated action_id in one block")
        for element in elements:
            found += _button_problems(element)
    return found


def _button_problems(button: dict[str, Any]) -> list[str]:
    found = _text_problem(button.get("text"), BUTTON_TEXT, "button text")
    if len(str(button.get("value", ""))) > BUTTON_VALUE:
        found.append("button value too long")
    if len(str(button.get("action_id", ""))) > ID:
        found.append("action_id too long")
    for key, limit in CONFIRM.items() if "confirm" in button else ():
        found += _text_problem(button["confirm"].get(key), limit, f"confirm {key}")
    return found


def _text_problem(obj: Any, limit: int, what: str) -> list[str]:
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str) or not text:
        return [f"{what} is empty"]
    return [f"{what} is {len(text)} characters (limit {limit})"] if len(text) > limit else []


def enforce(text: str, blocks: list[dict[str, Any]] | None) -> tuple[str, list[dict[str, Any]] | None]:
    """The message as Slack will take it: cut where a builder left something over a limit (logged)."""
    found = problems(text, blocks)
    if not found:
        return text, blocks
    log.warning("a Slack message broke Slack's limits and was cut to fit: %s", "; ".join(found[:5]))
    text = clip(text, MESSAGE_TEXT)
    if blocks is None:
        return text, None
    fixed = copy.deepcopy(blocks[:BLOCKS])
    for block in fixed:
        _cut_block(block)
    return text, fixed


def _cut_block(block: dict[str, Any]) -> None:
    kind = block.get("type")
    if kind == "header":
        _cut(block.get("text"), HEADER)
    elif kind == "section":
        _cut(block.get("text"), SECTION_TEXT)
        if "fields" in block:
            block["fields"] = block["fields"][:FIELDS]
            for field in block["fields"]:
                _cut(field, FIELD_TEXT)
    elif kind == "context":
        block["elements"] = block.get("elements", [])[:CONTEXT_ELEMENTS]
        for element in block["elements"]:
            _cut(element, CONTEXT_TEXT)
    elif kind == "actions":
        seen: set[str] = set()
        elements = []
        for element in block.get("elements", [])[:ACTIONS_ELEMENTS]:
            if element.get("action_id") in seen:
                continue  # Slack refuses the whole message for a repeated action_id: drop the repeat
            seen.add(element.get("action_id"))
            _cut(element.get("text"), BUTTON_TEXT)
            for key, limit in CONFIRM.items() if "confirm" in element else ():
                _cut(element["confirm"].get(key), limit)
            elements.append(element)
        block["elements"] = elements


def _cut(obj: Any, limit: int) -> None:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        obj["text"] = clip(obj["text"], limit)
