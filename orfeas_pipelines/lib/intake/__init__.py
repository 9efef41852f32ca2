"""Agent intake: signed jobs dropped into `inbox/`, verified, recorded and answered (no Dagster here).

Modules: `manifest` (schema, IntakeError), `signing` (the HMAC scheme), `registry` (agents
and their limits), `ledger` (durable state, the image log), `verify` (checks of one job),
`inbox` (one intake tick), `audit` (audit.log), `submit` (the agent side), `decoding` (costly
images decoded in a worker under a time budget), `claims` (which images a sensor evaluation
handed out, so the daemon and `orfeas process` never hand out one twice).
"""
