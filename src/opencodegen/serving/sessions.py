"""Multi-turn synthesis sessions behind the web page: the model writes each turn's code through
the scheduler (streamed), and :class:`~opencodegen.synthesis.session.Session` runs it in the
sandboxed interpreter.

Everything that touches a Session runs on that session's own single worker thread, in order,
so a client that disconnects mid-turn can never let two operations interleave.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opencodegen.errors import OpenCodeGenError
from opencodegen.generation.sampling import SamplingParams
from opencodegen.serving.protocol import APIError, SessionCreate
from opencodegen.serving.scheduler import Failed, Finished, Scheduler
from opencodegen.synthesis.session import Session, Turn
from opencodegen.tokenizer import CodeGenTokenizer


class SessionEntry:
    """A live session, its settings, its worker thread and the lock that orders its turns."""

    def __init__(self, session_id: str, session: Session, settings: SessionCreate):
        self.id, self.session, self.settings = session_id, session, settings
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"session-{session_id}")
        self._generations = itertools.count()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the session's thread; library errors become 400s."""
        self.last_used = time.monotonic()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        except RuntimeError:  # the executor is shut down: the session was deleted meanwhile
            raise APIError(404, f"session {self.id!r} was deleted", code="session_not_found") from None
        try:
            return await future
        except OpenCodeGenError as exc:
            raise APIError(400, str(exc)) from None

    def next_seed(self) -> int | None:
        """Each generation of a seeded session gets the next seed, so a retry writes new code."""
        count = next(self._generations)
        return None if self.settings.seed is None else self.settings.seed + count

    def turn(self, index: int) -> Turn:
        """Turn `index` (call on the session's thread)."""
        if not 0 <= index < len(self.session.turns):
            raise APIError(404, f"no turn {index} (the session has {len(self.session.turns)})", param="index",
                           code="turn_not_found")  # fmt: skip
        return self.session.turns[index]

    def state(self) -> dict[str, Any]:
        """The session as the page shows it (call on the session's thread)."""
        return {
            "id": self.id,
            "settings": self.settings.model_dump(),
            "turns": [dict(t.to_json(), index=i) for i, t in enumerate(self.session.turns)],
            "program": self.session.program(),
        }

    def close(self) -> None:
        self._worker.submit(self.session.close)
        self._worker.shutdown(wait=False)


class SessionStore:
    """The live sessions (at most `max_sessions`; the least recently used idle one makes room)."""

    def __init__(
        self,
        scheduler: Scheduler,
        tokenizer: CodeGenTokenizer,
        context: int,
        *,
        max_sessions: int = 16,
        session_factory: Callable[[], Session] = Session,
    ):
        self.scheduler, self.tokenizer, self.context = scheduler, tokenizer, context
        self.max_sessions = max_sessions
        self.session_factory = session_factory
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()

    def create(self, settings: SessionCreate) -> SessionEntry:
        if settings.max_tokens >= self.context:
            raise APIError(400, f"max_tokens must be below the context of {self.context} tokens", param="max_tokens")
        if len(self._entries) >= self.max_sessions:
            idle = next((e for e in self._entries.values() if not e.lock.locked()), None)
            if idle is None:
                raise APIError(429, "too many busy sessions; try again later", type="server_busy",
                               code="too_many_sessions", headers={"Retry-After": "5"})  # fmt: skip
            self.delete(idle.id)
        entry = SessionEntry(secrets.token_urlsafe(12), self.session_factory(), settings)
        self._entries[entry.id] = entry
        return entry

    def get(self, session_id: str) -> SessionEntry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise APIError(404, f"no session {session_id!r}", param="session_id", code="session_not_found")
        self._entries.move_to_end(session_id)
        return entry

    def delete(self, session_id: str) -> None:
        self.get(session_id).close()
        del self._entries[session_id]

    def close(self) -> None:
        for entry in self._entries.values():
            entry.close()
        self._entries.clear()

    # ------------------------------------------------------------------ turns

    async def turn_events(
        self, entry: SessionEntry, instruction: str | None, code: str | None, index: int | None
    ) -> AsyncIterator[dict[str, Any]]:
        """Add a turn (`index` None) or rewrite turn `index`; yields delta, code, then turn events.

        Without `code` the model writes it, streamed as `delta` events; `code` is the final
        (truncated) code; `turn` carries the executed turn and the whole session state.
        """
        async with entry.lock:
            session = entry.session
            if index is None:
                index = await entry.call(len, session.turns)
            else:
                instruction = (await entry.call(entry.turn, index)).instruction
            if code is None:
                prompt = await entry.call(session.prompt, index, instruction)
                code = ""
                async for event in self._generate(entry, prompt):
                    code += event
                    yield {"type": "delta", "text": event}
            yield {"type": "code", "index": index, "code": code}
            if index == len(session.turns):
                await entry.call(session.add_turn, instruction, code)
            else:
                await entry.call(session.edit_turn, index, code)
            yield {"type": "turn", "index": index, "session": await entry.call(entry.state)}

    async def _generate(self, entry: SessionEntry, prompt: str) -> AsyncIterator[str]:
        """Stream the model's code for `prompt`, cut by CodeGen's truncation rules."""
        settings = entry.settings
        ids = self.tokenizer.encode(prompt)[-(self.context - settings.max_tokens) :]  # keep the latest turns
        params = SamplingParams(
            max_new_tokens=settings.max_tokens, temperature=settings.temperature, top_p=settings.top_p,
            seed=entry.next_seed(), truncate="codegen",
        )  # fmt: skip
        job = self.scheduler.submit([ids], params, stream=True)
        try:
            while True:
                event = await job.next_event()
                if isinstance(event, Failed):
                    raise APIError(500, event.message, type="server_error")
                if event.text:
                    yield event.text
                if isinstance(event, Finished):
                    return
        finally:
            job.cancel()
