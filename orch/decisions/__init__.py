"""Pure decisions: functions of values and `now` (and a random draw) that return a decision value.

Nothing here opens a session, a socket or a clock; one writer (orch.store) applies what these decide."""
