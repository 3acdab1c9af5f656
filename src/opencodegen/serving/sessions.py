"""Multi-turn synthesis sessions behind the web page: the model writes each turn's code through
the scheduler (streamed), and :class:`~opencodegen.synthesis.session.Session` runs it in the
sandboxed interpreter.

Everything that touches a Session runs on that session's own single worker thread, in order,
so a client that disconnects mid-turn can never let two operations interleave.

Sessions are bounded: each holds an interpreter with a memory limit, and the sum of those
limits stays within a memory budget; a client (remote address) holds a few sessions at most;
an idle session expires. A full store answers 429 rather than evicting someone's live session.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opencodegen.errors import OpenCodeGenError
from opencodegen.generation.sampling import SamplingParams
from opencodegen.serving.protocol import APIError, SessionCreate
from opencodegen.serving.scheduler import Failed, Finished, Scheduler
from opencodegen.synthesis.interpreter import MEMORY_MB
from opencodegen.synthesis.session import Session, Turn
from opencodegen.tokenizer import CodeGenTokenizer


class SessionEntry:
    """A live session, its settings, its worker thread and the lock that orders its turns."""

    def __init__(self, session_id: str, session: Session, settings: SessionCreate, client: str,
                 clock: Callable[[], float] = time.monotonic):
        self.id, self.session, self.settings, self.client = session_id, session, settings, client
        self.lock = asyncio.Lock()
        self.clock = clock
        self.last_used = clock()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"session-{session_id}")
        self._generations = itertools.count()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the session's thread; library errors become 400s."""
        self.last_used = self.clock()
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
                           code="turn_not_found")
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


def default_memory_budget_mb() -> int:
    """Half of the machine's physical memory, in MiB."""
    return max(MEMORY_MB, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 >> 20)


class SessionStore:
    """The live sessions, within these bounds (a new session beyond them is a 429):

    `max_sessions` in all; `memory_budget_mb` for the sum of their interpreters' memory limits
    (`session_memory_mb` each); `max_per_client` per client; a session idle for `ttl_s`
    seconds (by `clock`) expires.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        tokenizer: CodeGenTokenizer,
        context: int,
        *,
        max_sessions: int = 16,
        session_factory: Callable[[], Session] = Session,
        ttl_s: float = 1800.0,
        memory_budget_mb: int | None = None,
        session_memory_mb: int = MEMORY_MB,
        max_per_client: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.scheduler, self.tokenizer, self.context = scheduler, tokenizer, context
        self.session_factory = session_factory
        self.ttl_s, self.max_per_client, self.clock = ttl_s, max_per_client, clock
        self.memory_budget_mb = default_memory_budget_mb() if memory_budget_mb is None else memory_budget_mb
        self.session_memory_mb = session_memory_mb
        self.capacity = min(max_sessions, self.memory_budget_mb // session_memory_mb)
        self._entries: dict[str, SessionEntry] = {}

    def create(self, settings: SessionCreate, client: str) -> SessionEntry:
        if settings.max_tokens >= self.context:
            raise APIError(400, f"max_tokens must be below the context of {self.context} tokens", param="max_tokens")
        self.expire()
        retry = {"Retry-After": str(int(min(self.ttl_s, 60)) or 1)}
        if len(self._entries) >= self.capacity:
            raise APIError(429, f"The server holds {len(self._entries)} sessions, its limit (a budget of "
                           f"{self.memory_budget_mb} MiB at {self.session_memory_mb} MiB each, at most "
                           f"{self.capacity}); delete a session you no longer need or retry after idle ones "
                           f"expire ({self.ttl_s:g} s without use).", type="server_busy", code="too_many_sessions",
                           headers=retry)
        mine = sum(e.client == client for e in self._entries.values())
        if mine >= self.max_per_client:
            raise APIError(429, f"You hold {mine} sessions, the most one client may hold; delete one "
                           "(DELETE /v1/sessions/{id}) before starting another.", type="server_busy",
                           code="too_many_sessions", headers=retry)
        entry = SessionEntry(secrets.token_urlsafe(12), self.session_factory(), settings, client, self.clock)
        self._entries[entry.id] = entry
        return entry

    async def lend(self, client: str) -> SessionEntry:
        """A session for one request's code (chat `execute`), within the same bounds; it never
        expires while lent. Give it back with :meth:`release`."""
        entry = self.create(SessionCreate(max_tokens=1), client)
        await entry.lock.acquire()
        return entry

    def release(self, entry: SessionEntry) -> None:
        """Close a lent session."""
        if self._entries.pop(entry.id, None) is not None:
            entry.close()

    def get(self, session_id: str) -> SessionEntry:
        self.expire()
        entry = self._entries.get(session_id)
        if entry is None:
            raise APIError(404, f"no session {session_id!r}", param="session_id", code="session_not_found")
        entry.last_used = self.clock()
        return entry

    def delete(self, session_id: str) -> None:
        self.get(session_id).close()
        del self._entries[session_id]

    def expire(self) -> list[str]:
        """Close the sessions idle for over `ttl_s` (none that is running a turn); their ids."""
        now = self.clock()
        gone = [e for e in self._entries.values() if now - e.last_used > self.ttl_s and not e.lock.locked()]
        for entry in gone:
            entry.close()
            del self._entries[entry.id]
        return [e.id for e in gone]

    def __len__(self) -> int:
        return len(self._entries)

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
        ids = (await entry.call(self.tokenizer.encode, prompt))[-(self.context - settings.max_tokens) :]  # latest turns
        params = SamplingParams(
            max_new_tokens=settings.max_tokens, temperature=settings.temperature, top_p=settings.top_p,
            seed=entry.next_seed(), truncate="codegen",
        )
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
