"""End-to-end benchmark of the three services on a stack of their own (`make bench-e2e`).

Starts its own Kafka, Zipkin, databases (SQLite, or a throwaway PostgreSQL cluster) and the services as
`deploy/services.sh` starts them, on free loopback ports; runs a webhook receiver; drives the border
post's flow (register an unaccompanied child, the mandatory child-protection override, screening) and
times each case until the child-protection agency's webhook arrives. See docs/benchmarks.md.

Modules: ``stack`` (processes), ``receiver`` (the webhook endpoint, its own process), ``client`` (the
border post's calls and load shapes), ``probes`` (/proc, /metrics, the machine), ``scenarios`` (P1-P6),
``profiling`` (py-spy during the burst), ``report`` (tables and JSON), ``__main__`` (the command line).
"""
