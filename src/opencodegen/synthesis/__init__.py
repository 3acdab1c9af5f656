"""Program synthesis: the CodeGen multi-turn format (history), interactive sessions (session)
and the persistent sandboxed interpreter they run in (interpreter)."""
