"""Monitoring: guard decisions as events, and (later) their store, aggregation and alerts."""
