"""When a job may start: the dispatcher, the pace, the credit floor, the pauses, the free lane."""
