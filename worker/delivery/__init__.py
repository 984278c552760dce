"""Delivery services: the engine, the per-delivery state machine, policy, outcomes, pauses,
the scheduler and inbound events."""
