"""The server's HTTP routes, one module per group; every handler reads what it needs (scheduler,
tokenizer, settings, sessions, metrics, the tokenizer pool) from `request.app.state`, which
`serving.app.create_app` fills."""
