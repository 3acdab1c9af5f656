"""CLI sub-commands; every public module here defines `register(subparsers)` (shared options: cli_options)."""
