"""Keyboard-interactive logins as a conversation the authenticator writes top to bottom.

An authenticator with ``authenticate_interactive(username, peer, ask)`` asks its
questions with ``answers = await ask([("Password: ", False), ...], instructions="...")``
(the bool: echo what is typed) and returns session attributes or None, like the other
methods. asyncssh drives keyboard-interactive as callbacks (a challenge out, responses
in, the next challenge out); with the authenticator running as a task,
:class:`Conversation` passes each challenge and its answers between the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

__all__ = ["Ask", "Conversation"]

Prompts = Sequence[tuple[str, bool]]
Challenge = tuple[str, str, str, list[tuple[str, bool]]]  # name, instructions, lang, prompts


class Ask(Protocol):
    """What an interactive authenticator calls to put prompts to the client."""

    async def __call__(
        self, prompts: Prompts, *, name: str = "", instructions: str = ""
    ) -> list[str]: ...


class Conversation:
    """One keyboard-interactive login in progress: the authenticator's questions out,
    the client's answers in.
    """

    def __init__(self) -> None:
        self._asks: asyncio.Queue[Challenge] = asyncio.Queue()
        self._answers: asyncio.Future[list[str]] | None = None

    async def ask(self, prompts: Prompts, *, name: str = "", instructions: str = "") -> list[str]:
        """Put ``prompts`` to the client; its answers, one per prompt."""
        answers: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._answers = answers
        self._asks.put_nowait((name, instructions, "", [(p, bool(e)) for p, e in prompts]))
        return await answers

    async def next(
        self, answers: Sequence[str] | None, finished: asyncio.Task[bool]
    ) -> Challenge | bool:
        """Hand over the client's ``answers`` (None at the start); then the next challenge,
        or the login's outcome once ``finished`` (the authenticator's task) is done.
        """
        if answers is not None and self._answers is not None and not self._answers.done():
            self._answers.set_result(list(answers))
        asked = asyncio.ensure_future(self._asks.get())
        done, _ = await asyncio.wait({asked, finished}, return_when=asyncio.FIRST_COMPLETED)
        if asked in done:
            return asked.result()
        asked.cancel()
        return finished.result()
