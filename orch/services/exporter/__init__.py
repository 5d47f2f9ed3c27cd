"""`orch exporter`: Prometheus metrics computed from the SQL store when Prometheus scrapes.

Every figure is read from the store (queue depth from the broker) at scrape time, so it is right across any
number of worker processes and hosts and survives their restarts: no in-process counters, no prefork
multiprocess mode. What keeps a scrape's cost independent of how much history the store holds:

- attempts: an attempt that finished more than `SETTLE_SECONDS` ago never changes again, so it is folded into
  running totals once, by primary-key range. A scrape reads only the attempts started since the last fold plus
  those still unsettled (running ones), by primary key. The first read after the exporter starts reads the
  history once: `serve` opens its port first and starts that read in the background; until it is done a scrape
  shows `orch_exporter_ready 0`, `orch_store_up 0` and the broker's figures.
- tasks per plan: only plans that are running or held, plus the `ORCH_EXPORTER_RECENT_PLANS` most recently
  finished, whose counts are read once and kept while they stay among them.

A scrape never waits long: the store is read in a thread of its own (one read at a time, shared by the scrapes
that arrive meanwhile) while the scrape reads the broker, and the scrape waits for the store at most
`STORE_WAIT_SECONDS`; a store or broker that does not answer in time is reported by its `_up` gauge as 0.

The store queries live in orch/store/exporter_reads.py. Here: `specs` (the metric families exposed), `tally`
(attempt totals and task counts, folded and kept between scrapes), `collector` (a scrape: the store and the
broker read, their figures turned into metric families), `server` (the HTTP endpoint).
"""
