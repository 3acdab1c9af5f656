"""Safe, fast execution of untrusted Python programs (sandboxed warm fork-servers), and long-lived
sandboxed jobs that talk over pipes (`spawn_interactive`)."""

from opencodegen.execution.pool import ExecutionPool, default_workers, run_program
from opencodegen.execution.sandbox import (
    ExecutionResult,
    IsolationUnavailable,
    SandboxedProcess,
    SandboxError,
    isolation_report,
    spawn_interactive,
)

__all__ = ["ExecutionPool", "ExecutionResult", "IsolationUnavailable", "SandboxError", "SandboxedProcess",
           "default_workers", "isolation_report", "run_program", "spawn_interactive"]
