"""The report: both papers' figures, tables and claims rebuilt from a store and checked against the published
numbers. ``report.spec`` declares them, ``report.verify`` checks claims, ``report.builder`` writes and renders."""
