"""Many devices at once: the factory-line station.

``selectors`` says which devices (USB port paths, serial prefixes, VID:PID[:kind], tty globs,
explicit URLs) and matches them; ``discovery`` polls for what is attached; ``job`` flashes one
device (its own state, its own event sink and log, link-loss retries with resume); ``scheduler``
runs the jobs (once / watch, concurrency, stop); ``report`` writes the run report (JSON,
JUnit XML); ``config`` reads the station file (TOML). Nothing here renders: the CLI does.
"""
