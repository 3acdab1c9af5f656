"""MTPB (Multi-Turn Programming Benchmark): CodeGen's multi-turn synthesis evaluation.

Modules: `data` (the problems, their validation and single-turn prompts), `generate` (writing
programs with a model, turn by turn or in one go), `harness` (the source that runs one program in
the sandbox the way the original checker does), `scoring` (the checker's verdicts), `report`
(pass rates and the category plot), `run` (the resumable generate-score-summarize pipeline) and
`perplexity` (prompt perplexity, multi- against single-turn).
"""
